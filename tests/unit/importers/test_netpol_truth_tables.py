"""Imported NetworkPolicies reach exactly what Kubernetes allows: truth tables written from the
Kubernetes documentation (concepts/services-networking/network-policies) and the API reference,
in the shape of the Kubernetes e2e network-policy suite (namespaces x, y, z; pods a, b, c at
10.0.1-3.1-3; every pod of a namespace shares its default service account). Every expected
matrix is written here by hand, as sets of (from, to) pairs."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import ALL, Importer, every_pair, matrix, pairs

X = ("x/a", "x/b", "x/c")
Y = ("y/a", "y/b", "y/c")
Z = ("z/a", "z/b", "z/c")


def policy(name: str, spec: str, namespace: str = "x") -> str:
    """A NetworkPolicy document; `spec` is its spec in flow style."""
    return (
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n"
    )


def imported(import_cluster: Importer, policies: str, **kw: object) -> Path:
    code, out = import_cluster(policies, **kw)
    assert code == 0
    return out


# Policies selecting x/a only: which pods may reach x/a, by port (every other pair stays open).
A_ONLY = "podSelector: {matchLabels: {pod: a}}"


def to_a(rest: str = "") -> str:
    """The spec of a policy selecting x/a, with `rest` (", ingress: [...]") after the selector."""
    return "{" + A_ONLY + rest + "}"


TO_A = [
    pytest.param(to_a(), {80: [], 81: []}, id="policyTypes-defaults-to-Ingress"),
    pytest.param(to_a(", ingress: []"), {80: []}, id="ingress-empty-list-denies"),
    pytest.param(to_a(", ingress: [{}]"), {80: ALL, 81: ALL}, id="ingress-empty-rule"),
    pytest.param(
        to_a(", ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]"),
        {80: ["x/b"]},
        id="pod-selector-is-own-namespace",
    ),
    pytest.param(
        to_a(", ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]"),
        {80: Y},
        id="namespace-selector",
    ),
    pytest.param(
        to_a(
            ", ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}},"
            " podSelector: {matchLabels: {pod: b}}}]}]"
        ),
        {80: ["y/b"]},
        id="both-selectors-in-one-peer-AND",
    ),
    pytest.param(
        to_a(
            ", ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}},"
            " {podSelector: {matchLabels: {pod: b}}}]}]"
        ),
        {80: [*Y, "x/b"]},
        id="two-peers-OR",
    ),
    pytest.param(
        to_a(
            ", ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: c}}}]}]"
        ),
        {80: ["x/c", "y/c", "z/c"]},
        id="empty-namespace-selector-is-every-namespace",
    ),
    pytest.param(
        "{podSelector: {matchExpressions: [{key: pod, operator: In, values: [a]}]},"
        " ingress: [{from: [{namespaceSelector: {matchExpressions:"
        " [{key: ns, operator: NotIn, values: [y]}]}}]}]}",
        {80: [*X, *Z]},
        id="match-expressions",
    ),
    pytest.param(
        to_a(
            ", ingress: [{from: [{namespaceSelector: {matchLabels:"
            " {kubernetes.io/metadata.name: z}}}]}]"
        ),
        {80: Z},
        id="namespace-name-label-set-by-the-api-server",
    ),
    pytest.param(
        to_a(", ingress: [{ports: [{port: 81}]}]"),
        {80: [], 81: ALL},
        id="port-number",
    ),
    pytest.param(
        to_a(", ingress: [{ports: [{protocol: TCP}]}]"),
        {80: ALL, 81: ALL},
        id="protocol-only-entry-is-every-port",
    ),
    pytest.param(
        to_a(
            ", ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}],"
            " ports: [{protocol: TCP, port: serve-80-tcp}]}]"
        ),
        {80: Z, 81: []},
        id="named-port",
    ),
    pytest.param(
        to_a(", ingress: [{ports: [{protocol: TCP, port: 79, endPort: 80}]}]"),
        {80: ALL, 81: []},
        id="end-port-range",
    ),
    pytest.param(
        to_a(
            ", ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}],"
            " ports: [{port: 80}]},"
            " {from: [{namespaceSelector: {matchLabels: {ns: z}}}], ports: [{port: 81}]}]"
        ),
        {80: Y, 81: Z},
        id="peers-and-ports-AND-rules-OR",
    ),
    pytest.param(  # y's pods are 10.0.2.1-3, y/b is 10.0.2.2: allowed by their identities
        to_a(", ingress: [{from: [{ipBlock: {cidr: 10.0.2.0/24, except: [10.0.2.2/32]}}]}]"),
        {80: ["y/a", "y/c"]},
        id="ip-block-except",
    ),
]


@pytest.mark.parametrize(("spec", "allowed_to_a"), TO_A)
def test_who_reaches_a_pod_selected_by_one_policy(
    import_cluster: Importer,
    capsys: pytest.CaptureFixture[str],
    spec: str,
    allowed_to_a: dict[int, tuple[str, ...]],
) -> None:
    out = imported(import_cluster, policy("to-a", spec))
    for port, sources in allowed_to_a.items():
        expected = every_pair() - pairs(ALL, ["x/a"]) | pairs(sources, ["x/a"])
        assert matrix(out, capsys, port) == expected, port


def test_without_policies_every_pod_reaches_every_pod(
    import_cluster: Importer, capsys: pytest.CaptureFixture[str]
) -> None:
    out = imported(import_cluster, "")
    assert matrix(out, capsys, 80) == every_pair()


def test_default_deny_ingress_isolates_every_pod_of_the_namespace(
    import_cluster: Importer, capsys: pytest.CaptureFixture[str]
) -> None:
    out = imported(import_cluster, policy("deny", "{podSelector: {}, policyTypes: [Ingress]}"))
    assert matrix(out, capsys, 80) == every_pair() - pairs(ALL, X)


def test_policies_selecting_one_pod_are_unioned(
    import_cluster: Importer, capsys: pytest.CaptureFixture[str]
) -> None:
    out = imported(
        import_cluster,
        policy("deny", "{podSelector: {}, policyTypes: [Ingress]}")
        + policy(
            "from-b",
            "{podSelector: {}, ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]}",
        )
        + policy(
            "a-from-z", to_a(", ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]")
        ),
    )
    expected = every_pair() - pairs(ALL, X) | pairs(["x/b"], X) | pairs(Z, ["x/a"])
    assert matrix(out, capsys, 80) == expected


def test_changing_a_pods_labels_changes_who_it_reaches(
    import_cluster: Importer, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = to_a(", ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]")
    before = imported(import_cluster, policy("a-from-b", spec))
    relabelled = imported(
        import_cluster, policy("a-from-b", spec), labels={"x/c": {"pod": "b"}, "x/b": {}}
    )
    isolated = every_pair() - pairs(ALL, ["x/a"])
    assert matrix(before, capsys, 80) == isolated | {("x/b", "x/a")}
    assert matrix(relabelled, capsys, 80) == isolated | {("x/c", "x/a")}
