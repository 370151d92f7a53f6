"""The ``bmserver`` command: serve, and manage API keys. Every flag also reads a BM_* variable."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shlex
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final, NamedTuple

import bmcore
from bmserver._arguments import port_argument, positive_int_argument, rate_argument
from bmserver._settings import DEFAULT_RATE_POLICY, DEFAULT_READ_RATE_POLICY, Settings
from bmserver.storage._contract import Scope, Store, UnknownKeyError

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from bmserver.limits._contract import Limiter

__all__ = ["ensure_first_key", "is_postgres_url", "main", "worker_app"]

DEFAULT_DATABASE: Final = "bm-ingest.sqlite3"
_LOG_LEVELS: Final = ("critical", "error", "warning", "info", "debug")


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bmserver",
        description="The BackupMonitor Custom Ingest API server. Every flag can also be set "
        "with the BM_* environment variable named in its help.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    database = argparse.ArgumentParser(add_help=False)
    database.add_argument(
        "--database",
        default=os.environ.get("BM_DATABASE_URL") or _env("BM_DATABASE", DEFAULT_DATABASE),
        help="a SQLite file, created if missing, or a postgresql:// URL for several instances "
        "(BM_DATABASE_URL or BM_DATABASE; default %(default)s)",
    )

    serve = commands.add_parser("serve", parents=[database], help="serve the ingest API")
    serve.add_argument(
        "--host", default=_env("BM_HOST", "127.0.0.1"), help="address (BM_HOST; %(default)s)"
    )
    serve.add_argument(
        "--port",
        type=port_argument,
        default=_env("BM_PORT", "8080"),
        help="port (BM_PORT; %(default)s)",
    )
    serve.add_argument(
        "--rate",
        type=rate_argument,
        default=_env("BM_RATE", "1/s"),
        help="sustained requests per API key, e.g. 1/s or 30/min (BM_RATE; %(default)s)",
    )
    serve.add_argument(
        "--burst",
        type=positive_int_argument,
        default=_env("BM_BURST", str(DEFAULT_RATE_POLICY.burst)),
        help="requests a key may send at once (BM_BURST; %(default)s)",
    )
    serve.add_argument(
        "--read-rate",
        type=rate_argument,
        default=_env("BM_READ_RATE", "5/s"),
        help="sustained read requests (GET /api/...) per API key, counted apart from ingest "
        "(BM_READ_RATE; %(default)s)",
    )
    serve.add_argument(
        "--read-burst",
        type=positive_int_argument,
        default=_env("BM_READ_BURST", str(DEFAULT_READ_RATE_POLICY.burst)),
        help="read requests a key may send at once (BM_READ_BURST; %(default)s)",
    )
    serve.add_argument(
        "--first-key-file",
        default=_env("BM_FIRST_KEY_FILE", "") or None,
        metavar="PATH",
        help="on an empty database, write the first API key to this file (mode 0600) instead "
        "of printing it, so that it stays out of journald and docker logs (BM_FIRST_KEY_FILE)",
    )
    serve.add_argument(
        "--forwarded-allow-ips",
        default=_env("BM_FORWARDED_ALLOW_IPS", "") or None,
        metavar="IPS",
        help="addresses of reverse proxies whose X-Forwarded-For to trust, comma-separated "
        "(BM_FORWARDED_ALLOW_IPS; default: none, the peer's address is the client's)",
    )
    serve.add_argument(
        "--redis",
        default=_env("BM_REDIS_URL", "") or None,
        metavar="URL",
        help="share rate limits between instances in Redis, e.g. redis://127.0.0.1:6379/0 "
        "(BM_REDIS_URL; default: in this process's memory)",
    )
    serve.add_argument(
        "--redis-prefix",
        default=_env("BM_REDIS_PREFIX", "bm"),
        help="prefix of every Redis key, to share one Redis between deployments "
        "(BM_REDIS_PREFIX; %(default)s)",
    )
    serve.add_argument(
        "--on-redis-error",
        choices=("open", "closed"),
        default=_env("BM_ON_REDIS_ERROR", "open"),
        help="when Redis cannot be reached: open admits requests and logs a warning, closed "
        "answers 503 (BM_ON_REDIS_ERROR; %(default)s)",
    )
    serve.add_argument(
        "--workers",
        type=positive_int_argument,
        default=_env("BM_WORKERS", "1"),
        help="worker processes; more than one needs --redis and a postgresql:// --database "
        "(BM_WORKERS; %(default)s)",
    )
    serve.add_argument(
        "--log-level",
        choices=_LOG_LEVELS,
        default=_env("BM_LOG_LEVEL", "info"),
        help="(BM_LOG_LEVEL; %(default)s)",
    )

    keys = commands.add_parser("keys", help="create, list and revoke API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", parents=[database], help="create a key")
    create.add_argument("--account", required=True, help="the account the key belongs to")
    create.add_argument(
        "--scope",
        action="append",
        choices=[scope.value for scope in Scope],
        help="what the key may do; repeat for several (default: ingest)",
    )
    key_commands.add_parser("list", parents=[database], help="list keys (display prefixes only)")
    revoke = key_commands.add_parser("revoke", parents=[database], help="revoke a key at once")
    revoke.add_argument("prefix", help="the key's display prefix, as `keys list` shows it")
    return parser


def _secret() -> bytes | None:
    """BM_KEY_SECRET: if set, keys are stored as HMAC-SHA256 with it (use it for every command)."""
    value = os.environ.get("BM_KEY_SECRET")
    return value.encode("utf-8") if value else None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    return asyncio.run(_keys(args))


def _now() -> datetime:
    return datetime.now(UTC)


def is_postgres_url(database: str) -> bool:
    """Whether ``--database`` names a PostgreSQL server rather than a SQLite file."""
    return database.startswith(("postgresql://", "postgres://"))


def _open_store(database: str) -> Store:
    if is_postgres_url(database):
        try:
            from bmserver.storage._postgres import PostgresStore  # noqa: PLC0415 - an optional extra
        except ImportError as error:
            msg = f"{error}; PostgreSQL needs the scale extra: pip install 'bm-ingest[scale]'"
            raise SystemExit(msg) from None
        return PostgresStore(database)
    from bmserver.storage._sqlite import SqliteStore  # noqa: PLC0415 - keep --help fast

    return SqliteStore(database)


async def _keys(args: argparse.Namespace) -> int:
    store = _open_store(args.database)
    await store.open()
    try:
        if args.keys_command == "create":
            return await _create_key(store, args.account, args.scope or [Scope.INGEST.value])
        if args.keys_command == "list":
            return await _list_keys(store)
        return await _revoke_key(store, args.prefix)
    finally:
        await store.close()


async def _create_key(store: Store, account: str, scope_names: list[str]) -> int:
    from bmserver._keys import issue_api_key  # noqa: PLC0415 - keep --help fast

    scopes = {Scope(name) for name in scope_names}
    key, record = await issue_api_key(
        store, account=account, scopes=scopes, now=_now(), secret=_secret()
    )
    print(key)
    shown = ", ".join(sorted(scope.value for scope in scopes))
    print(
        f"created key {record.prefix}... for account {account!r} with scopes {shown}; "
        "it is shown only this once",
        file=sys.stderr,
    )
    return 0


async def _list_keys(store: Store) -> int:
    for record in await store.list_api_keys():
        state = f"revoked {record.revoked_at:%Y-%m-%d}" if record.revoked_at else "active"
        scopes = ",".join(sorted(scope.value for scope in record.scopes))
        print(
            f"{record.prefix}...\t{record.account_id}\t{scopes}\t"
            f"{record.created_at:%Y-%m-%d}\t{state}"
        )
    return 0


async def _revoke_key(store: Store, prefix: str) -> int:
    try:
        record = await store.revoke_api_key(prefix.rstrip("."), now=_now())
    except UnknownKeyError:
        print(f"no active key has the prefix {prefix!r}", file=sys.stderr)
        return 1
    print(f"revoked {record.prefix}...", file=sys.stderr)
    return 0


async def ensure_first_key(path: str) -> str | None:
    """On an empty database: create an account and a first key, and return the key."""
    from bmserver._keys import issue_api_key  # noqa: PLC0415 - keep --help fast

    store = _open_store(path)
    await store.open()
    try:
        if await store.count_accounts():
            return None
        key, _ = await issue_api_key(
            store,
            account="default",
            scopes={Scope.INGEST, Scope.READ},
            now=_now(),
            secret=_secret(),
        )
        return key
    finally:
        await store.close()


def _first_key_to_file(database: str, path: Path) -> bool:
    """On an empty database, create the first key into ``path`` (mode 0600); whether it did.

    The file is made before the key (mkstemp: mode 0600, a new name, no symlink followed) and
    moved into place after it, so that a key is never created that could not be delivered, and
    ``path`` never exists with the key and a wider mode, even for a moment.
    """
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="ascii") as output:
            key = asyncio.run(ensure_first_key(database))
            if key is None:
                return False
            output.write(key + "\n")
            output.flush()
            os.fsync(output.fileno())
        Path(temporary).replace(path)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return True


#: The worker processes read the serve flags from this variable: uvicorn starts them anew.
_SERVE_CONFIG: Final = "BM_SERVE_CONFIG"


def _serve(args: argparse.Namespace) -> int:
    import uvicorn  # noqa: PLC0415 - keep --help and the keys commands fast

    from bmserver.http._protocol import GuardedH11Protocol  # noqa: PLC0415

    problem = _scale_out_problem(args)
    if problem:
        print(f"bmserver serve: {problem}", file=sys.stderr)
        return 2
    _configure_logging(args.log_level)
    url = f"http://{_url_host(args.host)}:{args.port}"
    if args.first_key_file is None:
        key = asyncio.run(ensure_first_key(args.database))
        if key is not None:
            print(_welcome(key, url), flush=True)
    else:
        try:
            written = _first_key_to_file(args.database, Path(args.first_key_file))
        except OSError as error:
            print(f"bmserver serve: cannot write --first-key-file: {error}", file=sys.stderr)
            return 2
        if written:
            print(_welcome_with_file(args.first_key_file, url), flush=True)
    os.environ[_SERVE_CONFIG] = json.dumps(
        {
            "database": args.database,
            "rate": args.rate,
            "burst": args.burst,
            "read_rate": args.read_rate,
            "read_burst": args.read_burst,
            "redis": args.redis,
            "redis_prefix": args.redis_prefix,
            "on_redis_error": args.on_redis_error,
            "log_level": args.log_level,
        }
    )
    # One code path for one worker and for many: uvicorn imports the factory in each worker.
    uvicorn.run(
        "bmserver._cli:worker_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        timeout_graceful_shutdown=30,
        access_log=False,  # bmserver.access logs instead, without query strings or keys
        # No WebSocket endpoint exists; an upgrade request handled as one bypasses the access
        # log, and uvicorn would log its query string, where a key may be.
        ws="none",
        server_header=False,
        http=GuardedH11Protocol,  # closes connections whose request head never comes
        # uvicorn trusts X-Forwarded-For from 127.0.0.1 by default: any local client could
        # then pick its address and escape the per-address lockout of key guessing.
        proxy_headers=args.forwarded_allow_ips is not None,
        forwarded_allow_ips=args.forwarded_allow_ips,
    )
    return 0


def _scale_out_problem(args: argparse.Namespace) -> str | None:
    """Why these flags cannot work together, or None."""
    if args.workers == 1:
        return None
    if not is_postgres_url(args.database):
        return (
            f"--workers {args.workers} needs a postgresql:// --database: a SQLite file has one "
            "writer, and each worker would queue behind the others"
        )
    if not args.redis:
        return (
            f"--workers {args.workers} needs --redis: without it each worker keeps its own rate "
            f"limits, and every key would get {args.workers} times its quota"
        )
    return None


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(levelname)s %(name)s: %(message)s")


def worker_app() -> Starlette:
    """The app of one worker process, built from the flags ``bmserver serve`` was given."""
    from bmserver._clock import SystemClock  # noqa: PLC0415
    from bmserver.http._app import create_app  # noqa: PLC0415 - keep --help fast

    config = json.loads(os.environ[_SERVE_CONFIG])
    _configure_logging(config["log_level"])
    settings = Settings(
        rate_policy=bmcore.RatePolicy.per_second(config["rate"], burst=config["burst"]),
        read_rate_policy=bmcore.RatePolicy.per_second(
            config["read_rate"], burst=config["read_burst"]
        ),
        key_secret=_secret(),
        on_limiter_error=config["on_redis_error"],
    )
    limiters = _limiters(settings, config["redis"], config["redis_prefix"])
    return create_app(
        settings,
        store=_open_store(config["database"]),
        limiter=limiters.ingest,
        clock=SystemClock(),
        auth_failures=limiters.auth_failures,
        read_limiter=limiters.reads,
    )


class _Limiters(NamedTuple):
    ingest: Limiter
    reads: Limiter
    auth_failures: Limiter


def _limiters(settings: Settings, redis_url: str | None, prefix: str) -> _Limiters:
    """Per key (ingest, reads) and per address (failed authentications): here, or in Redis."""
    from bmserver.limits._contract import MemoryLimiter  # noqa: PLC0415 - keep --help fast

    if not redis_url:
        return _Limiters(
            MemoryLimiter(settings.rate_policy),
            MemoryLimiter(settings.read_rate_policy),
            MemoryLimiter(settings.auth_failure_policy),
        )
    try:
        from bmserver.limits._redis import RedisLimiter, connect_redis  # noqa: PLC0415
    except ImportError as error:
        msg = f"{error}; Redis needs the scale extra: pip install 'bm-ingest[scale]'"
        raise SystemExit(msg) from None

    def shared(policy: bmcore.RatePolicy, name: str) -> Limiter:
        client = connect_redis(redis_url)
        return RedisLimiter(client, policy, namespace=f"{prefix}:{name}", owns_client=True)

    return _Limiters(
        shared(settings.rate_policy, "rate"),
        shared(settings.read_rate_policy, "read-rate"),
        shared(settings.auth_failure_policy, "auth-failures"),
    )


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _welcome_with_file(path: str, url: str) -> str:
    return f"""\
This database was empty: created account "default" and its first API key (scopes ingest, read).
The key was written to {path} (mode 0600); it is not shown here. Post a backup result:

curl -i -X POST "{url}/api/ingest/backup" \\
  -H "Content-Type: application/json" \\
  -H "X-Api-Key: $(cat {shlex.quote(path)})" \\
  -d '{{"deviceName": "'"$(hostname)"'", "jobName": "Nightly Full Backup",
       "timestamp": "'"$(date -u +%Y-%m-%dT%H:%M:%S+00:00)"'", "status": "Success",
       "message": "Backup completed.", "sender": "script-'"$(hostname)"'"}}'
"""


def _welcome(key: str, url: str) -> str:
    return f"""\
This database was empty: created account "default" and its first API key (scopes ingest, read).
It is shown only this once; keep it secret:

    {key}

Post a backup result:

curl -i -X POST "{url}/api/ingest/backup" \\
  -H "Content-Type: application/json" \\
  -H "X-Api-Key: {key}" \\
  -d '{{"deviceName": "'"$(hostname)"'", "jobName": "Nightly Full Backup",
       "timestamp": "'"$(date -u +%Y-%m-%dT%H:%M:%S+00:00)"'", "status": "Success",
       "message": "Backup completed.", "sender": "script-'"$(hostname)"'"}}'
"""
