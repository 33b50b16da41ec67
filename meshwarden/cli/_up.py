"""`meshwarden up DIR`: the whole mesh on this host."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

from meshwarden._flow_file import problem as flow_file_problem
from meshwarden.cli import _observe as observe
from meshwarden.cli import _ui as ui
from meshwarden.cli._common import add_flow_log_arguments, envoy_or_fail, fail
from meshwarden.cli._types import loopback_host_port, positive_duration

HELP = """\
Run the mesh of DIR on this host: the control plane (CA, node API, ADS), a node agent, and one
Envoy sidecar per Workload (with an address) in DIR, each taking its SVID from its own SDS
socket. Prints 'sidecars ACKed n/N' as they come up, every NACK with Envoy's message, and each
sidecar that gets no identity (with the reason), then a line starting with 'ready' once every
sidecar has ACKed its configuration — or an error and exit 1 after --ready-timeout.

DIR is watched: a valid change is pushed to the affected sidecars within a second; an invalid
one is reported as FILE:LINE:COL and changes nothing (the health endpoint says 'degraded').

The sidecars outlive `up`: if it dies, they keep enforcing the last configuration, and the
next `up` on the same --data-dir replaces them. An Envoy that exits is restarted after 1 s,
2 s, 4 s ... up to 30 s while the others keep serving. Each Envoy's admin interface is a unix
socket (0600) in DATA/sidecars (0700). Outbound listeners of a workload with a unix:uid:N
selector accept only that uid (nftables table 'meshwarden_outbound'; needs root).
SIGINT/SIGTERM stops everything cleanly (exit 0), and so does SIGHUP (its terminal closed).
So does the end of its output: piped into a command that exits (`up DIR | head -1`), `up`
stops everything it started, Envoys included, and exits 141 like a command killed by SIGPIPE.

Example:
  meshwarden up examples/shop --health 127.0.0.1:9901"""


def default_data_dir(policies: Path) -> Path:
    """Per policy directory, so a restarted `up` finds what the last one left running."""
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    digest = hashlib.sha256(str(policies.resolve()).encode()).hexdigest()[:12]
    return state / "meshwarden" / "up" / f"{policies.resolve().name}-{digest}"


EXAMPLES = """\
examples:
  meshwarden up examples/shop
  meshwarden up policies/ --data-dir state/ --health 127.0.0.1:9901 \\
      --otlp-endpoint http://127.0.0.1:4317"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "up",
        help="run server, agent and one Envoy per workload on this host",
        description=HELP,
        epilog=EXAMPLES,
    )
    parser.add_argument(
        "policies",
        type=Path,
        metavar="DIR",
        help="the policy directory (watched; changes are pushed live)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="D",
        help="state, sockets and sidecar logs (default: "
        "~/.local/state/meshwarden/up/DIRNAME-HASH, one per DIR)",
    )
    parser.add_argument(
        "--ready-timeout",
        type=positive_duration,
        default=60.0,
        metavar="DURATION",
        help="give up (exit 1, saying which sidecars are not ready and why) "
        "if not every sidecar ACKed by then, e.g. 90s (default 60s)",
    )
    parser.add_argument("--delta", action="store_true", help="incremental (delta) xDS")
    parser.add_argument(
        "--health",
        type=loopback_host_port,
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="HTTP endpoint for /healthz and /flows (default: a free port on "
        "127.0.0.1; `meshwarden flows --server HOST:PORT`)",
    )
    add_flow_log_arguments(parser)
    observe.add_arguments(parser, sidecars=True)
    ui.add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from meshwarden._lifecycle import serve_until_signalled
    from meshwarden._up import LocalMesh

    if not args.policies.is_dir():
        return fail(f"{args.policies}: not a directory")
    envoy_or_fail()
    problem = flow_file_problem(args.flow_log_file)
    if problem:
        return fail(problem)
    console = ui.options(args)

    def serve(tracing: Any) -> int:
        data_dir = args.data_dir or default_data_dir(args.policies)
        mesh = LocalMesh(
            args.policies,
            data_dir,
            delta=args.delta,
            tracing=tracing,
            health=args.health,
            flow_log_sample=args.flow_log_sample,
            flow_log_file=args.flow_log_file,
            detach=True,
            ui=console,
        )
        start = lambda: mesh.start(args.ready_timeout)  # noqa: E731
        stopping = serve_until_signalled(
            start, mesh.run, mesh.stop, args.command_prog, stop_when_output_closes=True
        )
        return asyncio.run(stopping)

    return observe.run(args, "meshwarden", serve)
