"""Ingress named ports, resolved on each selected pod as Kubernetes does.

`port: http` in an ingress rule opens, on each pod the policy selects, that pod's own container
port named `http` (none on a pod without one). The policy language's ports apply to every
workload a policy selects, so when the selected pods give a name different numbers, the
NetworkPolicy becomes one policy per group of pods that resolve every named port of its rules
alike. Each selects exactly its pods: the policy's selector AND the label POD_LABEL (the pod's
name, added to those imported workloads) In the group's names. Every selected pod stays
selected by one of them, so it stays isolated, and policies are unioned as before.
"""

from __future__ import annotations

from collections.abc import Sequence

from meshwarden.importers._inventory import Pod
from meshwarden.importers._netpol_ports import RulePorts

POD_LABEL = "meshwarden.io/pod"


def _signature(rules: Sequence[RulePorts | None], pod: Pod) -> tuple[int | None, ...]:
    return tuple(
        named.number_on(pod) for ports in rules if ports is not None for named in ports.named
    )


def resolution_groups(rules: Sequence[RulePorts | None], pods: list[Pod]) -> list[list[Pod]]:
    """`pods` grouped by the numbers they give the rules' named ports (in order of first
    appearance; one group when they all agree or there is no named port)."""
    groups: dict[tuple[int | None, ...], list[Pod]] = {}
    for pod in sorted(pods, key=lambda p: p.ref):
        groups.setdefault(_signature(rules, pod), []).append(pod)
    return list(groups.values())


def resolved(ports: RulePorts, pods: list[Pod]) -> dict[str, list[int | str] | None]:
    """The rule's numeric ports plus its named ports as `pods` (which agree) number them; a
    name none of them has adds nothing. `ports` is left as it is."""
    out = RulePorts({t: None if v is None else list(v) for t, v in ports.numbers.items()})
    for named in ports.named:
        numbers = {named.number_on(p) for p in pods} - {None}
        assert len(numbers) <= 1, "pods of one group resolve a name alike"
        for number in numbers:
            if number is not None:
                out.add(named.transport, number)
    return out.numbers
