"""The ``bmserver`` command: serve, and manage API keys. Every flag also reads a BM_* variable."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

import bmcore
from bmserver._arguments import port, positive_int, rate
from bmserver._settings import DEFAULT_RATE_POLICY, Settings
from bmserver._store import Scope, Store, UnknownKeyError

__all__ = ["ensure_first_key", "main"]

DEFAULT_DATABASE: Final = "bm-ingest.sqlite3"
_LOG_LEVELS: Final = ("critical", "error", "warning", "info", "debug")


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bmserver",
        description="The BackupMonitor Custom Ingest API server. Every flag can also be set "
        "with the BM_* environment variable named in its help.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    database = argparse.ArgumentParser(add_help=False)
    database.add_argument(
        "--database",
        default=_env("BM_DATABASE", DEFAULT_DATABASE),
        help="SQLite database file, created if missing (BM_DATABASE; default %(default)s)",
    )

    serve = commands.add_parser("serve", parents=[database], help="serve the ingest API")
    serve.add_argument(
        "--host", default=_env("BM_HOST", "127.0.0.1"), help="address (BM_HOST; %(default)s)"
    )
    serve.add_argument(
        "--port", type=port, default=_env("BM_PORT", "8080"), help="port (BM_PORT; %(default)s)"
    )
    serve.add_argument(
        "--rate",
        type=rate,
        default=_env("BM_RATE", "1/s"),
        help="sustained requests per API key, e.g. 1/s or 30/min (BM_RATE; %(default)s)",
    )
    serve.add_argument(
        "--burst",
        type=positive_int,
        default=_env("BM_BURST", str(DEFAULT_RATE_POLICY.burst)),
        help="requests a key may send at once (BM_BURST; %(default)s)",
    )
    serve.add_argument(
        "--log-level",
        choices=_LOG_LEVELS,
        default=_env("BM_LOG_LEVEL", "info"),
        help="(BM_LOG_LEVEL; %(default)s)",
    )

    keys = commands.add_parser("keys", help="create, list and revoke API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", parents=[database], help="create a key")
    create.add_argument("--account", required=True, help="the account the key belongs to")
    create.add_argument(
        "--scope",
        action="append",
        choices=[scope.value for scope in Scope],
        help="what the key may do; repeat for several (default: ingest)",
    )
    key_commands.add_parser("list", parents=[database], help="list keys (display prefixes only)")
    revoke = key_commands.add_parser("revoke", parents=[database], help="revoke a key at once")
    revoke.add_argument("prefix", help="the key's display prefix, as `keys list` shows it")
    return parser


def _secret() -> bytes | None:
    """BM_KEY_SECRET: if set, keys are stored as HMAC-SHA256 with it (use it for every command)."""
    value = os.environ.get("BM_KEY_SECRET")
    return value.encode("utf-8") if value else None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    return asyncio.run(_keys(args))


def _now() -> datetime:
    return datetime.now(UTC)


def _open_store(path: str) -> Store:
    from bmserver._sqlite import SqliteStore  # noqa: PLC0415 - keep --help fast

    return SqliteStore(path)


async def _keys(args: argparse.Namespace) -> int:
    store = _open_store(args.database)
    await store.open()
    try:
        if args.keys_command == "create":
            return await _create_key(store, args.account, args.scope or [Scope.INGEST.value])
        if args.keys_command == "list":
            return await _list_keys(store)
        return await _revoke_key(store, args.prefix)
    finally:
        await store.close()


async def _create_key(store: Store, account: str, scope_names: list[str]) -> int:
    from bmserver._keys import issue_api_key  # noqa: PLC0415 - keep --help fast

    scopes = {Scope(name) for name in scope_names}
    key, record = await issue_api_key(
        store, account=account, scopes=scopes, now=_now(), secret=_secret()
    )
    print(key)
    shown = ", ".join(sorted(scope.value for scope in scopes))
    print(
        f"created key {record.prefix}... for account {account!r} with scopes {shown}; "
        "it is shown only this once",
        file=sys.stderr,
    )
    return 0


async def _list_keys(store: Store) -> int:
    for record in await store.list_api_keys():
        state = f"revoked {record.revoked_at:%Y-%m-%d}" if record.revoked_at else "active"
        scopes = ",".join(sorted(scope.value for scope in record.scopes))
        print(
            f"{record.prefix}...\t{record.account_id}\t{scopes}\t"
            f"{record.created_at:%Y-%m-%d}\t{state}"
        )
    return 0


async def _revoke_key(store: Store, prefix: str) -> int:
    try:
        record = await store.revoke_api_key(prefix.rstrip("."), now=_now())
    except UnknownKeyError:
        print(f"no active key has the prefix {prefix!r}", file=sys.stderr)
        return 1
    print(f"revoked {record.prefix}...", file=sys.stderr)
    return 0


async def ensure_first_key(path: str) -> str | None:
    """On an empty database: create an account and a first key, and return the key."""
    from bmserver._keys import issue_api_key  # noqa: PLC0415 - keep --help fast

    store = _open_store(path)
    await store.open()
    try:
        if await store.count_accounts():
            return None
        key, _ = await issue_api_key(
            store,
            account="default",
            scopes={Scope.INGEST, Scope.READ},
            now=_now(),
            secret=_secret(),
        )
        return key
    finally:
        await store.close()


def _serve(args: argparse.Namespace) -> int:
    import uvicorn  # noqa: PLC0415 - keep --help and the keys commands fast

    from bmserver._app import create_app  # noqa: PLC0415
    from bmserver._clock import SystemClock  # noqa: PLC0415
    from bmserver._limiter import MemoryLimiter  # noqa: PLC0415

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    key = asyncio.run(ensure_first_key(args.database))
    url = f"http://{_url_host(args.host)}:{args.port}"
    if key is not None:
        print(_welcome(key, url), flush=True)
    settings = Settings(
        rate_policy=bmcore.RatePolicy.per_second(args.rate, burst=args.burst),
        key_secret=_secret(),
    )
    app = create_app(
        settings,
        store=_open_store(args.database),
        limiter=MemoryLimiter(settings.rate_policy),
        clock=SystemClock(),
    )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=30,
        access_log=False,  # bmserver.access logs instead, without query strings or keys
        server_header=False,
    )
    uvicorn.Server(config).run()
    return 0


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _welcome(key: str, url: str) -> str:
    return f"""\
This database was empty: created account "default" and its first API key (scopes ingest, read).
It is shown only this once; keep it secret:

    {key}

Post a backup result:

curl -i -X POST "{url}/api/ingest/backup" \\
  -H "Content-Type: application/json" \\
  -H "X-Api-Key: {key}" \\
  -d '{{"deviceName": "'"$(hostname)"'", "jobName": "Nightly Full Backup",
       "timestamp": "'"$(date -u +%Y-%m-%dT%H:%M:%S+00:00)"'", "status": "Success",
       "message": "Backup completed.", "sender": "script-'"$(hostname)"'"}}'
"""
