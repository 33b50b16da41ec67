"""What the Istio translators share: the API versions, the root namespace, where a policy
applies (selector; targetRef is refused), and Istio's SPIFFE spelling of principals."""

from __future__ import annotations

from typing import Any

from meshwarden.importers._context import ROOT_NAMESPACE, ImportContext
from meshwarden.importers._fields import Fields
from meshwarden.importers._inventory import Pod
from meshwarden.importers._objects import KubeObject

VERSIONS = ("v1", "v1beta1")
ALL_ADDRESSES = ["0.0.0.0/0", "::/0"]


def supported(fields: Fields, kind: str) -> bool:
    """The version check every Istio translator starts with; also notes Istio's default."""
    obj = fields.obj
    if obj.version not in VERSIONS:
        fields.fail(
            ("apiVersion",),
            f"{kind} {obj.api_version} is not supported; use security.istio.io/v1 or v1beta1",
        )
        return False
    fields.known((), ("apiVersion", "kind", "metadata", "spec", "status"))
    return True


def istio_mesh_defaults(ctx: ImportContext) -> None:
    """Istio sidecars accept plaintext unless a PeerAuthentication says STRICT."""
    if "mtls" not in ctx.mesh:
        ctx.mesh["mtls"] = "PERMISSIVE"
        ctx.note(
            "Istio's default mTLS mode is PERMISSIVE: unless a mesh-wide "
            f"PeerAuthentication (in {ctx.options.istio_root_namespace}) says STRICT, the "
            "imported Mesh accepts "
            "plaintext peers too (only ipBlocks rules can match them)"
        )


def is_root(obj: KubeObject, ctx: ImportContext) -> bool:
    """Whether `obj` is in Istio's root namespace (`import --istio-root-namespace`)."""
    return obj.namespace == ctx.options.istio_root_namespace


def output_namespace(obj: KubeObject, ctx: ImportContext) -> str:
    """Where a translated policy goes: a policy in Istio's root namespace applies mesh-wide,
    so it goes to the Mesh's root namespace; any other stays in its namespace."""
    return ROOT_NAMESPACE if is_root(obj, ctx) else obj.namespace


def read_workload_selector(fields: Fields) -> dict[str, str] | None:
    """`spec.selector.matchLabels` ({} when there is no selector); None after an error.
    `targetRef`/`targetRefs` (gateways, waypoints) have no meaning for sidecars here."""
    for name in ("targetRef", "targetRefs"):
        if fields.obj.get("spec", name) is not None:
            fields.fail(
                ("spec", name),
                f"spec.{name} attaches the policy to a gateway or a "
                "waypoint; meshwarden enforces at sidecars: use spec.selector",
            )
            return None
    if fields.obj.get("spec", "selector") is None:
        return {}
    if fields.mapping("spec", "selector") is None:
        return None
    fields.known(("spec", "selector"), ("matchLabels",))
    labels = fields.mapping("spec", "selector", "matchLabels") or {}
    for key, value in labels.items():
        if not isinstance(value, str):
            fields.fail(("spec", "selector", "matchLabels", key), f"label {key!r} needs a string")
            return None
    return {str(k): v for k, v in labels.items()}


def selected_pods(ctx: ImportContext, obj: KubeObject, labels: dict[str, str]) -> list[Pod]:
    """The pods a policy applies to: its namespace's (every namespace's from the root)."""
    pods = ctx.inventory.pods if is_root(obj, ctx) else ctx.inventory.pods_in(obj.namespace)
    return [p for p in pods if all(p.labels.get(k) == v for k, v in labels.items())]


def selector_yaml(labels: dict[str, str]) -> dict[str, Any]:
    return {"selector": {"matchLabels": labels}} if labels else {}


def strings(fields: Fields, path: tuple[str | int, ...]) -> list[tuple[str, tuple[Any, ...]]]:
    """The string items of a list field with their paths; [] when absent or empty (an empty
    list is "not set" in Istio's API). A non-string item is an error at its position."""
    items = fields.sequence(*path) or []
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            out.append((item, (*path, i)))
        else:
            fields.fail((*path, i), f"{path[-1]} items must be strings")
    return out


def principal_patterns(ctx: ImportContext, value: str) -> list[str] | None:
    """An Istio principal (`<td>/ns/<ns>/sa/<sa>`, with one `*` as prefix, suffix or alone) as
    identity patterns; None when it has no SPIFFE spelling. A principal that names a service
    account the import split (exactly, or a `*suffix` its identity ends with) also names the
    pods' own identities, as in Istio every pod of that account proves the account's."""
    if value == "*":
        return [value]
    if value.startswith("*"):
        return [value, *_split_pods_ending_with(ctx, value[1:])]
    full = f"spiffe://{value}"
    if value.endswith("*"):
        return [full]
    parts = value.split("/")
    if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa":
        return [full] if value.count("/") >= 1 else None
    if (parts[2], parts[4]) in ctx.split:
        return [full, f"{full}/pod/*"]
    return [full]


def _split_pods_ending_with(ctx: ImportContext, suffix: str) -> list[str]:
    """The identities of pods whose service account was split and whose account identity
    ends with `suffix` (a `*suffix` principal matches them in Istio)."""
    return [
        ctx.identity(pod)
        for pod in ctx.inventory.pods
        if (pod.namespace, pod.service_account) in ctx.split
        and ctx.account_identity(pod).endswith(suffix)
    ]


def suffix_overreach(ctx: ImportContext, value: str) -> str | None:
    """Why a `*suffix` principal cannot be kept exactly: it would match the own identity of a
    split pod (`.../sa/SA/pod/NAME`) whose account identity it does not match, a peer Istio
    would never match; None when it can."""
    if not value.startswith("*") or value == "*":
        return None
    suffix = value[1:]
    wrong = sorted(
        pod.ref
        for pod in ctx.inventory.pods
        if (pod.namespace, pod.service_account) in ctx.split
        and ctx.identity(pod).endswith(suffix)
        and not ctx.account_identity(pod).endswith(suffix)
    )
    if not wrong:
        return None
    return (
        f"principal {value!r} would also match the identities the import gives pods "
        f"{', '.join(wrong)} (.../sa/SA/pod/NAME), which Istio would not match; "
        "write the principal up to its service account (e.g. '*/sa/NAME')"
    )


def service_account_patterns(ctx: ImportContext, value: str) -> list[str] | None:
    """A `serviceAccounts` entry (`<ns>/<sa>`) as identity patterns."""
    namespace, slash, account = value.partition("/")
    if not slash or not namespace or not account or "/" in account or "*" in value:
        return None
    return principal_patterns(ctx, f"{ctx.options.trust_domain}/ns/{namespace}/sa/{account}")


def namespace_exclusion(ctx: ImportContext, value: str) -> str | None:
    """`notNamespaces` entry as a notIdentities pattern, None for a `*suffix` pattern."""
    base = f"spiffe://{ctx.options.trust_domain}/ns/"
    if value == "*":
        return base + "*"
    if value.startswith("*"):
        return None
    return base + value if value.endswith("*") else f"{base}{value}/*"
