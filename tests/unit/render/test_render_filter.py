"""What a node's filter admits, per port, computed from the policies: never stricter than the
sidecar, narrowed only where every allowing rule is an IP-fallback rule."""

from __future__ import annotations

import ipaddress

from meshwarden.engine import EVERYWHERE, CompiledMesh, check_documents, parse_text
from meshwarden.render import PortRule, node_filter, render_nftables

HEAD = """
apiVersion: meshwarden.io/v1alpha1
kind: Mesh
metadata: {{name: mesh}}
spec: {{mtls: {mtls}, defaultPolicy: {default}}}
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {{name: app, namespace: shop, labels: {{app: app}}}}
spec:
  addresses: [10.0.0.5]
  ports: [{{port: 9000, targetPort: 19000}}, {{port: 9001}}]
  selectors: ["node:n1"]
"""


HOST_HEAD = "apiVersion: meshwarden.io/v1alpha1\nkind: Host\nmetadata: {name: n1}\nspec:\n"


def policy(rules: str, action: str = "ALLOW", mode: str = "enforce") -> str:
    return f"""---
apiVersion: meshwarden.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: p-{action.lower()}-{mode}, namespace: shop}}
spec: {{selector: {{matchLabels: {{app: app}}}}, action: {action}, mode: {mode}, rules: {rules}}}
"""


def mesh(*parts: str, mtls: str = "PERMISSIVE", default: str = "deny") -> CompiledMesh:
    documents, problems = parse_text(HEAD.format(mtls=mtls, default=default) + "".join(parts))
    assert not problems, problems
    compiled, found = check_documents(documents)
    assert compiled is not None, found
    return compiled


def ports(compiled: CompiledMesh, node: str = "n1") -> dict[str, list[str] | str]:
    def show(rule: PortRule) -> list[str] | str:
        if rule.is_open:
            return "anywhere"
        return [str(n) for n in rule.sources] or "loopback"

    return {f"{r.protocol}/{r.ports}": show(r) for r in node_filter(compiled, node).ports}


FALLBACK = (
    "[{from: [{ipBlocks: [192.168.0.0/16], notIpBlocks: [192.168.1.0/24]}], to: [{ports: [9000]}]}]"
)


def test_ip_fallback_rule_narrows_its_port_to_the_blocks_minus_the_excepts() -> None:
    found = ports(mesh(policy(FALLBACK)))
    assert found["tcp/9000"] == [
        "192.168.0.0/24",
        "192.168.2.0/23",
        "192.168.4.0/22",
        "192.168.8.0/21",
        "192.168.16.0/20",
        "192.168.32.0/19",
        "192.168.64.0/18",
        "192.168.128.0/17",
    ]
    assert found["tcp/9001"] == "loopback"  # default deny: no request can be allowed
    assert found["tcp/19000"] == "loopback"  # the app behind the sidecar


def test_an_identity_rule_opens_the_port_to_every_address() -> None:
    identity = "[{from: [{namespaces: [shop]}], to: [{ports: [9000]}]}]"
    found = ports(mesh(policy(FALLBACK), policy(identity, mode="enforce").replace("p-allow", "q")))
    assert found["tcp/9000"] == "anywhere"


def test_under_strict_mtls_ip_rules_admit_nobody() -> None:
    assert ports(mesh(policy(FALLBACK), mtls="STRICT"))["tcp/9000"] == "loopback"


def test_default_allow_without_policies_leaves_sidecar_ports_open() -> None:
    found = ports(mesh(default="allow"))
    assert found == {"tcp/9000": "anywhere", "tcp/9001": "anywhere", "tcp/19000": "loopback"}


def test_dry_run_and_deny_policies_never_narrow_a_port() -> None:
    deny = "[{from: [{ipBlocks: [10.0.0.0/8]}]}]"
    found = ports(mesh(policy(FALLBACK, mode="dry-run"), policy(deny, "DENY"), default="allow"))
    assert found["tcp/9000"] == "anywhere"


def test_overlapping_host_rules_are_cut_into_disjoint_ranges_and_app_ports_stay_local() -> None:
    host = """---
apiVersion: meshwarden.io/v1alpha1
kind: Host
metadata: {name: n1}
spec:
  ingress:
  - {ports: ["18000-19500"], from: [{ipBlocks: [10.1.0.0/16]}]}
  - {ports: [22, 19100], from: [{ipBlocks: [10.2.0.0/16]}]}
  - {ports: [53], protocol: udp}
"""
    assert ports(mesh(host, default="allow")) == {
        "tcp/22": ["10.2.0.0/16"],
        "tcp/9000": "anywhere",
        "tcp/9001": "anywhere",
        "tcp/18000-18999": ["10.1.0.0/16"],
        "tcp/19000": "loopback",
        "tcp/19001-19099": ["10.1.0.0/16"],
        "tcp/19100": ["10.1.0.0/16", "10.2.0.0/16"],
        "tcp/19101-19500": ["10.1.0.0/16"],
        "udp/53": "anywhere",
    }
    assert node_filter(mesh(host), "n1").closed == EVERYWHERE


def test_workloads_of_other_nodes_and_their_hosts_are_not_rendered() -> None:
    assert ports(mesh(), "n2") == {}
    assert node_filter(mesh(), "n2").closed == ()


def test_a_thousand_host_rules_on_one_port_become_one_map_entry_and_one_set() -> None:
    blocks = [ipaddress.IPv4Network((0x0B000000 + 8 * i, 30)) for i in range(1_000)]
    rules = "".join(f"  - {{ports: [22], from: [{{ipBlocks: [{b}]}}]}}\n" for b in blocks)
    host = f"---\n{HOST_HEAD}  ingress:\n{rules}"
    nf = node_filter(mesh(host), "n1")
    assert [(r.protocol, r.ports, r.sources) for r in nf.ports if r.low < 9000] == [
        ("tcp", "22", tuple(blocks))
    ]
    text = render_nftables(nf)
    assert text.count("tcp . 22 : jump sources_1") == 1
    assert text.count("\tset ") == 3  # the sources, and the closed host's two families


def test_a_permissive_port_of_a_strict_mesh_admits_its_ip_fallback_sources() -> None:
    head = HEAD.replace("targetPort: 19000}}", "targetPort: 19000, mtls: PERMISSIVE}}")
    documents, problems = parse_text(head.format(mtls="STRICT", default="deny") + policy(FALLBACK))
    assert not problems, problems
    compiled, found = check_documents(documents)
    assert compiled is not None, found
    assert ports(compiled)["tcp/9000"][:2] == ["192.168.0.0/24", "192.168.2.0/23"]
