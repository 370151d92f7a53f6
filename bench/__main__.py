"""``python -m bench [--smoke] [--only NAME ...]``: run the benchmarks, print one table, save JSON.

``nox -s bench`` runs this in an environment with the alternatives installed (pydantic, msgspec,
ciso8601, pytest-httpserver) and wrk on PATH.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Protocol, cast

from bench._report import Figure, machine, table, write_results

#: Benchmark modules in the order of bench/README.md; each has ``run(*, smoke) -> list[Figure]``.
BENCHMARKS = ["core_decoding", "timestamps", "ratelimit", "http_ingest", "fake", "job_health"]


class _Benchmark(Protocol):
    def run(self, *, smoke: bool) -> list[Figure]: ...


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks; exit 1 only if one of them fails to run."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="one short iteration of each benchmark, to check that they still run (CI)",
    )
    parser.add_argument(
        "--only", nargs="+", choices=BENCHMARKS, default=BENCHMARKS, help="run only these"
    )
    arguments = parser.parse_args(argv)
    smoke: bool = arguments.smoke
    info = machine()
    print(f"# {info['cpu_model']}, {info['cores']} cores, Python {info['python']}", flush=True)
    figures: list[Figure] = []
    for name in arguments.only:
        module = cast("_Benchmark", importlib.import_module(f"bench.{name}"))
        print(f"# running {name} ...", flush=True)
        figures.extend(module.run(smoke=smoke))
    print(table(figures))
    path = write_results(figures, smoke=smoke)
    print(f"# results written to {path}")
    missed = [figure for figure in figures if figure.met is False]
    if missed and not smoke:
        print(f"# {len(missed)} goal(s) missed: see bench/README.md for what limits them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
