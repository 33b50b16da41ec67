"""Identity upgrade without widening.

A Kubernetes pod's identity is its service account (`spiffe://TD/ns/NS/sa/SA`): every pod of one
service account proves the same identity. When a policy names some pods of a service account as
peers but not others (a label selector or an ipBlock tells them apart), allowing that identity
would also allow the others. Such a service account's pods get one identity each
(`.../sa/SA/pod/NAME`), and a note says so; with `--no-split-identities` the import refuses.
"""

from __future__ import annotations

from collections import defaultdict

from meshwarden.engine import Diagnostic
from meshwarden.importers._context import Selection
from meshwarden.importers._inventory import Pod
from meshwarden.importers._objects import error

Group = tuple[str, str]  # (namespace, service account)


def groups_to_split(pods: list[Pod], selections: list[Selection]) -> dict[Group, Selection]:
    """Each service account some selection tells apart, with the first such selection."""
    members: dict[Group, set[str]] = defaultdict(set)
    group_of: dict[str, Group] = {}
    for pod in pods:
        group = (pod.namespace, pod.service_account)
        members[group].add(pod.ref)
        group_of[pod.ref] = group
    split: dict[Group, Selection] = {}
    for selection in selections:
        for group in {group_of[ref] for ref in selection.pods if ref in group_of}:
            if group not in split and not members[group] <= selection.pods:
                split[group] = selection
    return split


def explain_split(
    split: dict[Group, Selection], pods: list[Pod], refuse: bool
) -> tuple[list[str], list[Diagnostic]]:
    """Notes for stderr (splitting) or errors (refusing), one per service account."""
    notes: list[str] = []
    problems: list[Diagnostic] = []
    for (namespace, account), selection in sorted(split.items(), key=lambda item: item[0]):
        names = sorted(
            p.name for p in pods if (p.namespace, p.service_account) == (namespace, account)
        )
        chosen = sorted(
            ref.split("/", 1)[1] for ref in selection.pods if ref.startswith(f"{namespace}/")
        )
        shared = f"pods {', '.join(names)} share service account {namespace}/{account}"
        apart = f"{selection.what} at {selection.where} selects only {', '.join(chosen) or 'none'}"
        if refuse:
            problems.append(
                error(
                    selection.where,
                    f"{shared} (one identity) but {selection.what} tells them apart; allowing "
                    "their identity would widen the policy (run without --no-split-identities "
                    "to give them distinct identities, or give the pods their own service account)",
                )
            )
        else:
            notes.append(
                f"{shared}; {apart}: each gets its own identity (.../sa/{account}/pod/NAME)"
            )
    return notes, problems
