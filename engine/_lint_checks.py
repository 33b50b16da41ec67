"""The checks behind `lint`, one function per concern; each yields findings with a fix."""

from __future__ import annotations

import datetime as dt
import difflib
import ipaddress
from collections.abc import Callable, Iterator
from typing import Any

from meshwarden.engine import _analysis
from meshwarden.engine._compiler import CompiledMesh
from meshwarden.engine._diagnostics import Location
from meshwarden.engine._documents import Document
from meshwarden.engine._lint import DRY_RUN_SINCE_ANNOTATION, Finding, LintOptions
from meshwarden.engine._model import AuthorizationPolicySpec, Source
from meshwarden.engine._mtls import any_plaintext
from meshwarden.engine._plan import CompiledPolicy
from meshwarden.engine._spiffe import namespace_of

Check = Callable[[CompiledMesh, LintOptions], Iterator[Finding]]
Place = tuple[str | int, ...]


def _policies(mesh: CompiledMesh) -> list[CompiledPolicy]:
    return sorted(mesh.policies.values(), key=lambda p: p.ref)


def _sources(policy: CompiledPolicy) -> Iterator[tuple[Place, Source]]:
    spec: AuthorizationPolicySpec = policy.document.spec
    for i, rule in enumerate(spec.rules or []):
        for k, source in enumerate(rule.from_ or []):
            yield ("spec", "rules", i, "from", k), source


def _closest(word: str, choices: set[str]) -> str:
    found = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return found[0] if found else ""


def split_rules(mesh: CompiledMesh, options: LintOptions) -> Iterator[Finding]:
    """MW101: `- from: [...]` followed by `- to: [...]`: the second rule has no `from`, so it
    opens its operations to every peer, and the first allows its sources everything."""
    for policy in _policies(mesh):
        rules = policy.document.spec.rules or []
        for i in range(len(rules) - 1):
            first, second = rules[i], rules[i + 1]
            if first.from_ and not first.to and not first.when and second.to and not second.from_:
                where = policy.document.key_at("spec", "rules", i + 1, "to")
                yield Finding(
                    where,
                    "MW101",
                    f"rule {i + 1} of {policy.ref} has `to` but no `from`, right after rule {i} "
                    f"with `from` but no `to`: a stray '- ' split one rule in two, so rule "
                    f"{i + 1} {_verb(policy)} every peer and rule {i} every operation",
                    f"delete the '- ' before 'to:' on line {where.line} to make one rule",
                )


def _verb(policy: CompiledPolicy) -> str:
    return {"ALLOW": "allows", "DENY": "denies"}.get(policy.action, "audits")


def _identity_places(policy: CompiledPolicy) -> Iterator[tuple[Location, str]]:
    """Every exact or prefix identity a policy names, with its place."""
    doc = policy.document
    for place, source in _sources(policy):
        for field_name, values in (
            ("identities", source.identities),
            ("notIdentities", source.not_identities),
        ):
            for j, value in enumerate(values or []):
                yield doc.at(*place, field_name, j), value


def _namespace_places(policy: CompiledPolicy) -> Iterator[tuple[Location, str]]:
    doc = policy.document
    for place, source in _sources(policy):
        for j, value in enumerate(source.namespaces or []):
            yield doc.at(*place, "namespaces", j), value
        if source.workloads is not None:
            for j, value in enumerate(source.workloads.namespaces or []):
                yield doc.at(*place, "workloads", "namespaces", j), value
    for i, rule in enumerate(doc.spec.rules or []):
        for k, cond in enumerate(rule.when or []):
            if cond.key == "source.namespace":
                for j, value in enumerate(cond.values or []):
                    yield doc.at("spec", "rules", i, "when", k, "values", j), str(value)


def unknown_namespaces(mesh: CompiledMesh, options: LintOptions) -> Iterator[Finding]:
    """MW102: a namespace no workload lives in (a typo such as `shpo`)."""
    known = {w.namespace for w in mesh.registry.workloads.values()}
    domain = str(mesh.registry.trust_domain)
    for policy in _policies(mesh):
        places = list(_namespace_places(policy))
        places += [
            (where, ns)
            for where, value in _identity_places(policy)
            if value.startswith(f"spiffe://{domain}/")
            and "*" not in (exact := value.removesuffix("/*"))
            and (ns := namespace_of(exact)) is not None
        ]
        for where, namespace in places:
            if "*" in namespace or namespace in known:
                continue
            guess = _closest(namespace, known)
            yield Finding(
                where,
                "MW102",
                f"no workload is in namespace {namespace!r}, so this never matches anyone",
                f"did you mean {guess!r}?"
                if guess
                else f"add a Workload in namespace {namespace} or remove the namespace",
            )


def unknown_identities(mesh: CompiledMesh, options: LintOptions) -> Iterator[Finding]:
    """MW103 (an exact identity of this trust domain no workload has, in a namespace that
    exists) and MW104 (an identity of another trust domain: no peer can present it)."""
    identities = {w.identity for w in mesh.registry.workloads.values()}
    known_ns = {w.namespace for w in mesh.registry.workloads.values()}
    domain = str(mesh.registry.trust_domain)
    for policy in _policies(mesh):
        for where, value in _identity_places(policy):
            if value == "*" or value.startswith("*"):
                continue
            if not value.startswith(f"spiffe://{domain}/") and value != f"spiffe://{domain}":
                other = value.removeprefix("spiffe://").split("/", 1)[0].rstrip("*")
                yield Finding(
                    where,
                    "MW104",
                    f"{value} is in trust domain {other!r}, but this mesh is {domain!r} and "
                    "issues no other; no peer can present it",
                    f"write spiffe://{domain}/{value.removeprefix('spiffe://').partition('/')[2]}",
                )
            elif "*" not in value and value not in identities and namespace_of(value) in known_ns:
                ns = namespace_of(value)
                same = {i for i in identities if namespace_of(i) == ns}
                guess = _closest(value, same)
                accounts = ", ".join(sorted(i.rsplit("/", 1)[-1] for i in same))
                yield Finding(
                    where,
                    "MW103",
                    f"no workload has identity {value} (service accounts in {ns}: {accounts})",
                    f"did you mean {guess}?" if guess else "fix the service account",
                )


def jwt_issuers(mesh: CompiledMesh, options: LintOptions) -> Iterator[Finding]:
    """MW105: a rule's `jwt.issuers` value no JwtIssuer selecting its workloads configures
    (often a trailing slash): the rule never matches."""
    for policy in _policies(mesh):
        configured = {d.spec.issuer for t in policy.targets for d in mesh.issuers_for(t)}
        for place, source in _sources(policy):
            for j, issuer in enumerate((source.jwt.issuers or []) if source.jwt else []):
                if "*" in issuer or issuer in configured or not configured:
                    continue
                near = [c for c in configured if c.rstrip("/") == issuer.rstrip("/")]
                guess = near[0] if near else _closest(issuer, configured)
                yield Finding(
                    policy.document.at(*place, "jwt", "issuers", j),
                    "MW105",
                    f"issuer {issuer!r} is not the issuer of any JwtIssuer selecting the "
                    f"workloads of {policy.ref} ({', '.join(sorted(configured))}); tokens "
                    "carry one of those, so this source never matches",
                    f"write {guess!r} exactly" if guess else "add a JwtIssuer for it",
                )


def shadowed_rules(mesh: CompiledMesh, options: LintOptions) -> Iterator[Finding]:
    """MW106 (an ALLOW rule a DENY rule denies first: it never allows anything) and MW304
    (a rule an earlier rule of the same action already matches), from `check`'s analysis."""
    for diagnostic in _analysis._shadowed(mesh):
        deny = "is denied by" in diagnostic.message
        yield Finding(
            diagnostic.location,
            "MW106" if deny else "MW304",
            diagnostic.message,
            "narrow the DENY rule (e.g. notIdentities for this rule's sources) or drop this rule"
            if deny
            else "remove this rule, or the earlier one if this is the one you meant",
        )


def upstream_ports(mesh: CompiledMesh, options: LintOptions) -> Iterator[Finding]:
    """MW107: two workloads on one host (loopback or a shared address) with an upstream on
    the same localPort: both sidecars listen on 127.0.0.1:localPort; the second one's listener
    fails."""
    seen: dict[tuple[str, int], tuple[str, int]] = {}
    for ref in sorted(mesh.registry.workloads):
        workload = mesh.registry.workloads[ref]
        for host in _hosts(workload.addresses):
            for i, upstream in enumerate(workload.spec.upstreams):
                first = seen.setdefault((host, upstream.local_port), (ref, i))
                if first[0] != ref:
                    yield Finding(
                        workload.document.at("spec", "upstreams", i, "localPort"),
                        "MW107",
                        f"localPort {upstream.local_port} is also an upstream of {first[0]}; "
                        "on one host both sidecars listen on 127.0.0.1:"
                        f"{upstream.local_port} and the second listener is refused",
                        f"give this upstream a localPort no other workload on {host} uses",
                    )


def _hosts(addresses: tuple[Any, ...]) -> set[str]:
    hosts = {"loopback" if ipaddress.ip_address(str(a)).is_loopback else str(a) for a in addresses}
    return hosts or {"loopback"}


def open_rules(mesh: CompiledMesh, options: LintOptions) -> Iterator[Finding]:
    """MW201 (an enforced ALLOW rule any plaintext peer matches, under PERMISSIVE) and MW202
    (one any identity matches: no `from`, `identities: ['*']`, `namespaces: ['*']`)."""
    registry = mesh.registry
    for policy in _policies(mesh):
        if policy.action != "ALLOW" or policy.dry_run or not policy.targets:
            continue
        targets = (registry.workloads[ref] for ref in policy.targets)
        permissive = any_plaintext(registry.mesh.spec, targets)
        for rule in policy.rules:
            doc = policy.document
            if not rule.sources:
                where = doc.at("spec", "rules", rule.index)
                if permissive:
                    yield _plaintext(where, policy, rule.index)
                yield _any_identity(where, policy, rule.index, "it has no `from`")
                continue
            for k, source in enumerate(rule.sources):
                where = doc.at("spec", "rules", rule.index, "from", k)
                plaintext = not source.needs_identity and source.ip_blocks is None
                if permissive and plaintext and source.jwt is None:
                    yield _plaintext(where, policy, rule.index)
                wide = _wildcard(source)
                if wide:
                    yield _any_identity(where, policy, rule.index, wide)


def _wildcard(source: Any) -> str:
    ids, namespaces = source.identities, source.namespaces
    if ids is not None and (
        ids.anything or any(p.count("/") <= 3 or p.endswith("/ns/") for p in ids.prefixes)
    ):
        return f"identities {ids} match every identity"
    if namespaces is not None and namespaces.anything:
        return f"namespaces {namespaces} match every identity"
    if (
        source.not_identities is not None
        and ids is None
        and namespaces is None
        and (source.workloads is None)
    ):
        return "only notIdentities: every other identity matches"
    if not source.needs_identity and not source.needs_plaintext and source.jwt is None:
        return "a source without identity fields matches every identity"
    return ""


def _plaintext(where: Location, policy: CompiledPolicy, index: int) -> Finding:
    return Finding(
        where,
        "MW201",
        f"rule {index} of {policy.ref} allows peers without an identity: mTLS is PERMISSIVE and "
        "nothing in the rule requires an identity or a source address",
        "add `identities`/`workloads`/`namespaces` to its `from`, or ipBlocks for known hosts",
    )


def _any_identity(where: Location, policy: CompiledPolicy, index: int, why: str) -> Finding:
    return Finding(
        where,
        "MW202",
        f"rule {index} of {policy.ref} allows any identity: {why}",
        "name the callers: identities, workloads or namespaces",
    )


def permissive_mtls(mesh: CompiledMesh, options: LintOptions) -> Iterator[Finding]:
    """MW203: PERMISSIVE mTLS left on: plaintext peers are accepted mesh-wide."""
    doc = mesh.registry.mesh.document
    if doc is not None and doc.spec.mtls == "PERMISSIVE":
        yield Finding(
            doc.at("spec", "mtls"),
            "MW203",
            "mTLS is PERMISSIVE: every sidecar also accepts plaintext peers, whose only "
            "credential is their IP address",
            "set mtls: STRICT once every caller has an identity (meshwarden flows shows "
            "plaintext callers by IP)",
        )
    yield from _narrower_permissive(mesh)


def _narrower_permissive(mesh: CompiledMesh) -> Iterator[Finding]:
    """MW203 for a namespace, workload or port set to PERMISSIVE (see docs/policy-reference.md,
    mTLS modes), each at its own `mtls` field."""
    doc = mesh.registry.mesh.document
    places: list[tuple[Location, str]] = []
    if doc is not None:
        for ns, settings in sorted(doc.spec.namespaces.items()):
            if settings.mtls == "PERMISSIVE":
                places.append((doc.at("spec", "namespaces", ns, "mtls"), f"namespace {ns}"))
    for ref, workload in sorted(mesh.registry.workloads.items()):
        spec = workload.spec
        if spec.mtls == "PERMISSIVE":
            places.append((workload.document.at("spec", "mtls"), f"workload {ref}"))
        for i, port in enumerate(spec.ports):
            if port.mtls == "PERMISSIVE":
                where = workload.document.at("spec", "ports", i, "mtls")
                places.append((where, f"port {port.port} of workload {ref}"))
    for where, what in places:
        yield Finding(
            where,
            "MW203",
            f"mTLS is PERMISSIVE for {what}: its sidecar also accepts plaintext peers, whose "
            "only credential is their IP address",
            "set mtls: STRICT there once every caller has an identity",
        )


def issuer_audiences(mesh: CompiledMesh, options: LintOptions) -> Iterator[Finding]:
    """MW204: a JwtIssuer without audiences accepts a token minted for any other service."""
    for ref in sorted(mesh.issuers):
        doc = mesh.issuers[ref][0]
        if not doc.spec.audiences and not doc.spec.spiffe_trust_domain:
            yield Finding(
                doc.at("spec", "issuer"),
                "MW204",
                f"JwtIssuer {ref} has no audiences: any token of {doc.spec.issuer} is "
                "accepted, even one minted for another service",
                "add audiences: [the name your workloads' tokens are minted for]",
            )


def selects_nothing(mesh: CompiledMesh, options: LintOptions) -> Iterator[Finding]:
    """MW301: an AuthorizationPolicy, JwtIssuer or Service that selects no workload."""
    selecting: list[tuple[Document[Any], bool]] = [
        (p.document, bool(p.targets)) for p in _policies(mesh)
    ]
    selecting += [(p.document, bool(p.targets)) for p in mesh.egress_policies.values()]
    selecting += [(doc, bool(targets)) for doc, targets in mesh.issuers.values()]
    selecting += [
        (doc, bool(mesh.registry.select(doc.metadata.namespace, doc.spec.selector)))
        for doc in mesh.registry.services.values()
    ]
    for doc, selects in selecting:
        if not selects:
            yield Finding(
                doc.at("spec", "selector"),
                "MW301",
                f"{doc.kind} {doc.ref} selects no workload",
                "fix the selector's labels or the namespace, or delete it",
            )


def unused_rules(mesh: CompiledMesh, options: LintOptions) -> Iterator[Finding]:
    """MW302: with a flow window, an enforced ALLOW/DENY rule that decided no request."""
    window = options.flows
    if window is None or not window.records:
        return
    for policy in _policies(mesh):
        if policy.dry_run or policy.action == "AUDIT" or not policy.targets:
            continue
        for rule in policy.rules:
            if (policy.ref, rule.index) not in window.hits:
                yield Finding(
                    rule.location,
                    "MW302",
                    f"rule {rule.index} of {policy.ref} decided none of the "
                    f"{window.records} requests in the flow window",
                    "if the window is representative, remove the rule (least privilege)",
                )


def old_dry_runs(mesh: CompiledMesh, options: LintOptions) -> Iterator[Finding]:
    """MW303: a dry-run policy whose `meshwarden.io/dry-run-since` date is too old."""
    today = options.today or dt.datetime.now(dt.UTC).date()
    for policy in _policies(mesh):
        since = policy.document.metadata.annotations.get(DRY_RUN_SINCE_ANNOTATION)
        if not policy.dry_run or not since:
            continue
        try:
            started = dt.date.fromisoformat(since[:10])
        except ValueError:
            continue
        days = (today - started).days
        if days > options.dry_run_max_days:
            yield Finding(
                policy.document.at("metadata", "annotations", DRY_RUN_SINCE_ANNOTATION),
                "MW303",
                f"{policy.ref} has been dry-run since {since} ({days} days, more than "
                f"{options.dry_run_max_days}); a policy nobody promotes protects nothing",
                f"meshwarden promote {policy.ref} ... --require-clean 24h, or delete it",
            )


CHECKS: tuple[Check, ...] = (
    split_rules,
    unknown_namespaces,
    unknown_identities,
    jwt_issuers,
    shadowed_rules,
    upstream_ports,
    open_rules,
    permissive_mtls,
    issuer_audiences,
    selects_nothing,
    unused_rules,
    old_dry_runs,
)
