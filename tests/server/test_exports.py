"""bmserver's public names: what the README tells users to import, and the lazy extras."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from _harness import run_probe

import bmserver

README = Path(__file__).parent.parent.parent / "README.md"
#: Names bmserver's part of the README, and the scaling-out section, tell users to use.
_README_NAMES = ("PostgresStore", "RedisLimiter", "connect_redis", "create_app")
#: Imported on first use: an optional extra's driver, or uvicorn.
_LAZY = ("GuardedH11Protocol", "PostgresStore", "RedisLimiter", "connect_redis")


def test_every_name_in_all_is_there() -> None:
    """Each name of ``__all__`` resolves, the lazily imported ones included."""
    for name in bmserver.__all__:
        assert getattr(bmserver, name) is not None, name


def test_the_readme_names_are_exported() -> None:
    """The classes and functions the README tells users to call are public bmserver names."""
    text = README.read_text(encoding="utf-8")
    for name in _README_NAMES:
        assert re.search(rf"\b{name}\b", text), name  # still what the README says
        assert name in bmserver.__all__, name


def test_importing_bmserver_loads_no_extra_and_no_uvicorn() -> None:
    """psycopg, redis and uvicorn load when their names are first used, not with bmserver."""
    probe = (
        "import sys, bmserver\n"
        "print(sorted(m for m in ('psycopg', 'redis', 'uvicorn') if m in sys.modules))\n"
        "bmserver.GuardedH11Protocol, bmserver.RedisLimiter\n"
        "print(sorted(m for m in ('redis', 'uvicorn') if m in sys.modules))\n"
    )
    assert run_probe(probe).splitlines() == ["[]", "['redis', 'uvicorn']"]


@pytest.mark.parametrize(
    ("name", "driver"), [("RedisLimiter", "redis"), ("PostgresStore", "psycopg")]
)
def test_a_missing_extra_says_which_to_install(
    monkeypatch: pytest.MonkeyPatch, name: str, driver: str
) -> None:
    """Without its driver, a name of the scale extra is an ImportError naming the extra."""
    monkeypatch.setitem(sys.modules, driver, None)  # what an uninstalled module looks like
    with pytest.raises(ImportError, match=rf"{name} needs the scale extra: pip install"):
        getattr(bmserver, name)


def test_an_unknown_name_is_an_attribute_error() -> None:
    """A misspelt name fails as attribute access does anywhere."""
    with pytest.raises(AttributeError, match="has no attribute 'RedisLimitter'"):
        _ = bmserver.RedisLimitter  # its __getattr__ is typed: no checker objects


@pytest.mark.parametrize("name", _LAZY)
def test_lazy_names_are_typed_like_the_eager_ones(name: str) -> None:
    """The lazily imported names come from the modules that define them."""
    assert getattr(bmserver, name).__module__.startswith("bmserver.")
