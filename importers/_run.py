"""One import: read the objects, build the inventory, run the translators, split identities
where needed, and render (and check) the output files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from meshwarden.engine import Diagnostic
from meshwarden.importers._context import Emitted, ImportContext, ImportOptions, Translator
from meshwarden.importers._identities import explain_split, groups_to_split
from meshwarden.importers._inventory import INVENTORY_KINDS, Inventory, build_inventory
from meshwarden.importers._istio_authn import (
    translate_peer_authentication,
    translate_request_authentication,
)
from meshwarden.importers._istio_authz import (
    translate_authorization_policy,
    unverifiable_tokens,
)
from meshwarden.importers._local_runtime import localize
from meshwarden.importers._netpol import translate_network_policy
from meshwarden.importers._objects import KubeObject, error, read_objects
from meshwarden.importers._output import OutputFile, check_output, render_files
from meshwarden.importers._workloads import emit_inventory

TRANSLATORS: dict[tuple[str, str], Translator] = {
    ("networking.k8s.io", "NetworkPolicy"): translate_network_policy,
    ("security.istio.io", "AuthorizationPolicy"): translate_authorization_policy,
    ("security.istio.io", "PeerAuthentication"): translate_peer_authentication,
    ("security.istio.io", "RequestAuthentication"): translate_request_authentication,
}
"""Policy kinds by (API group, kind). A translator is called once per object of its kind, after
the inventory is built; see the package docstring."""


@dataclass(slots=True)
class ImportResult:
    """The output files (empty when there are errors), the problems and the notes."""

    inputs: list[str]
    files: list[OutputFile] = field(default_factory=list)
    problems: list[Diagnostic] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    objects: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def import_paths(
    paths: Sequence[str | os.PathLike[str]], outdir: str, options: ImportOptions
) -> ImportResult:
    """Translate every object found under `paths` into meshwarden documents for `outdir`.
    Raises the engine's UsageError for a path that does not exist."""
    inputs, objects, problems = read_objects(paths)
    result = ImportResult(inputs, objects=len(objects))
    problems.extend(_unsupported(objects))
    inventory = build_inventory(objects, problems)
    policies = [o for o in objects if (o.group, o.kind) in TRANSLATORS]
    first = _translate(policies, inventory, options, frozenset())
    split = groups_to_split(inventory.pods, first.selections)
    notes, refused = explain_split(split, inventory.pods, not options.split_identities)
    ctx = _translate(policies, inventory, options, frozenset(split))
    emit_inventory(ctx)
    problems.extend(refused + ctx.problems + _same_names(ctx.documents))
    problems.extend(unverifiable_tokens(ctx))
    if options.runtime is not None and not problems:
        documents = [e.document for e in ctx.documents]
        problems.extend(localize(documents, inventory.services, options.runtime))
    result.notes = notes + ctx.notes
    if problems:
        result.problems = sorted(set(problems))
        return result
    files = render_files({"trustDomain": options.trust_domain, **ctx.mesh}, ctx.documents)
    found = check_output(outdir, files)
    if found:
        result.problems = [_internal(d) for d in found]
        return result
    result.files = files
    return result


def _translate(
    policies: list[KubeObject],
    inventory: Inventory,
    options: ImportOptions,
    split: frozenset[tuple[str, str]],
) -> ImportContext:
    """Run every translator once; the first run only finds the selections that decide which
    service accounts to split, the second writes the documents with those identities."""
    ctx = ImportContext(options, inventory, split=split)
    for obj in policies:
        TRANSLATORS[(obj.group, obj.kind)](obj, ctx)
    return ctx


def _same_names(documents: list[Emitted]) -> list[Diagnostic]:
    """Two objects that would become one document (names shortened or made DNS labels alike,
    a pod named like a controller's replica)."""
    seen: dict[tuple[str, str, str], Emitted] = {}
    problems = []
    for emitted in documents:
        doc = emitted.document
        key = (doc["kind"], emitted.namespace, doc["metadata"]["name"])
        first = seen.setdefault(key, emitted)
        if first is not emitted and emitted.where is not None:
            name = f"{key[0]} {key[1]}/{key[2]}"
            message = f"this becomes {name}, as {first.origin} does; rename one of them"
            problems.append(error(emitted.where, message))
    return problems


def _unsupported(objects: list[KubeObject]) -> list[Diagnostic]:
    known = sorted({kind for _, kind in INVENTORY_KINDS | TRANSLATORS.keys()})
    return [
        error(
            obj.at("kind"),
            f"{obj.kind} ({obj.api_version}) cannot be imported; known kinds: {', '.join(known)}",
        )
        for obj in objects
        if (obj.group, obj.kind) not in INVENTORY_KINDS | TRANSLATORS.keys()
    ]


def _internal(problem: Diagnostic) -> Diagnostic:
    message = f"the translated output does not pass check (a bug in import): {problem.message}"
    return error(problem.location, message)
