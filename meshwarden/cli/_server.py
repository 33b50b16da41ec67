"""`meshwarden server`: the control plane (CA + node API for agents)."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

from meshwarden._authz_workers import DEFAULT_WORKERS as DEFAULT_AUTHZ_WORKERS
from meshwarden._authz_workers import MAX_WORKERS as MAX_AUTHZ_WORKERS
from meshwarden._flow_file import problem as flow_file_problem
from meshwarden._flows import DEFAULT_SIZE as DEFAULT_FLOW_LOG_SIZE
from meshwarden._lifecycle import serve_until_signalled
from meshwarden._server import ControlPlane, ServerOptions
from meshwarden.cli import _observe as observe
from meshwarden.cli import _ui as ui
from meshwarden.cli._common import add_flow_log_arguments, fail
from meshwarden.cli._store import store_url
from meshwarden.cli._types import duration, host_port, loopback_host_port, split_host_port
from meshwarden.identities import SystemClock

EXAMPLES = """\
examples:
  meshwarden server /etc/meshwarden/policies --data-dir /var/lib/meshwarden
  meshwarden server policies/ --data-dir data/ --listen 10.0.0.1:8443 \\
      --xds-listen 10.0.0.1:8444 --otlp-endpoint http://127.0.0.1:4317"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "server",
        help="run the control plane (CA, node API, ADS)",
        description="Run the control plane: the CA of the mesh's trust domain, the node API "
        "that agents attest to (--listen), and ADS for Envoy sidecars with their access logs "
        "and ext_authz checks (--xds-listen; mTLS with their workload SVIDs). "
        "Policies are reloaded when files change; a broken change keeps the last good config. "
        "Prints a line starting with 'ready' once it serves.",
        epilog=EXAMPLES,
    )
    parser.add_argument(
        "policies",
        nargs="?",
        type=Path,
        metavar="DIR",
        help="the policy directory (watched; changes are reloaded), as for `meshwarden up DIR`",
    )
    # The spelling before policies were a positional DIR, kept for existing scripts.
    parser.add_argument("--policies", dest="policies_flag", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--data-dir",
        type=Path,
        required=True,
        metavar="DIR",
        help="CA keys, trust bundle and the admin socket (created 0700)",
    )
    parser.add_argument(
        "--listen",
        type=host_port,
        default="127.0.0.1:8443",
        metavar="HOST:PORT",
        help="the node API for agents: join-token attestation, node SVIDs, packet filter "
        "tables (TLS; a client certificate is optional, a join token stands in for one) "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--xds-listen",
        type=host_port,
        default="127.0.0.1:8444",
        metavar="HOST:PORT",
        help="ADS, access logs and ext_authz for Envoy sidecars (`meshwarden sidecar "
        "--server`); mTLS: a client without a workload SVID of the mesh's trust bundle fails "
        "the handshake (default %(default)s; port 0 picks one)",
    )
    parser.add_argument(
        "--ext-authz-listen",
        "--ext-authz-http-listen",  # its name before the front answered gRPC Check too
        dest="ext_authz_http_listen",
        type=host_port,
        metavar="HOST:PORT",
        help="the engine's ext_authz front, mTLS like --xds-listen: HTTP/1.1 for workloads "
        "with Mesh extAuthz.transport: http, and gRPC Check (ALPN h2) for the others; "
        "sidecars started with `meshwarden sidecar --ext-authz-port` ask it instead of the "
        "ADS connection, so their checks never wait behind a configuration push (default: "
        "off — then every gRPC Check goes over ADS, and workloads with transport http get no "
        "configuration)",
    )
    parser.add_argument(
        "--ext-authz-workers",
        type=int,
        default=DEFAULT_AUTHZ_WORKERS,
        metavar="N",
        help="processes serving --ext-authz-listen, each with the compiled policies, off "
        "the event loop that pushes configurations to the sidecars (a push to 1,000 sidecars "
        "holds that loop for about a second, and checks would wait behind it); 0 serves the "
        "front on that loop (default %(default)s, the best on 1-2 cores)",
    )
    parser.add_argument(
        "--health",
        type=loopback_host_port,
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="HTTP health endpoint (GET /healthz); port 0 picks one",
    )
    parser.add_argument(
        "--flow-log-size",
        type=int,
        default=DEFAULT_FLOW_LOG_SIZE,
        metavar="N",
        help="authorization decisions kept for `meshwarden flows` (oldest "
        "dropped first; default %(default)s)",
    )
    parser.add_argument(
        "--upstream-ca-cert",
        type=Path,
        metavar="FILE",
        help="sign the mesh CA with this upstream CA (PEM; with its key)",
    )
    parser.add_argument(
        "--upstream-ca-key", type=Path, metavar="FILE", help="the upstream CA's private key (PEM)"
    )
    parser.add_argument(
        "--svid-ttl",
        type=ttl,
        default=SVID_TTL,
        metavar="DURATION",
        help="lifetime of workload and node X509-SVIDs, renewed at half-life "
        "(default 1h; 5m to 7d); how long agents ride out a control-plane "
        "outage",
    )
    parser.add_argument(
        "--ca-ttl",
        type=ttl,
        default=CA_TTL,
        metavar="DURATION",
        help="lifetime of each CA certificate, rotated at half-life "
        "(default 24h; 1h to 3650d; at least 6 times --svid-ttl)",
    )
    parser.add_argument(
        "--new-ca",
        action="store_true",
        help="mint a new CA although the data dir shows one existed (its ca.json "
        "is missing, empty or corrupt; the old file is kept as ca.json.replaced). "
        "Every agent and sidecar then needs the new trust bundle",
    )
    add_flow_log_arguments(parser)
    parser.add_argument(
        "--store",
        type=store_url,
        metavar="URL",
        help="replicas: policies from the shared store etcd://HOST:PORT,... "
        "(written by `meshwarden apply`) instead of DIR; run any number of "
        "servers on one store",
    )
    parser.add_argument(
        "--kek-file",
        type=Path,
        metavar="FILE",
        help="with --store: the key-encryption key (base64 of 32 bytes, "
        "`openssl rand -base64 32`, mode 0600) the CA keys are encrypted with "
        "in the store; the same file on every replica, never in etcd",
    )
    parser.add_argument(
        "--replica-id",
        metavar="NAME",
        help="how `meshwarden status` and /healthz name this control plane "
        "(default: HOST:PORT of --listen, this machine's name for 0.0.0.0)",
    )
    observe.add_arguments(parser, sidecars=True)
    ui.add_arguments(parser)
    parser.set_defaults(func=run)


SVID_TTL, CA_TTL = dt.timedelta(hours=1), dt.timedelta(hours=24)
SVID_TTL_RANGE = (dt.timedelta(minutes=5), dt.timedelta(days=7))
CA_TTL_RANGE = (dt.timedelta(hours=1), dt.timedelta(days=3650))
CA_TO_SVID = 6  # a CA signs for its last sixth: SVIDs must fit in there


def ttl(text: str) -> dt.timedelta:
    """An argparse type: a duration (90s, 10m, 2h, 1d) as a timedelta."""
    return dt.timedelta(seconds=duration(text))


def _ttl_problem(svid_ttl: dt.timedelta, ca_ttl: dt.timedelta) -> str | None:
    for flag, value, (low, high) in (
        ("--svid-ttl", svid_ttl, SVID_TTL_RANGE),
        ("--ca-ttl", ca_ttl, CA_TTL_RANGE),
    ):
        if not low <= value <= high:
            return f"{flag} {value} is out of range ({low} to {high})"
    if svid_ttl * CA_TO_SVID > ca_ttl:
        return (
            f"--svid-ttl {svid_ttl} is too long for --ca-ttl {ca_ttl}: the CA lifetime must be "
            f"at least {CA_TO_SVID} times the SVID lifetime, so SVIDs outlive CA rotations"
        )
    return None


def _same_listener(first: str, second: str) -> bool:
    """Two HOST:PORT binds that would collide (port 0 picks a free port, so never)."""
    (host_a, port_a), (host_b, port_b) = split_host_port(first), split_host_port(second)
    wildcard = {"0.0.0.0", "::"}
    return port_a == port_b != 0 and (host_a == host_b or bool({host_a, host_b} & wildcard))


def run(args: argparse.Namespace) -> int:
    if args.policies and args.policies_flag and args.policies != args.policies_flag:
        return fail("give the policy directory once: meshwarden server DIR --data-dir DIR")
    args.policies = args.policies or args.policies_flag
    if args.policies is not None and args.store is not None:
        return fail("give the policy directory or --store, not both")
    if args.policies is None and args.store is None:
        return fail(
            "the policy directory is missing: meshwarden server DIR --data-dir DIR "
            "(or --store etcd://... for replicas)"
        )
    if args.store is not None and args.kek_file is None:
        return fail("--store needs --kek-file: the CA in the store is encrypted with it")
    if args.kek_file is not None and args.store is None:
        return fail("--kek-file goes with --store")
    problem = _ttl_problem(args.svid_ttl, args.ca_ttl)
    if problem:
        return fail(problem)
    if args.flow_log_size < 1:
        return fail("--flow-log-size must be at least 1")
    if _same_listener(args.listen, args.xds_listen):
        return fail(
            f"--xds-listen {args.xds_listen} is --listen's address: the sidecars' listener "
            "needs a port of its own (default 127.0.0.1:8444)"
        )
    taken = {"--listen": args.listen, "--xds-listen": args.xds_listen}
    for flag, address in taken.items():
        if args.ext_authz_http_listen and _same_listener(address, args.ext_authz_http_listen):
            return fail(
                f"--ext-authz-listen {args.ext_authz_http_listen} is {flag}'s address: the "
                "ext_authz front needs a port of its own"
            )
    if not 0 <= args.ext_authz_workers <= MAX_AUTHZ_WORKERS:
        return fail(f"--ext-authz-workers must be between 0 and {MAX_AUTHZ_WORKERS}")
    if bool(args.upstream_ca_cert) != bool(args.upstream_ca_key):
        return fail("--upstream-ca-cert and --upstream-ca-key go together")
    problem = flow_file_problem(args.flow_log_file)
    if problem:
        return fail(problem)
    args.console = ui.options(args)
    return observe.run(args, "meshwarden", lambda tracing: _serve(args, tracing))


def _authz_front(plane: ControlPlane) -> str:
    """`, ext_authz on HOST:PORT (N workers)` for the ready line, when the front is on."""
    port = plane.ext_authz_http_port
    if port is None or plane.options.ext_authz_http_listen is None:
        return ""
    host = plane.options.ext_authz_http_listen.rpartition(":")[0] or "127.0.0.1"
    workers = plane.options.ext_authz_workers
    where = f"{workers} worker{'s' if workers != 1 else ''}" if workers else "on the event loop"
    return f", ext_authz on {host}:{port} ({where})"


def _serve(args: argparse.Namespace, tracing: Any) -> int:
    from meshwarden._log_format import timestamped_logs

    timestamped_logs()
    options = ServerOptions(
        policies=args.policies,
        data_dir=args.data_dir,
        listen=args.listen,
        xds_listen=args.xds_listen,
        ext_authz_http_listen=args.ext_authz_http_listen,
        ext_authz_workers=args.ext_authz_workers,
        upstream_cert=args.upstream_ca_cert,
        upstream_key=args.upstream_ca_key,
        health=args.health,
        flow_log_size=args.flow_log_size,
        tracing=tracing,
        flow_log_sample=args.flow_log_sample,
        svid_ttl=args.svid_ttl,
        ca_ttl=args.ca_ttl,
        new_ca=args.new_ca,
        flow_log_file=args.flow_log_file,
        replica_id=args.replica_id,
        ui=args.console,
        store=args.store,
        kek_file=args.kek_file,
    )
    plane = ControlPlane(options, SystemClock())

    async def start() -> str:
        address = await plane.start()
        assert plane.ca is not None
        health = (
            f", health http://{plane.health.host}:{plane.health.port}/healthz"
            if (plane.health)
            else ""
        )
        console = f", console {plane.console.url}" if plane.console else ""
        domain = plane.ca.trust_domain
        return (
            f"node API on {address}, ADS on {plane.xds_address}, trust domain {domain}"
            f"{_authz_front(plane)}{health}{console}"
        )

    return asyncio.run(serve_until_signalled(start, plane.run, plane.stop, "meshwarden server"))
