"""The pytest plugin end to end, with pytester: fixtures, markers, options, strict mode."""

from __future__ import annotations

import pytest
from _harness import run_probe

# A client as an integrator's test would write it: standard library only.
CLIENT = """
import json
import urllib.error
import urllib.request


def post(url, key, payload):
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", "X-Api-Key": key},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def backup(fake, **changes):
    payload = {
        "deviceName": "srv01", "jobName": "Nightly", "status": "Success", "message": "ok",
        "timestamp": fake.clock.now().isoformat(),
    }
    payload.update(changes)
    return post(fake.backup_url, fake.api_key, payload)
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester project holding the client helper."""
    pytester.makepyfile(client=CLIENT)
    pytester.syspathinsert()
    return pytester


def test_fixture_receives_what_a_client_posts(project: pytest.Pytester) -> None:
    """A test posts through bm_fake_ingest and asserts what arrived; it passes."""
    project.makepyfile(
        """
        from client import backup

        def test_post(bm_fake_ingest):
            assert backup(bm_fake_ingest) == 201
            bm_fake_ingest.assert_backup(device_name="srv01", status="Success")
            assert len(bm_fake_ingest.backups) == 1
        """
    )
    project.runpytest().assert_outcomes(passed=1)


def test_each_test_starts_from_a_clean_fake(project: pytest.Pytester) -> None:
    """State is reset between tests, while the server stays the same."""
    project.makepyfile(
        """
        from client import backup

        URLS = []

        def test_first(bm_fake_ingest):
            URLS.append(bm_fake_ingest.url)
            assert backup(bm_fake_ingest) == 201

        def test_second(bm_fake_ingest):
            assert bm_fake_ingest.backups == []
            assert bm_fake_ingest.requests == []
            assert URLS == [bm_fake_ingest.url]
        """
    )
    project.runpytest("-p", "no:randomly").assert_outcomes(passed=2)


def test_strict_mode_fails_a_test_with_an_unexpected_rejection(project: pytest.Pytester) -> None:
    """A 400 the test did not expect fails it at teardown, listing the request and problem."""
    project.makepyfile(
        """
        from client import backup

        def test_sloppy(bm_fake_ingest):
            backup(bm_fake_ingest, timestamp="2024-06-04T14:00:00")
        """
    )
    result = project.runpytest()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*bm_fake_ingest rejected requests this test did not expect*",
            "*POST /api/ingest/backup*400*",
            "*missing_utc_offset*",
        ]
    )


def test_marker_turns_strict_mode_off(project: pytest.Pytester) -> None:
    """@pytest.mark.bm_ingest(strict=False) lets a test provoke rejections on purpose."""
    project.makepyfile(
        """
        import pytest
        from client import post

        @pytest.mark.bm_ingest(strict=False)
        def test_bad_key(bm_fake_ingest):
            assert post(bm_fake_ingest.backup_url, "bm_" + "x" * 43, {}) == 401
            assert bm_fake_ingest.rejections[0].status == 401
        """
    )
    project.runpytest().assert_outcomes(passed=1)


def test_ini_option_and_the_flag_that_wins_over_it(project: pytest.Pytester) -> None:
    """bm_ingest_strict = false in the ini turns strictness off; the flag turns it back on."""
    project.makeini("[pytest]\nbm_ingest_strict = false\n")
    project.makepyfile(
        """
        from client import backup

        def test_sloppy(bm_fake_ingest):
            backup(bm_fake_ingest, status="")
        """
    )
    project.runpytest().assert_outcomes(passed=1)
    project.runpytest("--bm-ingest-strict=true").assert_outcomes(passed=1, errors=1)


def test_marker_sets_the_rate_policy(project: pytest.Pytester) -> None:
    """A small burst from the marker gives a deterministic 429, lifted by the clock."""
    project.makepyfile(
        """
        import pytest
        from client import backup

        @pytest.mark.bm_ingest(burst=2, rate="1/s", strict=False)
        def test_throttled(bm_fake_ingest):
            statuses = [backup(bm_fake_ingest, jobName=f"j{i}") for i in range(3)]
            assert statuses == [201, 201, 429]
            bm_fake_ingest.clock.advance(1)
            assert backup(bm_fake_ingest, jobName="later") == 201
        """
    )
    project.runpytest().assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bm-ingest-rate=fast"], "*bm_ingest: invalid rate 'fast'*"),
        (["--bm-ingest-burst=0"], "*bm_ingest: burst must be a whole number*"),
        (["--bm-ingest-strict=maybe"], "*bm_ingest: strict must be true or false*"),
        (["--bm-ingest-api-key=secret"], "*bm_ingest: api_key must be 'bm_'*"),
    ],
)
def test_bad_option_values_are_usage_errors(
    project: pytest.Pytester, args: list[str], message: str
) -> None:
    """A bad flag value stops the run with a usage error that says what is expected."""
    project.makepyfile("def test_nothing():\n    pass\n")
    result = project.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_bad_marker_argument_is_a_usage_error(project: pytest.Pytester) -> None:
    """An unknown marker argument is reported clearly, not silently ignored."""
    project.makepyfile(
        """
        import pytest

        @pytest.mark.bm_ingest(stric=False)
        def test_typo(bm_fake_ingest):
            pass
        """
    )
    result = project.runpytest()
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*UsageError*unknown marker argument(s)*stric*"])


def test_report_header_shows_the_settings(project: pytest.Pytester) -> None:
    """The run's header names the fake's settings."""
    project.makepyfile("def test_nothing():\n    pass\n")
    result = project.runpytest("--bm-ingest-burst=7")
    result.stdout.fnmatch_lines(["bm_ingest: strict=True, rate=1/s burst=7, api key random"])


def test_fixed_api_key_from_the_command_line(project: pytest.Pytester) -> None:
    """--bm-ingest-api-key makes the fake's default key the given one."""
    key = "bm_" + "k" * 40
    project.makepyfile(
        f"""
        def test_key(bm_fake_ingest):
            assert bm_fake_ingest.api_key == {key!r}
        """
    )
    project.runpytest(f"--bm-ingest-api-key={key}").assert_outcomes(passed=1)


def test_api_key_fixture_can_be_overridden(project: pytest.Pytester) -> None:
    """Overriding bm_ingest_api_key in a conftest chooses the key, pytest-httpserver style."""
    key = "bm_" + "c" * 40
    project.makeconftest(
        f"""
        import pytest

        @pytest.fixture(scope="session")
        def bm_ingest_api_key():
            return {key!r}
        """
    )
    project.makepyfile(
        f"""
        def test_key(bm_fake_ingest):
            assert bm_fake_ingest.api_key == {key!r}
        """
    )
    project.runpytest().assert_outcomes(passed=1)


def test_two_xdist_workers_each_get_a_server(project: pytest.Pytester) -> None:
    """Under pytest-xdist every worker has its own fake; both tests pass in parallel."""
    pytest.importorskip("xdist")
    project.makepyfile(
        """
        from client import backup

        def test_one(bm_fake_ingest):
            assert backup(bm_fake_ingest) == 201
            assert len(bm_fake_ingest.backups) == 1

        def test_two(bm_fake_ingest):
            assert backup(bm_fake_ingest) == 201
            assert len(bm_fake_ingest.backups) == 1
        """
    )
    project.runpytest_subprocess("-n", "2").assert_outcomes(passed=2)


def test_loading_the_plugin_imports_nothing_heavy() -> None:
    """Importing the plugin module loads no server, framework or fake."""
    probe = (
        "import sys, pytest_bm.plugin\n"
        "heavy = ['bmserver', 'starlette', 'uvicorn', 'pytest_bm._fake', 'sqlite3']\n"
        "print([name for name in heavy if name in sys.modules])\n"
    )
    assert run_probe(probe).strip() == "[]"


def test_rate_policy_and_start_time_fixtures_can_be_overridden(project: pytest.Pytester) -> None:
    """A conftest can set the fake's rate policy and pin its clock, in code."""
    project.makeconftest(
        """
        from datetime import datetime, timezone

        import pytest
        import bmcore

        @pytest.fixture(scope="session")
        def bm_ingest_rate_policy():
            return bmcore.RatePolicy.per_second(1, burst=1)

        @pytest.fixture
        def bm_ingest_start_time():
            return datetime(2030, 1, 2, 3, 4, tzinfo=timezone.utc)
        """
    )
    project.makepyfile(
        """
        import pytest
        from client import backup

        @pytest.mark.bm_ingest(strict=False)
        def test_pinned(bm_fake_ingest):
            assert bm_fake_ingest.clock.now().isoformat() == "2030-01-02T03:04:00+00:00"
            assert [backup(bm_fake_ingest), backup(bm_fake_ingest, jobName="b")] == [201, 429]
            assert bm_fake_ingest.backups[0].received_at.year == 2030
        """
    )
    project.runpytest().assert_outcomes(passed=1)
