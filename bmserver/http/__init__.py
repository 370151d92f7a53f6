"""The HTTP layer: the Starlette app, its endpoints, authentication, problems and protocol guard.

One job a module:

- ``_app``: create_app, its routes, lifespan and exception handlers;
- ``_ingest``: the two ingest endpoints, and the outcome they leave in a request's scope;
- ``_body``: an ingest body read within its size cap and time-out, its type, gzip;
- ``_reads``: the read side; ``_authentication``: who is asking, for both;
- ``_gate``: asking a rate limiter, 429 and its headers; ``_middleware``: access log, no-store;
- ``_problems``: the table of every problem and its answers; ``_openapi``: the document;
- ``_protocol``: the uvicorn protocol that guards connections (``bmserver serve`` and the fake).

It knows stores and limiters only by their contracts (bmserver.storage, bmserver.limits); an
import-linter contract keeps it so. Public names are exported by :mod:`bmserver`.
"""
