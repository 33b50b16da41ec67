"""`meshwarden import FILE|DIR... -o OUTDIR`: Kubernetes objects as meshwarden documents."""

from __future__ import annotations

import argparse
import re
import sys
from typing import TYPE_CHECKING

from meshwarden.cli._common import EXIT_FAILED, EXIT_OK, InputError, fail

if TYPE_CHECKING:
    from meshwarden.importers import LocalRuntime

HELP = """\
Translate Kubernetes objects into meshwarden documents, keeping what the policies meant exactly
while enforcing them with SPIFFE identities.

Reads YAML or JSON files and directories (searched recursively for *.yaml, *.yml, *.json), one
object per document or a `kind: List` as `kubectl get -o yaml` prints:
  Namespace, Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet  -> Workload documents
  Service                                                          -> Service documents
  NetworkPolicy (networking.k8s.io/v1)                             -> AuthorizationPolicy
  AuthorizationPolicy (security.istio.io/v1, v1beta1)              -> AuthorizationPolicy
  PeerAuthentication (security.istio.io)                           -> mTLS modes (Mesh, Workload)
  RequestAuthentication (security.istio.io)                        -> JwtIssuer
Writes OUTDIR/mesh.yaml and one OUTDIR/NAMESPACE.yaml per namespace; each translated document is
preceded by `# from: FILE:LINE Kind ns/name`. The output is checked as `meshwarden check` would
before anything is written: on any error nothing is written.

Pods of one service account share one identity. When a policy tells such pods apart (a label
selector or an ipBlock picks some of them), each gets its own identity and a note on stderr says
so; --no-split-identities refuses instead. Anything that cannot be translated exactly is an
error at its FILE:LINE:COL, never dropped. See docs/kubernetes.md.

--runtime local makes the output runnable on this host with `meshwarden up OUTDIR`: each
workload gets a loopback address of its own, each port its sidecar serves a targetPort on
127.0.0.1 (where you run the app), and an upstream (a localPort on 127.0.0.1) to every Service
port; the policies, identities and pod port numbers stay as imported, so matrix answers alike.

examples:
  kubectl get ns,pods,deploy,sts,ds,svc,netpol -A -o yaml > cluster.yaml
  meshwarden import cluster.yaml -o mesh/ && meshwarden matrix mesh/ --port 8080
  meshwarden import manifests/ -o mesh/ --trust-domain prod.example.org --no-split-identities
  meshwarden import examples/kubernetes -o mesh/ --runtime local && meshwarden up mesh/

exit status: 0 written, 1 the input cannot be translated (errors printed as FILE:LINE:COL: error:
MESSAGE), 2 usage error (a path that does not exist, OUTDIR not writable)."""

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "import",
        help="translate Kubernetes objects, NetworkPolicies and Istio policies",
        description=HELP,
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="files or directories to read")
    parser.add_argument(
        "-o",
        "--output-dir",
        dest="outdir",
        required=True,
        metavar="OUTDIR",
        help="directory to write mesh.yaml and NAMESPACE.yaml into (created if missing)",
    )
    parser.add_argument(
        "--trust-domain",
        default="cluster.local",
        help="the mesh's trust domain, in every SPIFFE ID written",
    )
    parser.add_argument(
        "--runtime",
        choices=("kubernetes", "local"),
        default="kubernetes",
        help="kubernetes: keep the pods' addresses and ports as they are; local: make the "
        "mesh runnable on this host by `meshwarden up` (loopback addresses, targetPorts for "
        "the apps, upstreams to every Service; see docs/kubernetes.md) (default: %(default)s)",
    )
    parser.add_argument(
        "--local-network",
        default="127.10.0.0/16",
        metavar="CIDR",
        help="with --runtime local: the workloads' addresses, within 127.0.0.0/8 "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--local-first-port",
        type=int,
        default=20000,
        metavar="N",
        help="with --runtime local: the apps' targetPorts and the upstreams' localPorts on "
        "127.0.0.1 count up from N (default: %(default)s)",
    )
    parser.add_argument(
        "--istio-root-namespace",
        default="istio-system",
        metavar="NS",
        help="Istio's root namespace (its meshConfig.rootNamespace): AuthorizationPolicies, "
        "PeerAuthentications and RequestAuthentications there apply mesh-wide "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--no-split-identities",
        action="store_true",
        help="refuse (instead of giving pods distinct identities) when a policy tells apart "
        "pods that share a service account",
    )
    parser.set_defaults(func=run)


def _runtime(args: argparse.Namespace) -> LocalRuntime | None:
    from meshwarden.importers import LocalRuntime

    if args.runtime != "local":
        return None
    try:
        return LocalRuntime.parse(args.local_network, args.local_first_port)
    except ValueError as exc:
        raise InputError(f"--runtime local: {exc}") from None


def run(args: argparse.Namespace) -> int:
    from meshwarden.engine import SpiffeIdError, TrustDomain, UsageError
    from meshwarden.importers import ImportOptions, import_paths, write_files

    try:
        trust_domain = str(TrustDomain.parse(args.trust_domain))
    except (SpiffeIdError, ValueError) as exc:
        return fail(f"--trust-domain {args.trust_domain!r}: {exc}")
    root = args.istio_root_namespace
    if not _DNS_LABEL.fullmatch(root):
        return fail(f"--istio-root-namespace {root!r} is not a namespace name (a DNS label)")
    options = ImportOptions(
        trust_domain,
        split_identities=not args.no_split_identities,
        istio_root_namespace=root,
        runtime=_runtime(args),
    )
    try:
        result = import_paths(args.paths, args.outdir, options)
    except UsageError as exc:
        return fail(str(exc))
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    for problem in result.problems:
        print(problem)
    if not result.ok:
        count = len(result.problems)
        print(f"{count} error(s); nothing written to {args.outdir}", file=sys.stderr)
        return EXIT_FAILED
    try:
        write_files(args.outdir, result.files)
    except OSError as exc:
        raise InputError(f"-o {args.outdir}: {exc.strerror or exc}") from None
    names = ", ".join(f.name for f in result.files)
    summary = f"{result.objects} object(s) from {len(result.inputs)} file(s)"
    print(f"{summary} -> {args.outdir}: {names}", file=sys.stderr)
    return EXIT_OK
