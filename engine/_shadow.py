"""Shadowed rules: a rule every request of which an earlier rule of the same action already
matches (or a DENY rule denies first), found without comparing rules pairwise.

`covers(a, b)` decides. To avoid calling it for every pair, the rules applying to one workload
are indexed along three independent dimensions, each giving a superset of the rules that could
cover a given rule (a necessary condition of `covers`):

- source: rules without `from`; sources without an identity field; sources keyed by one exact
  identity / namespace / workload (a source covers another only if it contains that one's
  smallest exact value), or kept aside when they use wildcards;
- operation: the same with paths, hosts, methods, single ports;
- conditions: rules without `when`, and rules keyed by their first condition (a rule covers
  another only if all its conditions are among the other's).

The smallest of the three candidate lists is walked in rule order until the first rule that
covers, exactly as a pairwise scan in rule order would find it.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import product
from typing import Any

from meshwarden.engine._patterns import IpNetwork, Patterns
from meshwarden.engine._plan import CompiledPolicy
from meshwarden.engine._rules import CompiledOperation, CompiledRule, CompiledSource
from meshwarden.engine._spiffe import namespace_of

Rank = tuple[int, int]
Entry = tuple[Rank, CompiledRule, CompiledPolicy]
Key = tuple[str, str, object]

SOURCE_FIELDS = ("identities", "namespaces")
OPERATION_FIELDS = ("paths", "hosts", "methods")


EVERY: Key = ("*", "*", "")  # stored: a candidate for every query; queried: always
MAX_KEYS_PER_RULE = 64
_NARROW = frozenset({"exact", "any"})


@dataclass(slots=True)
class _Keys:
    """The keys of one dimension (source, operation or conditions) across the whole group,
    and the lengths of the prefix / suffix keys, so a query probes only those that exist."""

    known: set[Key] = field(default_factory=set)
    lengths: dict[tuple[str, str], set[int]] = field(default_factory=lambda: defaultdict(set))

    def note(self, keys: list[Key]) -> None:
        for key in keys:
            self.known.add(key)
            if key[1] in ("prefix", "suffix"):
                self.lengths[(key[0], key[1])].add(len(str(key[2])))

    def existing(self, keys: list[Key]) -> list[Key]:
        return [k for k in dict.fromkeys(keys) if k in self.known]

    def patterns_query(self, name: str, wanted: Patterns) -> list[Key] | None:
        """Keys of entries whose `name` patterns may cover `wanted`: '*', the first exact value,
        prefixes / suffixes of it or of the first prefix / suffix. None: cannot narrow."""
        keys: list[Key] = [(name, "any", "")]
        if wanted.anything:
            return keys
        if wanted.prefixes:
            return keys + self._affixes(name, "prefix", wanted.prefixes[0])
        if wanted.suffixes:
            return keys + self._affixes(name, "suffix", wanted.suffixes[0])
        if not wanted.exact:
            return None  # an empty set is covered by any
        value = min(wanted.exact)
        affixes = self._affixes(name, "prefix", value) + self._affixes(name, "suffix", value)
        return [*keys, (name, "exact", value), *affixes]

    def _affixes(self, name: str, kind: str, value: str) -> list[Key]:
        sizes = self.lengths.get((name, kind), ())
        if kind == "prefix":
            return [(name, kind, value[:n]) for n in sizes if n <= len(value)]
        return [(name, kind, value[len(value) - n :]) for n in sizes if n <= len(value)]


def _fields_query(dim: _Keys, part: object, fields: tuple[str, ...]) -> list[Key] | None:
    """The keys filed under `dim` for each pattern field `part` names; None when one of them
    can match nothing filed there (no earlier rule covers it)."""
    keys: list[Key] = []
    for name in fields:
        patterns: Patterns | None = getattr(part, name)
        if patterns is not None:
            found = dim.patterns_query(name, patterns)
            if found is None:
                return None
            keys += found
    return keys


def _pattern_keys(name: str, patterns: Patterns) -> list[Key]:
    keys: list[Key] = [(name, "exact", v) for v in patterns.exact]
    keys += [(name, "prefix", q) for q in patterns.prefixes]
    keys += [(name, "suffix", q) for q in patterns.suffixes]
    return [*keys, (name, "any", "")] if patterns.anything else keys


def _source_keys(source: CompiledSource) -> list[Key]:
    """Where a source is filed: by its first identity field; EVERY without one."""
    for name in SOURCE_FIELDS:
        patterns: Patterns | None = getattr(source, name)
        if patterns is not None:
            return _pattern_keys(name, patterns) or [(name, "empty", "")]
    if source.workloads is not None:
        return [("workloads", "exact", w) for w in source.workloads] or [("workloads", "empty", "")]
    return [EVERY]


def _operation_keys(op: CompiledOperation) -> list[Key]:
    for name in OPERATION_FIELDS:
        patterns: Patterns | None = getattr(op, name)
        if patterns is not None:
            return _pattern_keys(name, patterns) or [(name, "empty", "")]
    if op.ports is not None:
        ranges = op.ports.ranges
        if ranges and all(lo == hi for lo, hi in ranges):
            return [("ports", "exact", lo) for lo, _ in ranges]
        return [("ports", "any", "")]  # ranges (and the empty list) are kept together
    return [EVERY]


def _condition_key(condition: object) -> Key:
    return ("when", "exact", condition)


def _rule_keys(parts: tuple[object, ...] | None, keys_of: Any) -> list[Key]:
    """A rule is filed under the keys of all its sources (operations); EVERY when it has none
    or when one of them is EVERY (it may then cover anything in this dimension)."""
    keys = [k for part in parts or () for k in keys_of(part)]
    return [EVERY] if not keys or EVERY in keys else list(dict.fromkeys(keys))


class RivalIndex:
    """The enforced rules applying to one workload, in policy order, filed under a combined
    (source, operation, condition) key: a rule that may cover another shares one of the keys
    that other one queries in every dimension at once."""

    def __init__(self, policies: list[CompiledPolicy], order: dict[str, int]) -> None:
        self.buckets: dict[tuple[Key, Key, Key], list[Entry]] = defaultdict(list)
        self.dims = (_Keys(), _Keys(), _Keys())
        self.entries: list[Entry] = []
        for policy in sorted(policies, key=lambda p: order[p.ref]):
            for rule in policy.rules:
                self._add(((order[policy.ref], rule.index), rule, policy))

    def _add(self, entry: Entry) -> None:
        rule = entry[1]
        dims: list[list[Key]] = [
            _rule_keys(rule.sources, _source_keys),
            _rule_keys(rule.operations, _operation_keys),
            [_condition_key(rule.conditions[0])] if rule.conditions else [EVERY],
        ]
        while len(dims[0]) * len(dims[1]) * len(dims[2]) > MAX_KEYS_PER_RULE:
            widest = max(range(3), key=lambda d: len(dims[d]))
            dims[widest] = [EVERY]  # filed more widely: still found by every query it may cover
        for dim, keys in zip(self.dims, dims, strict=True):
            dim.note(keys)
        for combined in product(*dims):
            self.buckets[combined].append(entry)  # type: ignore[index]
        self.entries.append(entry)

    def _queries(self, rule: CompiledRule) -> tuple[list[Key], ...] | None:
        source_dim, op_dim, cond_dim = self.dims
        sources = self._source_query(rule)
        operations = self._operation_query(rule)
        if sources is None or operations is None:
            return None
        conditions = [_condition_key(c) for c in rule.conditions]
        return (
            [EVERY, *source_dim.existing(sources)],
            [EVERY, *op_dim.existing(operations)],
            [EVERY, *cond_dim.existing(conditions)],
        )

    def _source_query(self, rule: CompiledRule) -> list[Key] | None:
        if not rule.sources:
            return []  # only a rule without `from` (EVERY) covers any source
        source = rule.sources[0]
        keys = _fields_query(self.dims[0], source, SOURCE_FIELDS)
        if keys is None:
            return None
        if source.workloads is not None:
            if not source.workloads:
                return None
            keys.append(("workloads", "exact", min(source.workloads)))
        if source.namespaces is None:  # namespaces may cover exact identities (see covers)
            found = self._namespace_query(source)
            if found is None:
                return None
            keys += found
        return keys

    def _namespace_query(self, source: CompiledSource) -> list[Key] | None:
        ids = source.workloads
        if ids is None and source.identities is not None:
            exact = source.identities
            ids = None if exact.anything or exact.prefixes or exact.suffixes else exact.exact
        if ids is None:
            return []
        if not ids:
            return None  # no identity at all: any namespaces cover it
        namespace = namespace_of(min(ids))
        if namespace is None:
            return []
        return self.dims[0].patterns_query("namespaces", Patterns.of([namespace]))

    def _operation_query(self, rule: CompiledRule) -> list[Key] | None:
        if not rule.operations:
            return []
        op = rule.operations[0]
        keys = _fields_query(self.dims[1], op, OPERATION_FIELDS)
        if keys is None:
            return None
        if op.ports is not None:
            if not op.ports.ranges:
                return None
            lo, hi = op.ports.ranges[0]
            keys += [("ports", "any", ""), *([("ports", "exact", lo)] if lo == hi else [])]
        return keys

    def candidates(self, rule: CompiledRule) -> Iterator[Entry]:
        """Every rule that may cover `rule`, in rule order, each once."""
        queries = self._queries(rule)
        if queries is None:  # a degenerate rule (an empty list somewhere): try them all
            yield from self.entries
            return
        lists = [self.buckets[k] for k in product(*queries) if k in self.buckets]
        last: Rank | None = None
        for entry in heapq.merge(*lists, key=lambda e: e[0]):
            if entry[0] != last:
                last = entry[0]
                yield entry


def covers(a: CompiledRule, b: CompiledRule) -> bool:
    """Conservatively: does rule `a` match every request rule `b` matches?"""
    if a.sources and not (
        b.sources and all(any(_covers_source(x, y) for x in a.sources) for y in b.sources)
    ):
        return False
    if a.operations and not (
        b.operations and all(any(_covers_op(x, y) for x in a.operations) for y in b.operations)
    ):
        return False
    return all(cond in b.conditions for cond in a.conditions)


def _covers_patterns(a: Patterns | None, b: Patterns | None) -> bool:
    return a is None or (b is not None and a.covers(b))


def _covers_namespaces(a: Patterns | None, b: CompiledSource) -> bool:
    """Every identity `b` admits is in one of the namespaces `a` names: `b`'s own namespaces
    are covered, or `b` is limited to exact identities (or workloads) all in them."""
    if a is None or b.namespaces is not None:
        return _covers_patterns(a, b.namespaces)
    ids = b.workloads
    if ids is None and b.identities is not None:
        exact = b.identities
        ids = None if exact.anything or exact.prefixes or exact.suffixes else exact.exact
    return ids is not None and all(a.matches(namespace_of(i)) for i in ids)


def _same_or_absent(a: object, b: object) -> bool:
    return a is None or a == b


def _covers_source(a: CompiledSource, b: CompiledSource) -> bool:
    return (
        _covers_patterns(a.identities, b.identities)
        and _covers_namespaces(a.namespaces, b)
        and (a.workloads is None or (b.workloads is not None and a.workloads >= b.workloads))
        and _same_or_absent(a.not_identities, b.not_identities)
        and _same_or_absent(a.jwt, b.jwt)
        and (
            a.ip_blocks is None
            or (
                b.ip_blocks is not None
                and all(any(_subnet(n, m) for m in a.ip_blocks) for n in b.ip_blocks)
            )
        )
        and _same_or_absent(a.not_ip_blocks, b.not_ip_blocks)
    )


def _covers_op(a: CompiledOperation, b: CompiledOperation) -> bool:
    if a.ports is not None and not (
        b.ports is not None
        and all(any(lo <= blo and bhi <= hi for lo, hi in a.ports) for blo, bhi in b.ports)
    ):
        return False
    return (
        _same_or_absent(a.not_ports, b.not_ports)
        and _covers_patterns(a.methods, b.methods)
        and _covers_patterns(a.paths, b.paths)
        and _covers_patterns(a.hosts, b.hosts)
        and _same_or_absent(a.not_methods, b.not_methods)
        and _same_or_absent(a.not_paths, b.not_paths)
        and _same_or_absent(a.not_hosts, b.not_hosts)
    )


def _subnet(inner: IpNetwork, outer: IpNetwork) -> bool:
    return inner.version == outer.version and inner.subnet_of(outer)  # type: ignore[arg-type]
