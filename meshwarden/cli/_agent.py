"""`meshwarden agent`: the node agent (Workload API on a Unix socket)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from meshwarden._agent import AgentOptions, NodeAgent
from meshwarden._lifecycle import serve_until_signalled
from meshwarden.cli import _observe as observe
from meshwarden.cli._common import InputError
from meshwarden.cli._types import host_port_list, loopback_host_port, positive_duration
from meshwarden.identities import SystemClock

EXAMPLES = """\
examples:
  meshwarden agent --server 10.0.0.1:8443 --join-token-file token --server-bundle bundle.pem \\
      --data-dir /var/lib/meshwarden-agent --socket /run/meshwarden/agent.sock
  meshwarden agent --server 10.0.0.1:8443 --data-dir /var/lib/meshwarden-agent \\
      --socket /run/meshwarden/agent.sock --sds-socket /run/meshwarden/sds.sock
  meshwarden agent --server 10.0.0.1:8443 --data-dir /var/lib/meshwarden-agent \\
      --socket /run/meshwarden/agent.sock --enforce nftables"""

COMMAND = "meshwarden agent"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "agent",
        help="run the node agent (Workload API)",
        description="Attest this node with a join token (once; the node identity is kept in "
        "--data-dir), then serve SVIDs to local workloads on the Workload API socket.",
        epilog=EXAMPLES,
    )
    parser.add_argument(
        "--server",
        type=host_port_list,
        required=True,
        metavar="HOST:PORT[,...]",
        help="the control plane's node API (`meshwarden server --listen`); replicas: list "
        "each, comma-separated (failover needs no restart)",
    )
    token = parser.add_mutually_exclusive_group()
    token.add_argument(
        "--join-token-file",
        metavar="PATH",
        help="read the join token (needed until the node is attested) from PATH, "
        "or from stdin with '-'; it is spent once the server signs the node SVID, "
        "and the file can then be deleted",
    )
    token.add_argument(
        "--join-token",
        metavar="T",
        help="the join token on the command line: visible to every local user in "
        "`ps` while the agent runs; prefer --join-token-file",
    )
    parser.add_argument(
        "--server-bundle",
        type=Path,
        metavar="FILE",
        help="the control plane's trust bundle (`meshwarden ca bundle`), PEM or SPIFFE JSON: "
        "needed with the join token to attest; once attested, the agent trusts the bundle it "
        "keeps in --data-dir and this flag may be left out",
    )
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
        help="how often to fetch this node's workload entries; after a failure the agent "
        "retries sooner: 0.5 s, 1 s, 2 s, ... with jitter, capped at this interval",
    )
    parser.add_argument(
        "--health",
        type=loopback_host_port,
        metavar="HOST:PORT",
        help="serve GET /healthz here (identity ok | expiring | expired); port 0 picks one; "
        "default off",
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


def _join_token(args: argparse.Namespace) -> str | None:
    """The token from --join-token-file (a file, or '-' for stdin) or --join-token (warned
    about); InputError when the file cannot be read or holds no token."""
    if args.join_token is not None:
        print(
            f"{COMMAND}: warning: --join-token is visible to every local user in `ps`; use "
            "--join-token-file PATH (or - for stdin)",
            file=sys.stderr,
        )
        return str(args.join_token)
    if args.join_token_file is None:
        return None
    source = "stdin" if args.join_token_file == "-" else args.join_token_file
    try:
        if args.join_token_file == "-":
            text = sys.stdin.readline()
        else:
            text = Path(args.join_token_file).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--join-token-file {source}: {exc}") from None
    token = text.strip()
    if not token or any(c.isspace() for c in token):
        raise InputError(f"--join-token-file {source}: expected one join token on one line")
    return token


def _serve(args: argparse.Namespace) -> int:
    from meshwarden._log_format import timestamped_logs

    timestamped_logs()
    join_token = _join_token(args)  # an InputError is printed by the entry point, exit 2
    options = AgentOptions(
        server=args.server,
        data_dir=args.data_dir,
        socket=args.socket,
        server_bundle=args.server_bundle,
        join_token=join_token,
        sds_socket=args.sds_socket,
        sync_interval=args.sync_interval,
        enforce=args.enforce,
        health=args.health,
    )
    agent = NodeAgent(options, SystemClock())

    async def start() -> str:
        await agent.start()
        assert agent.agent.node is not None
        node = agent.agent.node.chain[0]
        from meshwarden.identities import spiffe_id_of

        health = (
            f", health http://{agent.health.host}:{agent.health.port}/healthz"
            if (agent.health)
            else ""
        )
        return f"node {spiffe_id_of(node)}, Workload API on {options.socket}{health}"

    return asyncio.run(serve_until_signalled(start, agent.run, agent.stop, COMMAND))
