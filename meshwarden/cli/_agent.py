"""`meshwarden agent`: the node agent (Workload API on a Unix socket)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from meshwarden._agent import AgentOptions, NodeAgent
from meshwarden._server import serve_until_signalled
from meshwarden.cli import _observe as observe
from meshwarden.identities import SystemClock


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "agent", help="run the node agent (Workload API)",
        description="Attest this node with a join token (once; the node identity is kept in "
        "--data-dir), then serve SVIDs to local workloads on the Workload API socket.",
    )  # fmt: skip
    parser.add_argument("--server", required=True, metavar="HOST:PORT")
    parser.add_argument("--join-token", metavar="T", help="needed until the node is attested")
    parser.add_argument("--server-bundle", type=Path, metavar="FILE", help="PEM or SPIFFE JSON")
    parser.add_argument("--data-dir", type=Path, required=True, metavar="DIR")
    parser.add_argument("--socket", type=Path, required=True, metavar="PATH")
    parser.add_argument("--sds-socket", type=Path, metavar="PATH")
    parser.add_argument("--sync-interval", type=float, default=5.0, metavar="SECONDS")
    observe.add_arguments(parser, sidecars=False)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return observe.run(args, "meshwarden-agent", lambda _tracing: _serve(args))


def _serve(args: argparse.Namespace) -> int:
    options = AgentOptions(
        server=args.server, data_dir=args.data_dir, socket=args.socket,
        server_bundle=args.server_bundle, join_token=args.join_token,
        sds_socket=args.sds_socket, sync_interval=args.sync_interval,
    )  # fmt: skip
    agent = NodeAgent(options, SystemClock())

    async def start() -> str:
        await agent.start()
        assert agent.agent.node is not None
        node = agent.agent.node.chain[0]
        from meshwarden.identities import spiffe_id_of

        return f"node {spiffe_id_of(node)}, Workload API on {options.socket}"

    return asyncio.run(serve_until_signalled(start, agent.run, agent.stop))
