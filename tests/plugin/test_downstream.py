"""A throwaway downstream project installs bm-ingest and uses the fixture by entry point alone."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).parent.parent.parent

DOWNSTREAM_TEST = """
import os
import subprocess


def test_my_script(bm_fake_ingest):
    script = (
        'curl -sf -X POST "$BM_INGEST_NOTIFICATION_URL" -H "X-Api-Key: $BM_API_KEY" '
        '-H "Content-Type: application/json" '
        "-d '{\\"deviceName\\": \\"srv01\\", \\"severity\\": \\"info\\", \\"type\\": \\"deploy\\", "
        "\\"timestamp\\": \\"'$(date -u +%Y-%m-%dT%H:%M:%SZ)'\\"}'"
    )
    subprocess.run(["bash", "-c", script], env={**os.environ, **bm_fake_ingest.env}, check=True)
    bm_fake_ingest.assert_notification(type="deploy", severity="info")
"""


def run(*command: str | Path, cwd: Path | None = None) -> str:
    """Run a command; fail with its output if it fails."""
    result = subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_downstream_project_uses_the_fixture_from_a_wheel(tmp_path: Path) -> None:
    """Build the wheel, install it in a new venv, and run a project that only names the fixture."""
    wheels = tmp_path / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, ROOT)
    (wheel,) = wheels.glob("bm_ingest-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for package in ("bmcore", "bmserver", "pytest_bm"):
        assert f"{package}/py.typed" in names
    assert not [name for name in names if name.startswith("tests/")]

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "-q", f"{wheel}[server]", "pytest")

    project = tmp_path / "project"
    (project / "tests").mkdir(parents=True)
    (project / "tests" / "test_script.py").write_text(DOWNSTREAM_TEST, encoding="utf-8")
    output = run(python, "-m", "pytest", "-p", "no:cacheprovider", "-q", cwd=project)
    assert "1 passed" in output
