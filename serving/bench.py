"""``lumen-bench``: ``server`` load-tests a running lumen-serve, ``model`` times ONNX Runtime offline.

Each subcommand module exposes ``register(subparsers)``, which adds its parser and sets
``func(args) -> int`` as the parser default; ``main`` dispatches to it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
from collections.abc import Sequence

from serving import bench_server

# Written separately; the command list grows when the module exists, bench.py works either way.
OPTIONAL_SUBCOMMANDS = ("serving.bench_model",)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lumen-bench", description="Benchmarks: a live server (server) or a model offline (model)."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="{server,model}")
    bench_server.register(subparsers)
    for name in OPTIONAL_SUBCOMMANDS:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
