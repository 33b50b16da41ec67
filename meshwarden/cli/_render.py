"""`meshwarden render FORMAT PATH... --node NAME`: a node's packet filter or cloud edge rules."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from meshwarden.cli._common import (
    EXIT_OK,
    CommandFailed,
    InputError,
    add_output_format,
    load_or_raise,
    write_atomically,
)
from meshwarden.cli._types import interface_name, iptables_chain
from meshwarden.engine import CompiledMesh
from meshwarden.render import (
    DEFAULT_CHAIN,
    IptablesOptions,
    NodeEgress,
    NodeFilter,
    node_filter,
    render_aws_security_group,
    render_gcp_firewall,
    render_iptables,
    render_nftables,
)

FORMATS = ("nftables", "iptables", "aws-security-group", "gcp-firewall")
HELP = """\
Render the packet filter of one node from the same policy files the mesh runs on.

The node carries the workloads pinned to it (a `node:NAME` selector) and the Host document whose
nodeName (default: its name) is NAME, if there is one (none is needed). Rendered per node:
sidecar ports open to whoever the policies could allow (narrowed to the IP-fallback ranges when
only ipBlocks rules allow the port), the workloads' app ports reachable from loopback only, the
Host's rules, and everything else of the Host closed. Traffic to ports the mesh does not own is
never dropped unless a Host closes them. Outbound (nftables output/forward chains, iptables
MESHWARDEN-OUT or DOCKER-USER): each workload's egress policies for what no sidecar carries,
keyed on its unix:uid selector (or its address when routed through the node), decided as
`explain --from-workload W --to-ip IP` decides; the Host's own traffic only under
defaultEgress: deny; nobody on the node reaches another workload's app port directly.

formats:
  nftables            one `table inet meshwarden`, replaced atomically by `nft -f FILE`
  iptables            `iptables-restore --noflush` input for one chain (default MESHWARDEN;
                      --chain DOCKER-USER for Docker hosts: rules on the container-facing
                      --interface, original destination ports, Docker's own chains untouched)
  aws-security-group  {"IpPermissions": [...]} for `aws ec2 authorize-security-group-ingress
                      --group-id sg-... --cli-input-json file://FILE` (--egress: for
                      authorize-security-group-egress)
  gcp-firewall        a list of compute.firewalls.insert bodies targeting the tag NAME

examples:
  meshwarden render nftables examples/seed --node web-1 --output-file web-1.nft && nft -f web-1.nft
  meshwarden render nftables policies/ --node web-1 --dry-run
  meshwarden render iptables examples/seed --node docker-1 --chain DOCKER-USER \
      | iptables-restore --noflush
  meshwarden render aws-security-group examples/seed --host web-1 --output-file perms.json

Same input, same bytes. exit status: 0 rendered, 1 invalid policies (errors printed as
FILE:LINE:COL: error: ...), 2 usage error (unknown node, unreadable path, nft missing)."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "render",
        help="render a node's nftables/iptables filter or cloud firewall rules",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("format", choices=FORMATS, help="what to render (see above)")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="policy files or directories")
    parser.add_argument(
        "--node",
        "--host",
        dest="node",
        required=True,
        metavar="NAME",
        help="the node (Host nodeName, or NAME of workloads' node:NAME)",
    )
    parser.add_argument(
        "--chain",
        default=DEFAULT_CHAIN,
        type=iptables_chain,
        help="iptables chain to fill (default %(default)s; DOCKER-USER for Docker)",
    )
    parser.add_argument(
        "--interface",
        default="docker0",
        type=interface_name,
        help="container-facing interface for --chain DOCKER-USER (default %(default)s)",
    )
    parser.add_argument(
        "--ipv6", action="store_true", help="iptables: render for ip6tables-restore"
    )
    parser.add_argument(
        "--egress",
        action="store_true",
        help="aws-security-group: the outbound permissions (for authorize-security-group-"
        "egress; every address unless the Host has defaultEgress: deny) instead of the inbound",
    )
    parser.add_argument(
        "--network",
        default="global/networks/default",
        help="gcp-firewall: the VPC network (default %(default)s)",
    )
    parser.add_argument(
        "--output-file",
        metavar="FILE",
        help="write to FILE (atomically) instead of standard output",
    )
    add_output_format(
        parser,
        help="text: the rendered file itself (default); json: one object with "
        "the node, the mesh version, the port rules and the rendering",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="nftables: print the diff against the table loaded now (needs nft "
        "and root) instead of the table",
    )
    parser.set_defaults(func=run)


def _error(message: str) -> NoReturn:
    """A usage or input error: one line, or `{"error": ...}` under -o json (exit 2)."""
    raise InputError(message)


def run(args: argparse.Namespace) -> int:
    result = load_or_raise(args.paths)
    if result.compiled is None:
        if args.output != "json":
            for diagnostic in result.errors:
                print(diagnostic, file=sys.stderr)
        raise CommandFailed(
            f"the policies have {len(result.errors)} error(s); nothing rendered",
            diagnostics=[d.to_json() for d in result.errors],
        )
    problem = _unknown_node(result.compiled, args.node)
    if problem:
        return _error(problem)
    nf = node_filter(result.compiled, args.node)
    if args.dry_run:
        return _dry_run(args, nf)
    rendered = RENDERERS[args.format](nf, args)
    text = rendered if isinstance(rendered, str) else json.dumps(rendered, indent=2) + "\n"
    if args.output == "json":
        text = json.dumps(_as_json(args.format, nf, rendered), indent=2) + "\n"
    if args.output_file:
        try:
            write_atomically(Path(args.output_file), text)
        except OSError as exc:
            return _error(f"cannot write {args.output_file}: {exc.strerror or exc}")
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _unknown_node(mesh: CompiledMesh, node: str) -> str | None:
    registry = mesh.registry
    if node in registry.hosts or registry.on_node(node):
        return None
    known = sorted(registry.hosts) + sorted(
        {
            s.removeprefix("node:")
            for w in registry.workloads.values()
            for s in w.selectors
            if s.startswith("node:")
        }
    )
    names = ", ".join(sorted(set(known))) or "none"
    return (
        f"node {node!r} has no Host document and no workload pinned to it "
        f"(node:{node} selector); known nodes: {names}"
    )


def _dry_run(args: argparse.Namespace, nf: NodeFilter) -> int:
    if args.format != "nftables":
        return _error("--dry-run compares with the loaded nftables table: use it with nftables")
    from meshwarden._enforce import EnforceError, table_diff

    try:
        diff = table_diff(render_nftables(nf))
    except EnforceError as exc:
        return _error(f"cannot compare with the loaded table: {exc}")
    sys.stdout.write(diff or f"no change: the loaded table matches node {nf.node}'s policy\n")
    return EXIT_OK


def _iptables(nf: NodeFilter, args: argparse.Namespace) -> str:
    return render_iptables(nf, IptablesOptions(args.chain, args.ipv6, args.interface))


RENDERERS: dict[str, Callable[[NodeFilter, argparse.Namespace], Any]] = {
    "nftables": lambda nf, _: render_nftables(nf),
    "iptables": _iptables,
    "aws-security-group": lambda nf, args: render_aws_security_group(nf, args.egress),
    "gcp-firewall": lambda nf, args: render_gcp_firewall(nf, args.network),
}


def _as_json(fmt: str, nf: NodeFilter, rendered: Any) -> dict[str, Any]:
    return {
        "node": nf.node,
        "version": nf.version,
        "format": fmt,
        "ports": [
            {
                "protocol": r.protocol,
                "ports": r.ports,
                "sources": "loopback" if not r.sources else [str(n) for n in r.sources],
                "origins": list(r.origins),
            }
            for r in nf.ports
        ],
        "closed": [str(n) for n in nf.closed],
        "egress": _egress_json(nf),
        "rendered": rendered,
    }


def _egress_json(nf: NodeFilter) -> dict[str, Any]:
    egress = nf.egress
    senders = [*egress.sources, *([egress.host] if egress.host is not None else [])]
    return {
        "uids": {str(uid): _sender(egress, i) for uid, i in egress.uids},
        "addresses": {str(a): _sender(egress, i) for a, i in egress.addresses},
        "senders": [
            {
                "name": s.name,
                "allowed": [
                    {"to": e.destination, "protocol": e.protocol, "ports": e.ports}
                    for e in s.allowed
                ],
            }
            for s in senders
        ],
        "bypassRefused": [f"{a}:{port}" for a, port in egress.bypass],
        "notHeldBack": list(egress.unkeyed),
    }


def _sender(egress: NodeEgress, index: int | None) -> str | None:
    return None if index is None else egress.sources[index].name
