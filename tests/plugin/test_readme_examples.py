"""The README's bm_fake_ingest examples run as real tests, through the installed plugin."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).parent.parent.parent / "README.md"
_FENCED_PYTHON = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
EXAMPLES = [
    block
    for block in _FENCED_PYTHON.findall(README.read_text(encoding="utf-8"))
    if "bm_fake_ingest" in block
]


def test_the_readme_has_the_four_fixture_examples() -> None:
    """A bash script, a retry on 429, a job's schedule and a background client."""
    assert len(EXAMPLES) == 4


@pytest.mark.parametrize(
    "source", EXAMPLES, ids=["bash-curl", "retry-429", "job-schedule", "background"]
)
def test_readme_example_passes(pytester: pytest.Pytester, source: str) -> None:
    """Each example, saved as a test module of a fresh project, passes."""
    pytester.makepyfile(test_example=source)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
