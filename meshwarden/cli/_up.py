"""`meshwarden up DIR`: the whole mesh on this host."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from meshwarden._flow_file import problem as flow_file_problem
from meshwarden.cli import _observe as observe
from meshwarden.cli._common import envoy_or_fail, fail, percentage
from meshwarden.cli._types import host_port

HELP = """\
Run the mesh of DIR on this host: the control plane (CA, node API, ADS), a node agent, and one
Envoy sidecar per Workload (with an address) in DIR, each taking its SVID from its own SDS
socket. Prints a line starting with 'ready' once every sidecar has ACKed its configuration.
DIR is watched: a valid change is pushed to the affected sidecars within a second; an invalid
one is reported as FILE:LINE:COL and changes nothing (the health endpoint says 'degraded').
Stops cleanly on SIGINT/SIGTERM."""

EXAMPLES = """\
examples:
  meshwarden up examples/shop
  meshwarden up policies/ --data-dir state/ --health 127.0.0.1:9901 \\
      --otlp-endpoint http://127.0.0.1:4317"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "up", help="run server, agent and one Envoy per workload on this host",
        description=HELP, epilog=EXAMPLES,
    )  # fmt: skip
    parser.add_argument(
        "policies",
        type=Path,
        metavar="DIR",
        help="the policy directory (watched; changes are pushed live)",
    )
    parser.add_argument("--data-dir", type=Path, metavar="D", help="state (default: a temp dir)")
    parser.add_argument("--delta", action="store_true", help="incremental (delta) xDS")
    parser.add_argument(
        "--health",
        type=host_port,
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="HTTP endpoint for /healthz and /flows (default: a free port on "
        "127.0.0.1; `meshwarden flows --server HOST:PORT`)",
    )
    parser.add_argument("--flow-log-sample", type=percentage, default=100.0, metavar="PERCENT",
                        help="share of allowed HTTP requests logged for `meshwarden flows`; "
                        "denials are always logged (default 100)")  # fmt: skip
    parser.add_argument("--flow-log-file", type=Path, metavar="PATH",
                        help="also append every flow record to PATH as NDJSON (0600, rotated "
                        "at 64 MiB to PATH.1 ... PATH.4) for `recommend --flows`, `lint "
                        "--flows`")  # fmt: skip
    observe.add_arguments(parser, sidecars=True)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from meshwarden._server import serve_until_signalled
    from meshwarden._up import LocalMesh

    if not args.policies.is_dir():
        return fail(f"{args.policies}: not a directory")
    envoy_or_fail()
    problem = flow_file_problem(args.flow_log_file)
    if problem:
        return fail(problem)

    def serve(tracing: Any) -> int:
        mesh = LocalMesh(args.policies, args.data_dir, delta=args.delta, tracing=tracing,
                         health=args.health, flow_log_sample=args.flow_log_sample,
                         flow_log_file=args.flow_log_file)  # fmt: skip
        return asyncio.run(
            serve_until_signalled(mesh.start, mesh.run, mesh.stop, args.command_prog)
        )

    return observe.run(args, "meshwarden", serve)
