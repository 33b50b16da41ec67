"""What a translator works with: the options, the inventory, and where its output goes."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from meshwarden.engine import Diagnostic, Location
from meshwarden.importers._inventory import Inventory, Pod
from meshwarden.importers._local_runtime import LocalRuntime
from meshwarden.importers._objects import KubeObject, error

API_VERSION = "meshwarden.io/v1alpha1"
ROOT_NAMESPACE = "meshwarden-system"  # the Mesh's default rootNamespace


@dataclass(frozen=True, slots=True)
class ImportOptions:
    """How to import: the mesh's trust domain, whether pods that share a service account but
    that a policy tells apart may get distinct identities (else the import refuses), and the
    namespace Istio's policies apply mesh-wide from (its meshConfig.rootNamespace)."""

    trust_domain: str = "cluster.local"
    split_identities: bool = True
    istio_root_namespace: str = "istio-system"  # Istio's meshConfig.rootNamespace
    runtime: LocalRuntime | None = None  # `--runtime local`: where workloads run on this host


@dataclass(frozen=True, slots=True)
class Emitted:
    """One meshwarden document to write, in the file of `namespace`, after a `# from:` comment."""

    namespace: str
    document: dict[str, Any]
    origin: str
    where: Location | None = None  # the object's metadata.name in the input


@dataclass(frozen=True, slots=True)
class Selection:
    """Pods a policy names as peers (by labels or by address): an identity must not reach
    further than these pods."""

    pods: frozenset[str]
    where: Location
    what: str


@dataclass(slots=True)
class ImportContext:
    """The state of one import, shared by the translators.

    A translator reads `inventory`, records the pods it names as peers with `select` (so that
    identities are split where a selector tells apart pods of one service account), writes
    documents with `emit`, problems with `error` and remarks for stderr with `note`; it may set
    fields of the Mesh (`mesh`, the spec written to mesh.yaml)."""

    options: ImportOptions
    inventory: Inventory
    problems: list[Diagnostic] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    mesh: dict[str, Any] = field(default_factory=dict)
    documents: list[Emitted] = field(default_factory=list)
    selections: list[Selection] = field(default_factory=list)
    split: frozenset[tuple[str, str]] = frozenset()
    # mTLS settings of single workloads (Istio PeerAuthentication): pod ref ->
    # {"mtls": mode (optional), "ports": {port: mode}}
    workload_mtls: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Istio: rules that need a verified token (where, the pods they apply to), and the pods a
    # RequestAuthentication selects; see `_istio_authz.unverifiable_tokens`
    token_rules: list[tuple[Location, frozenset[str]]] = field(default_factory=list)
    token_pods: set[str] = field(default_factory=set)
    # labels the import adds to workloads (pod ref -> labels), e.g. POD_LABEL for a policy
    # split by named ports; see `_netpol_named`
    added_labels: dict[str, dict[str, str]] = field(default_factory=dict)

    def emit(self, obj: KubeObject | None, document: dict[str, Any]) -> None:
        """Add a meshwarden document (apiVersion is filled in) translated from `obj`."""
        metadata = document.get("metadata", {})
        namespace = str(metadata.get("namespace", "default"))
        full = {"apiVersion": API_VERSION, **document}
        where = obj.at("metadata", "name") if obj else None
        self.documents.append(Emitted(namespace, full, obj.origin if obj else "", where))

    def error(self, location: Location, message: str) -> None:
        self.problems.append(error(location, message))

    def note(self, message: str) -> None:
        self.notes.append(message)

    def select(self, pods: Iterable[Pod], where: Location, what: str) -> list[Pod]:
        chosen = list(pods)
        self.selections.append(Selection(frozenset(p.ref for p in chosen), where, what))
        return chosen

    def account_identity(self, pod: Pod) -> str:
        """The SPIFFE ID every pod of `pod`'s service account proves in Kubernetes and Istio."""
        return f"spiffe://{self.options.trust_domain}/ns/{pod.namespace}/sa/{pod.service_account}"

    def identity(self, pod: Pod) -> str:
        """The SPIFFE ID the imported workload of `pod` will have."""
        base = self.account_identity(pod)
        if (pod.namespace, pod.service_account) in self.split:
            return f"{base}/pod/{pod.name}"
        return base


Translator = Callable[[KubeObject, ImportContext], None]
"""Translates one object of a kind it is registered for (see the package docstring)."""
