"""`meshwarden agent`: the node agent (Workload API on a Unix socket)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from meshwarden._agent import AgentOptions, NodeAgent
from meshwarden._server import serve_until_signalled
from meshwarden.cli import _observe as observe
from meshwarden.cli._types import host_port, positive_duration
from meshwarden.identities import SystemClock

EXAMPLES = """\
examples:
  meshwarden agent --server 10.0.0.1:8443 --join-token T --server-bundle bundle.pem \\
      --data-dir /var/lib/meshwarden-agent --socket /run/meshwarden/agent.sock
  meshwarden agent --server 10.0.0.1:8443 --data-dir /var/lib/meshwarden-agent \\
      --socket /run/meshwarden/agent.sock --sds-socket /run/meshwarden/sds.sock
  meshwarden agent --server 10.0.0.1:8443 --data-dir /var/lib/meshwarden-agent \\
      --socket /run/meshwarden/agent.sock --enforce nftables"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "agent", help="run the node agent (Workload API)",
        description="Attest this node with a join token (once; the node identity is kept in "
        "--data-dir), then serve SVIDs to local workloads on the Workload API socket.",
        epilog=EXAMPLES,
    )  # fmt: skip
    parser.add_argument(
        "--server",
        type=host_port,
        required=True,
        metavar="HOST:PORT",
        help="the control plane's node API (`meshwarden server --listen`)",
    )
    parser.add_argument("--join-token", metavar="T", help="needed until the node is attested")
    parser.add_argument("--server-bundle", type=Path, metavar="FILE", help="PEM or SPIFFE JSON")
    parser.add_argument(
        "--data-dir",
        type=Path,
        required=True,
        metavar="DIR",
        help="the node's identity and key (kept between runs)",
    )
    parser.add_argument(
        "--socket",
        type=Path,
        required=True,
        metavar="PATH",
        help="Unix socket of the Workload API for local workloads",
    )
    parser.add_argument(
        "--sds-socket",
        type=Path,
        metavar="PATH",
        help="also serve SDS to local Envoy sidecars on this Unix socket",
    )
    parser.add_argument(
        "--sync-interval",
        type=positive_duration,
        default="5s",
        metavar="DURATION",
        help="how often to fetch this node's workload entries",
    )
    parser.add_argument(
        "--enforce",
        choices=("nftables",),
        help="keep this node's packet filter (`table inet meshwarden`, rendered by the server "
        "from the policies) in sync, one `nft -f` transaction per change; a failed apply keeps "
        "the previous table, is logged and counted (meshwarden.enforce.* metrics). Needs root "
        "(default: off)",
    )
    observe.add_arguments(parser, sidecars=False)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return observe.run(args, "meshwarden-agent", lambda _tracing: _serve(args))


def _serve(args: argparse.Namespace) -> int:
    options = AgentOptions(
        server=args.server, data_dir=args.data_dir, socket=args.socket,
        server_bundle=args.server_bundle, join_token=args.join_token,
        sds_socket=args.sds_socket, sync_interval=args.sync_interval, enforce=args.enforce,
    )  # fmt: skip
    agent = NodeAgent(options, SystemClock())

    async def start() -> str:
        await agent.start()
        assert agent.agent.node is not None
        node = agent.agent.node.chain[0]
        from meshwarden.identities import spiffe_id_of

        return f"node {spiffe_id_of(node)}, Workload API on {options.socket}"

    return asyncio.run(serve_until_signalled(start, agent.run, agent.stop, "meshwarden agent"))
