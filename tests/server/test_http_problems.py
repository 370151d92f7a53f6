"""The problem table: one place pairs each code with status and title; nothing else spells one."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import bmcore
from bmserver import PROBLEM_CONTENT_TYPE, Problem, ProblemError
from bmserver.http._problems import problem_document, problem_response

ROOT = Path(__file__).parent.parent.parent
#: Where a problem is answered: the server and the fake. Tests and benchmarks may spell codes:
#: they state what a client sees.
_SOURCES = sorted(
    [*ROOT.joinpath("bmserver").rglob("*.py"), *ROOT.joinpath("pytest_bm").rglob("*.py")]
)
#: The one code spelled outside the table on purpose: bmcore's field-error code for a body
#: that is not JSON (a FieldError's code, not a problem's), which bmcore exports no name for.
_FIELD_ERROR_CODES = {("bmserver/http/_ingest.py", "invalid_json")}


def test_every_problem_has_a_distinct_code_a_title_and_a_urn() -> None:
    """Codes are unique snake_case, titles are sentences, types are URNs naming the code."""
    codes = [problem.code for problem in Problem]
    assert len(set(codes)) == len(codes)
    for problem in Problem:
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", problem.code), problem
        assert problem.title[0].isupper(), problem
        assert problem.title != problem.code, problem
        assert problem.type_uri == f"urn:bm-ingest:problem:{problem.code}"


def test_the_documented_codes_are_all_in_the_table() -> None:
    """DESIGN.md's stable codes, and the ones the README names, are members of the table."""
    documented = {
        "invalid_json",
        "validation_failed",
        "missing_api_key",
        "invalid_api_key",
        "insufficient_scope",
        "rate_limited",
        "payload_too_large",
        "unsupported_media_type",
        "conflict",
        "not_found",
        "method_not_allowed",
        "request_timeout",
        "storage_unavailable",
        "rate_limiter_unavailable",
        "malformed_http",
    }
    assert documented <= {problem.code for problem in Problem}


def test_statuses_behind_bmcore_errors_are_bmcore_hints() -> None:
    """A problem that stands for a bmcore error or verdict is answered with its status_hint."""
    assert Problem.VALIDATION_FAILED.status == bmcore.PayloadError.status_hint
    assert Problem.INVALID_JSON.status == bmcore.PayloadError.status_hint
    assert Problem.INVALID_API_KEY.status == bmcore.ApiKeyFormatError.status_hint
    assert Problem.CONFLICT.status == bmcore.Verdict.CONFLICT.status_hint


@given(st.integers(min_value=100, max_value=599))
def test_a_bare_status_stands_for_the_first_problem_listed_with_it(status: int) -> None:
    """for_status(s) is None or the first member whose status is s."""
    listed = [problem for problem in Problem if problem.status == status]
    assert Problem.for_status(status) == (listed[0] if listed else None)


@pytest.mark.parametrize("problem", list(Problem), ids=lambda problem: problem.code)
def test_a_problem_is_answered_with_its_own_status_only(problem: Problem) -> None:
    """A fixed status can be neither replaced nor omitted where it varies; a mismatch says so."""
    if problem.status is None:
        with pytest.raises(ValueError, match="no status of its own"):
            ProblemError(problem, "detail")
        assert ProblemError(problem, "detail", status=418).status == 418
    else:
        assert ProblemError(problem, "detail").status == problem.status
        assert ProblemError(problem, "detail", status=problem.status).status == problem.status
        with pytest.raises(ValueError, match=f"always answered with {problem.status}"):
            ProblemError(problem, "detail", status=problem.status + 1)


@given(
    problem=st.sampled_from([problem for problem in Problem if problem.status is not None]),
    detail=st.text(),
    errors=st.lists(
        st.builds(bmcore.FieldError, field=st.text(), code=st.text(), message=st.text())
    ),
)
def test_a_problem_response_is_its_document_as_ascii_json(
    problem: Problem, detail: str, errors: list[bmcore.FieldError]
) -> None:
    """The body parses back to the document: status, code, title and every field error."""
    response = problem_response(problem, detail, errors=errors)
    assert response.status_code == problem.status
    assert response.media_type == PROBLEM_CONTENT_TYPE
    body = bytes(response.body)
    assert body.isascii()
    parsed = json.loads(body)
    assert parsed == problem_document(problem, detail, errors=errors)
    assert (parsed["code"], parsed["title"], parsed["status"]) == (
        problem.code,
        problem.title,
        problem.status,
    )
    assert [error["message"] for error in parsed.get("errors", [])] == [e.message for e in errors]


def test_no_problem_code_is_spelled_outside_the_table() -> None:
    """The server and the fake name problems by member: no code is a string anywhere else."""
    table = ROOT / "bmserver" / "http" / "_problems.py"
    codes = {problem.code for problem in Problem}
    spelled = sorted(
        (str(path.relative_to(ROOT)), code)
        for path in _SOURCES
        if path != table
        for code in re.findall(r"""["']([a-z_]+)["']""", path.read_text(encoding="utf-8"))
        if code in codes
    )
    assert set(spelled) <= _FIELD_ERROR_CODES, spelled
