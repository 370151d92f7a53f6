"""The README's Python examples run, so that they cannot rot."""

import re
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"
EXAMPLES = re.findall(
    r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL
)


def test_the_readme_has_examples() -> None:
    """The README holds at least the bmcore example, so the test below cannot pass vacuously."""
    assert EXAMPLES


@pytest.mark.parametrize("source", EXAMPLES, ids=lambda source: source.splitlines()[0][:40])
def test_readme_example_runs(source: str) -> None:
    """Each ```python block of the README runs without error; its asserts are the checks."""
    exec(compile(source, str(README), "exec"), {"__name__": "readme_example"})  # noqa: S102
