"""The bmserver command: serve on SQLite over a real socket, and manage keys."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from _processes import bmserver, free_port, post, wait_until_healthy

import bmcore
from bmserver import BackupQuery, SqliteStore


def payload() -> dict[str, str]:
    """A valid backup dated now."""
    return {
        "deviceName": "srv01",
        "jobName": "Nightly",
        "timestamp": datetime.now(UTC).isoformat(),
        "status": "Success",
        "message": "ok",
    }


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str, subprocess.Popen[str], Path]]:
    """`bmserver serve` on an empty SQLite file: its URL, first key, process and database."""
    database = tmp_path / "ingest.sqlite3"
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bmserver", "serve", "--port", str(port), "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "BM_DATABASE": str(database)},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(url, process)
        assert process.stdout is not None
        banner = [process.stdout.readline() for _ in range(5)]
        key = banner[3].strip()
        assert key.startswith("bm_"), banner
        yield url, key, process, database
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_serve_creates_a_first_key_and_accepts_entries(
    served: tuple[str, str, subprocess.Popen[str], Path],
) -> None:
    """On an empty database serve prints a key once; that key can post a backup."""
    url, key, _, database = served
    status, body = post(f"{url}/api/ingest/backup", key, payload())
    assert status == 201, body
    assert database.exists()
    assert key.encode() not in database.read_bytes()  # stored only as a hash


def test_serve_stops_gracefully_and_keeps_what_it_acknowledged(
    served: tuple[str, str, subprocess.Popen[str], Path],
) -> None:
    """SIGTERM ends serve after its shutdown; the file still holds the acknowledged entry."""
    url, key, process, database = served
    status, body = post(f"{url}/api/ingest/backup", key, payload())
    assert status == 201
    process.send_signal(signal.SIGTERM)
    # uvicorn finishes its graceful shutdown, then re-raises the signal it caught.
    assert process.wait(timeout=30) in {0, -signal.SIGTERM}
    assert process.stderr is not None
    assert "Traceback" not in process.stderr.read()

    async def stored_ids() -> list[str]:
        store = SqliteStore(database)
        await store.open()
        try:
            record = await store.find_api_key(bmcore.hash_api_key(key))
            assert record is not None
            page = await store.list_backups(record.account_id, BackupQuery(), limit=10, cursor=None)
            return [item.id for item in page.items]
        finally:
            await store.close()

    assert asyncio.run(stored_ids()) == [body["id"]]


def test_serve_prints_a_curl_example_with_the_real_url(
    served: tuple[str, str, subprocess.Popen[str], Path],
) -> None:
    """The first-start banner holds a ready-to-paste curl command for this server."""
    url, _, process, _ = served
    assert process.stdout is not None
    rest = ""
    for _ in range(4):
        rest += process.stdout.readline()
    assert f'curl -i -X POST "{url}/api/ingest/backup"' in rest


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    """Keys create prints a key once; list shows prefixes only; revoke marks it revoked."""
    database = str(tmp_path / "keys.sqlite3")
    created = bmserver(
        "keys", "create", "--account", "acme", "--scope", "read", "--database", database
    )
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("bm_")
    listed = bmserver("keys", "list", "--database", database)
    assert key[:11] in listed.stdout
    assert key not in listed.stdout
    assert "read" in listed.stdout
    assert "active" in listed.stdout
    revoked = bmserver("keys", "revoke", key[:11], "--database", database)
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked" in bmserver("keys", "list", "--database", database).stdout
    again = bmserver("keys", "revoke", key[:11], "--database", database)
    assert again.returncode == 1
    assert "no active key" in again.stderr


def test_flags_read_environment_variables(tmp_path: Path) -> None:
    """BM_DATABASE stands in for --database."""
    database = tmp_path / "env.sqlite3"
    created = bmserver("keys", "create", "--account", "acme", env={"BM_DATABASE": str(database)})
    assert created.returncode == 0, created.stderr
    assert database.exists()


def test_database_url_reads_bm_database_url_before_bm_database(tmp_path: Path) -> None:
    """BM_DATABASE_URL (the scale-out name) wins over BM_DATABASE when both are set."""
    chosen = tmp_path / "url.sqlite3"
    ignored = tmp_path / "file.sqlite3"
    created = bmserver(
        "keys",
        "create",
        "--account",
        "acme",
        env={"BM_DATABASE_URL": str(chosen), "BM_DATABASE": str(ignored)},
    )
    assert created.returncode == 0, created.stderr
    assert chosen.exists()
    assert not ignored.exists()


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["serve", "--workers", "2"], {}, "needs a postgresql:// --database"),
        (["serve", "--workers", "2", "--database", "postgresql://h/db"], {}, "needs --redis"),
        (["serve"], {"BM_WORKERS": "3", "BM_DATABASE_URL": "postgresql://h/db"}, "needs --redis"),
        (["serve", "--on-redis-error", "maybe"], {}, "invalid choice"),
        (["serve", "--workers", "0"], {}, "at least 1"),
    ],
)
def test_scale_out_flags_that_cannot_work_are_refused(
    args: list[str], env: dict[str, str], message: str, tmp_path: Path
) -> None:
    """Several workers need PostgreSQL and Redis; serve says which is missing and exits 2."""
    result = bmserver(*args, env={"BM_DATABASE": str(tmp_path / "x.sqlite3"), **env})
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "x.sqlite3").exists()  # refused before touching any database


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--rate", "fast"], "invalid rate"),
        (["serve", "--port", "99999"], "invalid port"),
        (["serve", "--burst", "0"], "at least 1"),
        (["keys", "create"], "--account"),
    ],
)
def test_bad_flags_are_refused_with_a_clear_message(args: list[str], message: str) -> None:
    """A bad value exits with status 2 and says what is expected."""
    result = bmserver(*args)
    assert result.returncode == 2
    assert message in result.stderr


def test_ensure_first_key_is_made_only_on_an_empty_database(tmp_path: Path) -> None:
    """The serve command creates account and key once; a restart on the same file creates none."""
    from bmserver._cli import ensure_first_key  # noqa: PLC0415 - the step serve runs before listening

    database = str(tmp_path / "once.sqlite3")
    first = asyncio.run(ensure_first_key(database))
    assert first is not None
    assert first.startswith("bm_")
    assert asyncio.run(ensure_first_key(database)) is None
    listed = bmserver("keys", "list", "--database", database).stdout
    assert listed.count("active") == 1
    assert "ingest,read" in listed


def test_first_key_file_keeps_the_key_out_of_the_output(tmp_path: Path) -> None:
    """--first-key-file writes the key (mode 0600) and prints only where it is; it works."""
    database = tmp_path / "ingest.sqlite3"
    key_file = tmp_path / "secrets" / "first-key"
    key_file.parent.mkdir()
    port = free_port()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "bmserver", "serve", "--port", str(port)),
            *("--database", str(database), "--first-key-file", str(key_file)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(url, process)
        key = key_file.read_text(encoding="ascii").strip()
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert [path.name for path in key_file.parent.iterdir()] == ["first-key"]
        status, body = post(f"{url}/api/ingest/backup", key, payload())
        assert status == 201, body
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert key not in output
    assert str(key_file) in output
    assert f"$(cat {key_file})" in output


def test_first_key_file_is_not_touched_on_a_database_with_keys(tmp_path: Path) -> None:
    """A database that has keys creates none: the file is neither written nor left behind."""
    from bmserver._cli import (  # noqa: PLC0415 - the step serve runs first
        _first_key_to_file,  # pyright: ignore[reportPrivateUsage] - the step under test
    )

    database = str(tmp_path / "used.sqlite3")
    assert bmserver("keys", "create", "--account", "acme", "--database", database).returncode == 0
    folder = tmp_path / "keys"
    folder.mkdir()
    assert _first_key_to_file(database, folder / "first-key") is False
    assert list(folder.iterdir()) == []


def test_an_unwritable_first_key_file_creates_no_key(tmp_path: Path) -> None:
    """A folder that does not exist: serve exits 2 before any key exists that nobody could see."""
    database = tmp_path / "new.sqlite3"
    result = bmserver(
        "serve",
        "--database",
        str(database),
        "--first-key-file",
        str(tmp_path / "missing" / "key"),
    )
    assert result.returncode == 2
    assert "cannot write --first-key-file" in result.stderr
    assert (
        not database.exists()
        or "active" not in bmserver("keys", "list", "--database", str(database)).stdout
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--read-rate", "lots"], "invalid rate"),
        (["serve", "--read-burst", "0"], "at least 1"),
    ],
)
def test_bad_read_limit_flags_are_refused(args: list[str], message: str) -> None:
    """The read quota's flags are checked like the ingest ones."""
    result = bmserver(*args)
    assert result.returncode == 2
    assert message in result.stderr
