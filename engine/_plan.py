"""The compiled authorization plan of one destination workload, indexed by peer."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from meshwarden.engine._diagnostics import Location
from meshwarden.engine._documents import Document
from meshwarden.engine._model import JwtIssuerSpec, MeshSpec
from meshwarden.engine._modes import monitored
from meshwarden.engine._mtls import MtlsSetting, mtls_setting
from meshwarden.engine._narrowing import Narrowed, narrowed
from meshwarden.engine._outcome import Outcome
from meshwarden.engine._patterns import AddressIndex, IpAddress
from meshwarden.engine._registry import Workload
from meshwarden.engine._request import Request
from meshwarden.engine._rules import CompiledRule, CompiledSource
from meshwarden.engine._spiffe import namespace_of
from meshwarden.engine._vocabulary import Action, Mode, Peers

if TYPE_CHECKING:
    from meshwarden.engine._egress import DestinationIndex, EgressPolicy

Entry = tuple[int, CompiledRule]
_MISSING = object()
MEMO_LIMIT = 4096  # distinct peers remembered per index; the memo restarts when full
RESULT_LIMIT = 4096  # remembered (peer, path, host) results per index; the memo restarts too
PATH_LIMIT = 256  # longer paths (and hosts) are decided afresh every time, never remembered
R = TypeVar("R")


@dataclass(slots=True, eq=False)
class _Candidates:
    """The narrowed rules of one (peer, port, method, protocol) key and, when what is left of
    them checks nothing but the path and the host (`by_path`), what each reducer made of the
    rules that matched, per (reducer, path, host): the per-path table."""

    rules: tuple[Narrowed, ...]
    by_path: bool
    results: dict[tuple[object, str | None, str | None], Any] = field(default_factory=dict)

    @classmethod
    def of(cls, rules: tuple[Narrowed, ...]) -> _Candidates:
        return cls(rules, all(rest is None or _path_and_host_only(rest) for _, rest in rules))


def _long(value: str | None) -> bool:
    return value is not None and len(value) > PATH_LIMIT


def _path_and_host_only(rule: CompiledRule) -> bool:
    """Whether matching what is left of a narrowed rule reads nothing but the request's path
    and host (no peer field, no condition, no header or JWT)."""
    return (
        not rule.sources
        and not rule.conditions
        and all(
            what in ("path", "host")
            for op in rule.operations or ()
            for what, _, _ in op.http_checks
        )
    )


class PolicyFacts:
    """What ingress and egress policies share: their name, mode and source document."""

    __slots__ = ()
    namespace: str
    name: str
    mode: Mode
    document: Document[Any]

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def dry_run(self) -> bool:
        return self.mode == Mode.DRY_RUN

    @property
    def location(self) -> Location:
        return self.document.at("metadata", "name")


@dataclass(frozen=True, slots=True, eq=False)
class CompiledPolicy(PolicyFacts):
    """An AuthorizationPolicy with its rules compiled and its target workloads resolved."""

    namespace: str
    name: str
    action: Action
    mode: Mode
    rules: tuple[CompiledRule, ...]
    targets: frozenset[str]
    document: Document[Any]

    def first_match(self, req: Request) -> CompiledRule | None:
        for rule in self.rules:
            if rule.matches(req):
                return rule
        return None


@dataclass(slots=True)
class RuleIndex:
    """Rules keyed by what a peer must be for them to possibly match.

    A lookup costs a few hash probes (exact identity, namespace, one per distinct wildcard
    length, one per distinct CIDR length), so it does not grow with the number of rules; only
    the few candidates found are evaluated in full.
    """

    exact: dict[str, list[Entry]] = field(default_factory=lambda: defaultdict(list))
    namespace: dict[str, list[Entry]] = field(default_factory=lambda: defaultdict(list))
    prefix: dict[str, list[Entry]] = field(default_factory=lambda: defaultdict(list))
    suffix: dict[str, list[Entry]] = field(default_factory=lambda: defaultdict(list))
    prefix_lengths: set[int] = field(default_factory=set)
    suffix_lengths: set[int] = field(default_factory=set)
    any_identity: list[Entry] = field(default_factory=list)
    plaintext: AddressIndex[Entry] = field(default_factory=AddressIndex)
    any_plaintext: list[Entry] = field(default_factory=list)
    any_peer: list[Entry] = field(default_factory=list)
    size: int = 0
    _memo: dict[object, _Candidates] = field(default_factory=dict, repr=False)
    _results: int = field(default=0, repr=False)

    def add(self, rule: CompiledRule) -> None:
        entry = (self.size, rule)
        self.size += 1
        if not rule.sources:
            self.any_peer.append(entry)
            return
        for source in rule.sources:
            self._add_source(source, entry)

    def _add_source(self, source: CompiledSource, entry: Entry) -> None:
        if source.peers is Peers.NONE:
            return  # can never match: reported by `check`
        if source.peers is Peers.IDENTIFIED:
            self._add_identity(source, entry)
        elif source.ip_blocks is not None:
            for network in source.ip_blocks:
                self.plaintext.add(network, entry)
        elif source.peers is Peers.PLAINTEXT:
            self.any_plaintext.append(entry)
        else:
            self.any_peer.append(entry)

    def _add_identity(self, source: CompiledSource, entry: Entry) -> None:
        ids, namespaces = source.identities, source.namespaces
        if source.workloads is not None:
            for identity in source.workloads:
                self.exact[identity].append(entry)
        elif ids is not None and not ids.anything:
            for identity in ids.exact:
                self.exact[identity].append(entry)
            for prefix in ids.prefixes:
                self.prefix[prefix].append(entry)
                self.prefix_lengths.add(len(prefix))
            for suffix in ids.suffixes:
                self.suffix[suffix].append(entry)
                self.suffix_lengths.add(len(suffix))
        elif (
            ids is None
            and namespaces is not None
            and not (namespaces.anything or namespaces.prefixes or namespaces.suffixes)
        ):
            for namespace in namespaces.exact:
                self.namespace[namespace].append(entry)
        else:
            self.any_identity.append(entry)

    def candidates(self, req: Request) -> tuple[CompiledRule, ...]:
        """Rules that may match `req`, in policy order, each once."""
        return tuple(rule for rule, _ in self._narrowed(req).rules)

    def matching(self, req: Request) -> Iterator[CompiledRule]:
        """The rules that match `req`, in policy order."""
        return self._matching(self._narrowed(req), req)

    def reduce(
        self, req: Request, reducer: Callable[[Any, Iterator[CompiledRule]], R], plan: Any
    ) -> R:
        """`reducer(plan, matching rules)`, remembered per (peer, port, method, protocol, path,
        host) when that is all the result can depend on. One index belongs to one plan, and a
        reducer reads only the rules it is given and the plan, so a remembered result is the
        one it would make again."""
        found = self._narrowed(req)
        if not found.by_path or _long(req.path) or _long(req.host):
            return reducer(plan, self._matching(found, req))
        key = (reducer, req.path, req.host)
        result = found.results.get(key, _MISSING)
        if result is _MISSING:
            result = reducer(plan, self._matching(found, req))
            if self._results >= RESULT_LIMIT:
                self._memo.clear()
                self._results = 0
            found.results[key] = result
            self._results += 1
        return result  # type: ignore[no-any-return]

    @staticmethod
    def _matching(found: _Candidates, req: Request) -> Iterator[CompiledRule]:
        for rule, rest in found.rules:
            if rest is None or rest.matches(req):
                yield rule

    def _narrowed(self, req: Request) -> _Candidates:
        """The rules the peer, the destination port, the method and the protocol leave, each
        narrowed to what is left to check (`_narrowing`); remembered per (identity or address,
        port, method, protocol) after the first lookup."""
        peer: object = req.identity if req.identity is not None else req.source_ip
        key = (peer, req.identity_namespace, req.port, req.method, req.protocol)
        found = self._memo.get(key)
        if found is None:
            if len(self._memo) >= MEMO_LIMIT:
                self._memo.clear()
                self._results = 0
            peer_rules = self.for_peer(req.identity, req.source_ip)
            found = _Candidates.of(
                tuple(n for r in peer_rules if (n := narrowed(r, req)) is not None)
            )
            self._memo[key] = found
        return found

    def for_peer(
        self, identity: str | None, source_ip: IpAddress | None = None
    ) -> tuple[CompiledRule, ...]:
        """Every rule a peer (an identity, or a plaintext address) may match, in policy order,
        whatever the request: what an identity's entry of an exact-match map must hold."""
        found: dict[int, CompiledRule] = {}
        if identity is not None:
            lists = [self.exact.get(identity, ()), self.any_identity]
            namespace = namespace_of(identity)
            if namespace is not None and self.namespace:
                lists.append(self.namespace.get(namespace, ()))
            lists.extend(self.prefix.get(identity[:n], ()) for n in self.prefix_lengths)
            lists.extend(self.suffix.get(identity[-n:], ()) for n in self.suffix_lengths)
        else:
            lists = [self.any_plaintext]
            if source_ip is not None and self.plaintext:
                lists.append(list(self.plaintext.lookup(source_ip)))
        lists.append(self.any_peer)
        for entries in lists:
            for seq, rule in entries:
                found[seq] = rule
        return tuple(found[seq] for seq in sorted(found))

    def identity_keys(self) -> list[str]:
        """The exact SPIFFE IDs rules are keyed by (for an exact-match map)."""
        return sorted(self.exact)

    def unkeyed_identity_rules(self) -> list[CompiledRule]:
        """Rules an identity outside `identity_keys` may match, in order."""
        entries = [
            e
            for lists in (self.namespace, self.prefix, self.suffix)
            for es in lists.values()
            for e in es
        ]
        return _ordered([*entries, *self.any_identity, *self.any_peer])

    def plaintext_rules(self) -> list[CompiledRule]:
        """Rules a peer without identity may match, in order."""
        return _ordered([*self.plaintext.values(), *self.any_plaintext, *self.any_peer])

    def first_match(self, req: Request) -> CompiledRule | None:
        return next(self.matching(req), None)


def _ordered(entries: list[Entry]) -> list[CompiledRule]:
    return [
        rule
        for _, rule in sorted(
            {seq: (seq, rule) for seq, rule in entries}.values(), key=lambda e: e[0]
        )
    ]


@dataclass(frozen=True, slots=True, eq=False)
class AuthorizationPlan:
    """Everything needed to decide any request to one workload; consumed by the evaluator and
    by the xDS translator alike."""

    workload: Workload
    mesh: MeshSpec
    policies: tuple[CompiledPolicy, ...]
    jwt_issuers: tuple[Document[JwtIssuerSpec], ...]
    deny: RuleIndex
    allow: RuleIndex
    audit: RuleIndex
    has_allow: bool
    dry_run: tuple[CompiledPolicy, ...]
    dry_run_index: RuleIndex
    dry_run_unmatched: tuple[Outcome, ...]  # the dry-run outcomes when no dry-run rule matches
    dry_run_outcomes: tuple[DryRunOutcomes, ...]  # per dry-run policy, in policy order

    @property
    def enforcement(self) -> str:
        return self.workload.spec.enforcement or self.mesh.enforcement

    def mtls(self, port: int) -> MtlsSetting:
        """The mTLS mode in force on `port` (most specific setting first)."""
        return mtls_setting(self.mesh, self.workload, port)


DryRunOutcomes = tuple[str, Outcome | None, dict[int, Outcome]]
"""A dry-run policy's ref, its outcome when none of its rules matches (None: it adds none),
and its outcome when rule N is the first of its rules that matches."""


def dry_run_outcomes(
    policies: Sequence[CompiledPolicy | EgressPolicy],
) -> tuple[DryRunOutcomes, ...]:
    """Every outcome a dry-run policy can add to a decision, made once per plan."""
    found = []
    for policy in policies:
        if not policy.dry_run:
            continue
        when_matched = (
            policy.action if policy.action in (Action.ALLOW, Action.DENY) else Action.AUDIT
        )
        outcomes = {r.index: Outcome(policy.ref, when_matched, r.index) for r in policy.rules}
        otherwise = {Action.ALLOW: Action.DENY, Action.DENY: Action.ALLOW}.get(policy.action)
        none = Outcome(policy.ref, otherwise, None) if otherwise is not None else None
        found.append((policy.ref, none, outcomes))
    return tuple(found)


def unmatched(policies: Sequence[CompiledPolicy | EgressPolicy]) -> tuple[Outcome, ...]:
    unmatched = {Action.ALLOW: Action.DENY, Action.DENY: Action.ALLOW}
    return tuple(
        Outcome(p.ref, unmatched[p.action], None)
        for p in policies
        if p.dry_run and p.action in unmatched
    )


IndexT = TypeVar("IndexT", "RuleIndex", "DestinationIndex")


def index_policies(
    ordered: Sequence[CompiledPolicy] | Sequence[EgressPolicy], new_index: Callable[[], IndexT]
) -> tuple[dict[Action, IndexT], IndexT, bool]:
    """The rules of `ordered` policies in one index per action and one for the dry-run ones,
    and whether an enforced ALLOW policy is among them."""
    indexes = {action: new_index() for action in Action}
    dry_run_index = new_index()
    for policy in ordered:
        index = dry_run_index if policy.dry_run else indexes[policy.action]
        for rule in policy.rules:
            index.add(rule)  # type: ignore[arg-type]
    has_allow = any(p.action == Action.ALLOW and not p.dry_run for p in ordered)
    return indexes, dry_run_index, has_allow


def build_plan(
    workload: Workload,
    mesh: MeshSpec,
    policies: list[CompiledPolicy],
    jwt_issuers: list[Document[JwtIssuerSpec]],
) -> AuthorizationPlan:
    mesh, policies = monitored(mesh, workload.namespace, policies)
    ordered = sorted(policies, key=lambda p: (p.namespace, p.name))
    indexes, dry_run_index, has_allow = index_policies(ordered, RuleIndex)
    issuers = sorted(jwt_issuers, key=lambda d: (d.metadata.namespace, d.metadata.name))
    return AuthorizationPlan(
        workload,
        mesh,
        tuple(ordered),
        tuple(issuers),
        indexes[Action.DENY],
        indexes[Action.ALLOW],
        indexes[Action.AUDIT],
        has_allow,
        tuple(p for p in ordered if p.dry_run),
        dry_run_index,
        unmatched(ordered),
        dry_run_outcomes(ordered),
    )
