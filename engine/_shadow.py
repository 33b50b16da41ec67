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

from meshwarden.engine._patterns import IpNetwork, Patterns
from meshwarden.engine._plan import CompiledPolicy
from meshwarden.engine._rules import CompiledOperation, CompiledRule, CompiledSource

Rank = tuple[int, int]
Entry = tuple[Rank, CompiledRule, CompiledPolicy]
Key = tuple[str, str, object]

SOURCE_FIELDS = ("identities", "namespaces")
OPERATION_FIELDS = ("paths", "hosts", "methods")


@dataclass(slots=True)
class _Dimension:
    """Entries by key. `everywhere`: candidates for every query; `by_field[f]`: every entry
    keyed on field f (the answer when a query cannot be narrowed); `lengths[(f, kind)]`: the
    lengths of the prefix / suffix keys present, so a query probes only those."""

    everywhere: list[Entry] = field(default_factory=list)
    buckets: dict[Key, list[Entry]] = field(default_factory=lambda: defaultdict(list))
    by_field: dict[str, list[Entry]] = field(default_factory=lambda: defaultdict(list))
    lengths: dict[tuple[str, str], set[int]] = field(default_factory=lambda: defaultdict(set))

    def add(self, entry: Entry, field_name: str | None, keys: list[Key]) -> None:
        if field_name is None:
            self.everywhere.append(entry)
            return
        self.by_field[field_name].append(entry)
        for key in dict.fromkeys(keys):
            self.buckets[key].append(entry)
            if key[1] in ("prefix", "suffix"):
                self.lengths[(field_name, str(key[1]))].add(len(str(key[2])))

    def lists(self, keys: list[Key]) -> list[list[Entry]]:
        return [self.buckets[k] for k in keys if k in self.buckets]

    def add_patterns(self, entry: Entry, name: str, patterns: Patterns) -> None:
        keys: list[Key] = [(name, "exact", v) for v in patterns.exact]
        keys += [(name, "prefix", q) for q in patterns.prefixes]
        keys += [(name, "suffix", q) for q in patterns.suffixes]
        if patterns.anything:
            keys.append((name, "any", ""))
        self.add(entry, name, keys)

    def query_patterns(self, name: str, wanted: Patterns) -> list[list[Entry]]:
        """Entries keyed on `name` whose patterns may cover `wanted` (they must match its
        first exact value, or hold a prefix / suffix of its first prefix / suffix, or '*')."""
        keys: list[Key] = [(name, "any", "")]
        if wanted.anything:
            pass
        elif wanted.prefixes:
            keys += self._prefixes(name, wanted.prefixes[0])
        elif wanted.suffixes:
            keys += self._suffixes(name, wanted.suffixes[0])
        elif wanted.exact:
            value = min(wanted.exact)
            keys += [(name, "exact", value)]
            keys += self._prefixes(name, value) + self._suffixes(name, value)
        else:
            return [self.by_field.get(name, [])]  # an empty set is covered by any
        return self.lists(keys)

    def _prefixes(self, name: str, value: str) -> list[Key]:
        sizes = self.lengths.get((name, "prefix"), ())
        return [(name, "prefix", value[:n]) for n in sizes if n <= len(value)]

    def _suffixes(self, name: str, value: str) -> list[Key]:
        sizes = self.lengths.get((name, "suffix"), ())
        return [(name, "suffix", value[len(value) - n :]) for n in sizes if n <= len(value)]


class RivalIndex:
    """The enforced rules applying to one workload, in policy order, indexed three ways."""

    def __init__(self, policies: list[CompiledPolicy], order: dict[str, int]) -> None:
        self.sources = _Dimension()
        self.operations = _Dimension()
        self.conditions = _Dimension()
        for policy in sorted(policies, key=lambda p: order[p.ref]):
            for rule in policy.rules:
                self._add(((order[policy.ref], rule.index), rule, policy))

    def _add(self, entry: Entry) -> None:
        rule = entry[1]
        for source in rule.sources or ():
            self._add_source(entry, source)
        if not rule.sources:
            self.sources.add(entry, None, [])
        for operation in rule.operations or ():
            self._add_operation(entry, operation)
        if not rule.operations:
            self.operations.add(entry, None, [])
        if rule.conditions:
            self.conditions.add(entry, "when", [("when", "exact", rule.conditions[0])])
        else:
            self.conditions.add(entry, None, [])

    def _add_source(self, entry: Entry, source: CompiledSource) -> None:
        for name in SOURCE_FIELDS:
            patterns: Patterns | None = getattr(source, name)
            if patterns is not None:
                self.sources.add_patterns(entry, name, patterns)
                return
        if source.workloads is not None:
            keys: list[Key] = [("workloads", "exact", w) for w in source.workloads]
            self.sources.add(entry, "workloads", keys)
            return
        self.sources.add(entry, None, [])

    def _add_operation(self, entry: Entry, op: CompiledOperation) -> None:
        for name in OPERATION_FIELDS:
            patterns: Patterns | None = getattr(op, name)
            if patterns is not None:
                self.operations.add_patterns(entry, name, patterns)
                return
        if op.ports is not None:
            single = all(lo == hi for lo, hi in op.ports)
            keys: list[Key] = [("ports", "exact", lo) for lo, _ in op.ports] if single else []
            self.operations.add(entry, "ports", keys or [("ports", "any", "")])
            return
        self.operations.add(entry, None, [])

    # -- queries: lists of entries (each in rule order) holding every rule that may cover --

    def _source_lists(self, rule: CompiledRule) -> list[list[Entry]]:
        found = [self.sources.everywhere]
        if not rule.sources:
            return found  # only a rule without `from` covers any source
        source = rule.sources[0]
        for name in SOURCE_FIELDS:
            patterns: Patterns | None = getattr(source, name)
            if patterns is not None:
                found += self.sources.query_patterns(name, patterns)
        if source.workloads is not None:
            if source.workloads:
                found += self.sources.lists([("workloads", "exact", min(source.workloads))])
            else:
                found.append(self.sources.by_field.get("workloads", []))
        return found

    def _operation_lists(self, rule: CompiledRule) -> list[list[Entry]]:
        found = [self.operations.everywhere]
        if not rule.operations:
            return found
        op = rule.operations[0]
        for name in OPERATION_FIELDS:
            patterns: Patterns | None = getattr(op, name)
            if patterns is not None:
                found += self.operations.query_patterns(name, patterns)
        if op.ports is not None:
            if not op.ports:
                found.append(self.operations.by_field.get("ports", []))
                return found
            lo, hi = op.ports[0]
            keys: list[Key] = [("ports", "any", "")]  # ranges: kept together
            found += self.operations.lists(keys + ([("ports", "exact", lo)] if lo == hi else []))
        return found

    def _condition_lists(self, rule: CompiledRule) -> list[list[Entry]]:
        keys: list[Key] = [("when", "exact", c) for c in dict.fromkeys(rule.conditions)]
        return [self.conditions.everywhere, *self.conditions.lists(keys)]

    def candidates(self, rule: CompiledRule) -> Iterator[Entry]:
        """Every rule that may cover `rule`, in rule order, each once."""
        options = (
            self._source_lists(rule),
            self._operation_lists(rule),
            self._condition_lists(rule),
        )
        lists = min(options, key=lambda ls: sum(len(entries) for entries in ls))
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


def _same_or_absent(a: object, b: object) -> bool:
    return a is None or a == b


def _covers_source(a: CompiledSource, b: CompiledSource) -> bool:
    return (
        _covers_patterns(a.identities, b.identities)
        and _covers_patterns(a.namespaces, b.namespaces)
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
