"""The developer's entry point: ``nox`` runs lint, type checks, tests and coverage.

``nox`` alone runs the default sessions, which is what the README's test command and CI run.
Virtual environments are reused between runs; ``nox -R`` also skips reinstalling.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import nox

nox.options.default_venv_backend = "virtualenv"
nox.options.reuse_venv = "yes"
nox.options.sessions = ["lint", "typecheck", "tests", "coverage"]

ROOT = Path(__file__).parent
PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")
# The supported Pythons, read from the classifiers so that there is one list to keep.
SUPPORTED = nox.project.python_versions(PYPROJECT)
PACKAGES = ["bmcore", "bmserver", "pytest_bm"]
# bmcore is what other teams embed: its line and branch coverage must stay at least this.
BMCORE_MIN_COVERAGE = 95


def _runs(command: str) -> bool:
    executable = shutil.which(command)
    if executable is None:
        return False
    result = subprocess.run(  # noqa: S603 - a Python interpreter found on PATH
        [executable, "-c", "pass"], capture_output=True, check=False
    )
    return result.returncode == 0


def _expose_pyenv_versions() -> None:
    """Put pyenv's other installed Pythons on PATH, so that nox finds every one of them.

    pyenv's shims only run the versions that are active; the others answer with an error.
    """
    root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    versions = Path(root) / "versions"
    if not versions.is_dir():
        return
    extra: list[str] = []
    for version in SUPPORTED:
        if _runs(f"python{version}"):
            continue
        found = sorted(versions.glob(f"{version}.*/bin/python{version}"))
        if found:
            extra.append(str(found[-1].parent))
    if extra:
        os.environ["PATH"] = os.pathsep.join([*extra, os.environ.get("PATH", "")])


_expose_pyenv_versions()
INSTALLED = [version for version in SUPPORTED if _runs(f"python{version}")] or SUPPORTED[:1]


def _install(session: nox.Session, *groups: str, extras: str = "server,scale") -> None:
    session.install("-e", f".[{extras}]")
    for group in groups:
        session.install(*nox.project.dependency_groups(PYPROJECT, group))


@nox.session(python=INSTALLED[0])
def lint(session: nox.Session) -> None:
    """Ruff's lint rules and formatting, and the import layers (pytest_bm -> bmserver -> bmcore)."""
    _install(session, "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("lint-imports")


@nox.session(python=INSTALLED[0])
def typecheck(session: nox.Session) -> None:
    """Run mypy --strict and pyright strict on the packages, the tests and this noxfile."""
    _install(session, "typecheck")
    session.run("mypy")
    session.run("pyright")


@nox.session(python=INSTALLED)
def tests(session: nox.Session) -> None:
    """The test suite with branch coverage, on every supported Python that is installed."""
    _install(session, "test")
    session.run(
        "coverage",
        "run",
        "-m",
        "pytest",
        # One worker per core: most tests wait on sockets, databases and subprocesses, and
        # coverage follows the workers (subprocess patching, pyproject.toml).
        "--numprocesses=auto",
        *session.posargs,
        env={
            "COVERAGE_FILE": str(ROOT / f".coverage.{session.python}"),
            **_hypothesis_profile(session),
        },
    )


def _hypothesis_profile(session: nox.Session) -> dict[str, str]:
    """The thorough ``ci`` profile searches once, on the oldest Python; the others re-check.

    The properties' code is the same on every Python: a thousand examples each on three of them
    tripled CI's time for little more assurance. The other Pythons run the quick profile.
    """
    if os.environ.get("HYPOTHESIS_PROFILE") == "ci" and session.python != INSTALLED[0]:
        return {"HYPOTHESIS_PROFILE": "default"}
    return {}


@nox.session(python=INSTALLED[0])
def reliability(session: nox.Session) -> None:
    """Hostile input, load, kill -9, slow clients and security against a real bmserver process.

    ``BM_RELIABILITY_PROFILE=quick`` runs a tenth of each count, for the edit-test loop; CI runs
    the full profile. A report of requests, faults and entries accounted for ends the run.
    """
    _install(session, "reliability")
    session.run(
        "pytest",
        "tests/reliability",
        "-m",
        "reliability",
        "-p",
        "no:cacheprovider",
        *session.posargs,
    )


def _ensure_wrk(session: nox.Session) -> None:
    """The HTTP benchmark's load generator: wrk from Debian's packages, installed if missing."""
    if shutil.which("wrk") is not None:
        return
    apt = shutil.which("apt-get")
    if apt is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        session.error("wrk is not installed: install it (Debian: apt-get install -y wrk)")
    session.run(apt, "install", "-y", "-q", "wrk", external=True, silent=True)


@nox.session(python=INSTALLED[0])
def bench(session: nox.Session) -> None:
    """Benchmarks beside the alternatives, as ratios (bench/README.md); ``-- --smoke`` for CI.

    Results are written as JSON to bench/results/, which git ignores.
    """
    _install(session, "bench")
    _ensure_wrk(session)
    session.run("python", "-m", "bench", *session.posargs)


@nox.session(python=INSTALLED[0])
def coverage(session: nox.Session) -> None:
    """Combine the coverage of every tests run; bmcore must stay at 95% or more."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "test"))
    session.run("coverage", "combine")  # merges and removes the .coverage.* files
    session.run("coverage", "report")
    session.run("coverage", "report", "--include=bmcore/*", f"--fail-under={BMCORE_MIN_COVERAGE}")
