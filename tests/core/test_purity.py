import inspect
import os
import re
import subprocess
import sys

import bmcore

FORBIDDEN = (
    "starlette",
    "uvicorn",
    "pytest",
    "_pytest",
    "hypothesis",
    "sqlite3",
    "psycopg",
    "psycopg2",
    "redis",
    "asyncio",
    "socket",
    "http",
)

# Runs in a fresh interpreter: lists every forbidden module (or submodule of one) present after
# `import bmcore`, marking those that were already there before it.
PROBE = f"""
import sys
forbidden = {FORBIDDEN!r}
def offenders():
    return {{name for name in sys.modules if name.partition(".")[0] in forbidden}}
before = offenders()
import bmcore
for name in sorted(offenders()):
    print(name + (" (loaded before bmcore)" if name in before else ""))
"""


def _clean_environment() -> dict[str, str]:
    # Coverage's subprocess hooks would start coverage (and its sqlite3) in the child.
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("COV_CORE_", "COVERAGE_"))
    }


def test_import_bmcore_pulls_in_no_framework_driver_or_network_module() -> None:
    """`import bmcore` in a fresh interpreter loads no web, test, database or network module."""
    result = subprocess.run(
        [sys.executable, "-I", "-c", PROBE],
        capture_output=True,
        text=True,
        check=False,
        env=_clean_environment(),
    )
    assert result.returncode == 0, result.stderr
    offenders = result.stdout.strip()
    assert not offenders, f"import bmcore loaded forbidden modules:\n{offenders}"


def _isort_style(name: str) -> tuple[int, list[int | str]]:
    """Ruff's RUF022 order: CONSTANTS, then Classes, then the rest; natural order within each."""
    if len(name) > 1 and name.isupper():
        group = 0
    elif name[:1].isupper():
        group = 1
    else:
        group = 2
    natural: list[int | str] = [
        int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)
    ]
    return group, natural


def test_all_is_sorted_and_unique() -> None:
    """bmcore.__all__ has no duplicates and is in isort-style order (constants, classes, rest)."""
    names = list(bmcore.__all__)
    assert len(set(names)) == len(names)
    assert names == sorted(names, key=_isort_style)


def test_every_name_in_all_exists() -> None:
    """Every name listed in bmcore.__all__ is an attribute of bmcore."""
    missing = [name for name in bmcore.__all__ if not hasattr(bmcore, name)]
    assert missing == []


def test_every_public_class_and_function_is_in_all() -> None:
    """Every public class or function defined in bmcore and exposed by it is listed in __all__."""
    public = {
        name
        for name, value in vars(bmcore).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and str(getattr(value, "__module__", "")).partition(".")[0] == "bmcore"
    }
    assert public, "no public classes or functions found: the check itself is broken"
    assert public - set(bmcore.__all__) == set()
