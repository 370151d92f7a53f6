"""What the OpenAPI document's parts share: problem responses, rate and cache headers."""

from __future__ import annotations

from typing import Any, Final

__all__ = ["NO_STORE", "RATE_HEADERS", "READS_LIMITED", "UNAUTHORIZED", "problem"]


def problem(description: str, *, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        },
    }
    if headers:
        response["headers"] = headers
    return response


#: Every 401 says how to authenticate (RFC 9110).
UNAUTHORIZED: Final = problem(
    "Missing or invalid API key.",
    headers={
        "WWW-Authenticate": {
            "schema": {"type": "string", "const": 'ApiKey header="X-Api-Key"'},
        }
    },
)
RATE_HEADERS: Final = {
    "RateLimit-Policy": {"schema": {"type": "string"}},
    "RateLimit": {"schema": {"type": "string"}},
}
#: Every answer under /api/ carries an account's data, or could: no cache may keep it.
NO_STORE: Final = {"Cache-Control": {"schema": {"type": "string", "const": "no-store"}}}


READS_LIMITED: Final = problem(
    "The key's read quota is used up, or this address failed to authenticate too often.",
    headers={"Retry-After": {"schema": {"type": "integer"}}, **RATE_HEADERS},
)
