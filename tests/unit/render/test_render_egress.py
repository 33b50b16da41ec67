"""What may leave a node: each workload's sockets (by uid) or routed packets (by address) reach
exactly what `explain --from-workload` allows; a shared key is narrower, never wider; the Host's
own traffic is filtered only under `defaultEgress: deny`; nobody reaches an app port behind a
sidecar; the cloud edge gets the union, and only when it bounds the node."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st
from meshwarden.engine import (
    CompiledMesh,
    check_documents,
    decide_outbound,
    decide_path,
    load,
    parse_text,
)
from meshwarden.render import (
    EgressEntry,
    IptablesOptions,
    node_filter,
    render_aws_security_group,
    render_gcp_firewall,
    render_iptables,
    render_nftables,
)

from ._ec2 import ec2_problems
from ._gcp_firewall_schema import firewall_problems

HEAD = """
apiVersion: meshwarden.io/v1alpha1
kind: Mesh
metadata: {{name: mesh}}
spec: {{defaultEgressPolicy: {default}}}
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {{name: web, namespace: shop, labels: {{app: web}}}}
spec: {{addresses: [10.0.0.5], selectors: ["node:n1", "unix:uid:1500"]}}
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {{name: db, namespace: shop, labels: {{app: db}}}}
spec:
  addresses: [10.0.1.7, "fd00::7"]
  ports: [{{port: 5432, targetPort: 15432}}]
  selectors: ["node:n2"]
"""


def egress(rules: str, action: str = "ALLOW", app: str = "web") -> str:
    return f"""---
apiVersion: meshwarden.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: {app}-{action.lower()}, namespace: shop}}
spec:
  direction: egress
  action: {action}
  selector: {{matchLabels: {{app: {app}}}}}
  rules: {rules}
"""


def host(spec: str) -> str:
    head = "---\napiVersion: meshwarden.io/v1alpha1\nkind: Host\nmetadata: {name: n1}\nspec:\n"
    return head + "  ingress: [{ports: [22]}]\n" + spec


def mesh(*parts: str, default: str = "allow") -> CompiledMesh:
    documents, problems = parse_text(HEAD.format(default=default) + "".join(parts), "p.yaml")
    assert not problems, problems
    compiled, found = check_documents(documents)
    assert compiled is not None, found
    return compiled


def problems(*parts: str) -> list[str]:
    documents, found = parse_text(HEAD.format(default="allow") + "".join(parts), "p.yaml")
    if not found:
        _, found = check_documents(documents)
    return [str(p) for p in found]


def admits(entries: tuple[EgressEntry, ...], address: str, protocol: str, port: int) -> bool:
    ip = ipaddress.ip_address(address)
    return any(
        e.version == ip.version
        and e.first <= ip <= e.last  # type: ignore[operator]
        and e.protocol == protocol
        and e.low <= port <= e.high
        for e in entries
    )


def web_entries(compiled: CompiledMesh) -> tuple[EgressEntry, ...]:
    nf = node_filter(compiled, "n1")
    (uid, index), *_ = nf.egress.uids
    assert uid == 1500 and index is not None
    return nf.egress.sources[index].allowed


def explain(compiled: CompiledMesh, address: str, protocol: str, port: int) -> bool:
    """`explain --from-workload shop/web` (`--to shop/db` for db's addresses, else --to-ip)."""
    if address in ("10.0.1.7", "fd00::7"):
        found = decide_path(compiled, "shop/web", "shop/db", port, protocol).egress
        assert found is not None
        return found.allowed
    ip = ipaddress.ip_address(address)
    return decide_outbound(compiled, "shop/web", ip, port, protocol).allowed


BLOCKS = ["10.0.0.0/8", "10.0.1.0/24", "10.0.1.0/25", "0.0.0.0/0", "192.168.0.0/16", "fd00::/8"]
ADDRESSES = ["10.0.1.7", "10.0.1.8", "10.0.1.200", "10.9.9.9", "192.168.3.4", "8.8.8.8"]
ADDRESSES += ["fd00::7", "fd00::8", "2001:db8::1"]
PORT_VALUES = [53, 443, 5432, "8000-8100", 15432]


@st.composite
def rules(draw: st.DrawFn) -> str:
    parts = []
    kind = draw(st.sampled_from(["workloads", "ip", "none", "namespaces"]))
    if kind == "workloads":
        parts.append("to: [{workloads: {matchLabels: {app: db}}}]")
    elif kind == "namespaces":
        parts.append("to: [{namespaces: [shop]}]")
    elif kind == "ip":
        block = draw(st.sampled_from(BLOCKS))
        holes = draw(st.lists(st.sampled_from(BLOCKS), max_size=2, unique=True))
        holes = [h for h in holes if h != block]
        extra = f", notIpBlocks: [{', '.join(holes)}]" if holes else ""
        parts.append(f"to: [{{ipBlocks: [{block}]{extra}}}]")
    ports = draw(st.lists(st.sampled_from(PORT_VALUES), max_size=2, unique=True))
    if ports:
        key = draw(st.sampled_from(["ports", "notPorts"]))
        parts.append(
            f"{key}: [{', '.join(str(p) if isinstance(p, int) else repr(p) for p in ports)}]"
        )
    protocols = draw(st.lists(st.sampled_from(["tcp", "udp", "sctp"]), max_size=2, unique=True))
    if protocols:
        parts.append(f"protocols: [{', '.join(protocols)}]")
    return "{" + ", ".join(parts) + "}"


@settings(max_examples=40, deadline=None)
@given(
    allow=st.lists(rules(), max_size=3),
    deny=st.lists(rules(), max_size=2),
    default=st.sampled_from(["allow", "deny"]),
)
def test_the_rendered_egress_of_a_workload_is_exactly_what_explain_allows(
    allow: list[str], deny: list[str], default: str
) -> None:
    parts = [egress(f"[{', '.join(allow)}]")] if allow else []
    parts += [egress(f"[{', '.join(deny)}]", "DENY")] if deny else []
    compiled = mesh(*parts, default=default)
    nf = node_filter(compiled, "n1")
    index = dict(nf.egress.uids).get(1500)
    entries = nf.egress.sources[index].allowed if index is not None else None
    for address in ADDRESSES:
        for protocol in ("tcp", "udp", "sctp"):
            for port in (1, 53, 443, 444, 5432, 8000, 8050, 8100, 8101, 15432, 65535):
                allowed = explain(compiled, address, protocol, port)
                rendered = entries is None or admits(entries, address, protocol, port)
                assert rendered == allowed, (address, protocol, port)


def test_a_workload_that_may_send_anywhere_is_not_filtered() -> None:
    text = render_nftables(node_filter(mesh(), "n1"))
    assert "skuid" not in text and "chain egress_" not in text


def test_two_workloads_sharing_a_uid_may_send_only_where_both_may() -> None:
    shared = HEAD.replace("name: db,", "name: db,").replace(
        '"node:n2"', '"node:n1", "unix:uid:1500"'
    )
    documents, found = parse_text(
        shared.format(default="allow")
        + egress("[{to: [{ipBlocks: [0.0.0.0/0]}], ports: [443, 53]}]")
        + egress("[{to: [{ipBlocks: [0.0.0.0/0]}], ports: [53]}]", app="db"),
        "p.yaml",
    )
    compiled, found = check_documents(documents)
    assert compiled is not None, found
    nf = node_filter(compiled, "n1")
    assert [(uid, nf.egress.sources[i].name) for uid, i in nf.egress.uids if i is not None] == [
        (1500, "shop/db + shop/web")
    ]
    entries = nf.egress.sources[0].allowed
    assert admits(entries, "8.8.8.8", "tcp", 53) and not admits(entries, "8.8.8.8", "tcp", 443)


def test_the_hosts_own_traffic_is_filtered_only_under_default_egress_deny() -> None:
    rule = "  egress: [{ports: [53], protocol: udp, to: [{ipBlocks: [10.0.0.2/32]}]}]\n"
    assert node_filter(mesh(host(rule + "  defaultEgress: deny\n")), "n1").egress.host is not None
    assert problems(host(rule)) == [
        "p.yaml:25:11: warning: Host n1 has egress rules but defaultEgress is allow: every "
        "destination is open, so they have no effect; set defaultEgress: deny"
    ]
    closed = node_filter(mesh(host(rule + "  defaultEgress: deny\n")), "n1").egress
    assert closed.host is not None
    allowed = closed.host.allowed
    assert admits(allowed, "10.0.0.2", "udp", 53) and not admits(allowed, "10.0.0.2", "tcp", 53)
    # the sidecars' mesh traffic: tcp to the mesh workloads' sidecar ports, not their app ports
    assert admits(allowed, "10.0.1.7", "tcp", 5432) and admits(allowed, "fd00::7", "tcp", 5432)
    assert not admits(allowed, "10.0.1.7", "tcp", 15432)


def test_host_egress_rules_are_validated_at_their_position() -> None:
    bad = "  egress: [{protocol: icmp, to: [{namespaces: [x]}]}]\n  defaultEgress: maybe\n"
    assert problems(host(bad)) == [
        "p.yaml:25:12: error: missing required field 'spec.egress[0].ports'",
        "p.yaml:25:23: error: spec.egress[0].protocol: 'icmp' is not allowed; "
        "use 'tcp', 'udp' or 'sctp'",
        "p.yaml:25:35: error: unknown field 'spec.egress[0].to[0].namespaces'",
        "p.yaml:26:18: error: spec.defaultEgress: 'maybe' is not allowed; use 'allow' or 'deny'",
    ]


def test_no_packet_from_the_node_reaches_an_app_port_behind_a_sidecar_elsewhere() -> None:
    nf = node_filter(mesh(), "n1")
    assert [(str(a), p) for a, p in nf.egress.bypass] == [("10.0.1.7", 15432), ("fd00::7", 15432)]
    assert "ip daddr . tcp dport @bypass_v4 reject with tcp reset" in render_nftables(nf)
    assert "-p tcp -d 10.0.1.7 --dport 15432 -j REJECT --reject-with tcp-reset" in render_iptables(
        nf
    )


def test_a_workload_without_a_uid_selector_is_named_as_not_held_back() -> None:
    no_uid = HEAD.replace(', "unix:uid:1500"', "")
    documents, _ = parse_text(
        no_uid.format(default="deny") + host("  addresses: [10.0.0.5]\n"), "p.yaml"
    )
    compiled, found = check_documents(documents)
    assert compiled is not None, found
    text = render_nftables(node_filter(compiled, "n1"))
    assert (
        "#   egress NOT held back for shop/web: no unix:uid selector and no routed address" in text
    )


def test_a_routed_workload_is_keyed_by_its_address_in_forward_and_docker_user() -> None:
    routed = HEAD.replace('"node:n1", "unix:uid:1500"', '"node:n1"')
    documents, _ = parse_text(
        routed.format(default="deny") + egress("[{to: [{ipBlocks: [0.0.0.0/0]}], ports: [443]}]")
    )
    compiled, found = check_documents(documents)
    assert compiled is not None, found
    nf = node_filter(compiled, "n1")
    assert "ip saddr vmap @egress_from_v4" in render_nftables(nf)
    docker = render_iptables(nf, IptablesOptions("DOCKER-USER")).splitlines()
    assert "-A DOCKER-USER -i docker0 -s 10.0.0.5 -p tcp -m iprange --dst-range " in "\n".join(
        docker
    )
    assert docker.index(
        "-A DOCKER-USER -i docker0 -s 10.0.0.5 -j REJECT --reject-with icmp-admin-prohibited"
    ) < docker.index("-A DOCKER-USER -i docker0 -j RETURN")


DNS = "{ports: [53], protocol: udp, to: [{ipBlocks: [10.0.0.2/32]}]}"


def test_cloud_egress_is_the_union_of_the_senders_only_when_the_host_bounds_it() -> None:
    closed = mesh(
        host(f"  defaultEgress: deny\n  egress: [{DNS}]\n"),
        egress("[{to: [{ipBlocks: [203.0.113.0/24]}], ports: [443], protocols: [tcp]}]"),
    )
    rendered = render_aws_security_group(node_filter(closed, "n1"), egress=True)
    assert (
        ec2_problems(
            {"GroupId": "sg-0123456789abcdef0", **rendered}, "AuthorizeSecurityGroupEgress"
        )
        == ""
    )
    summary = sorted(
        (p["IpProtocol"], p["FromPort"], p["ToPort"], [r["CidrIp"] for r in p.get("IpRanges", [])])
        for p in rendered["IpPermissions"]
    )
    assert summary == [
        ("tcp", 443, 443, ["203.0.113.0/24"]),
        ("tcp", 5432, 5432, ["10.0.1.7/32"]),
        ("udp", 53, 53, ["10.0.0.2/32"]),
    ]
    bodies = render_gcp_firewall(node_filter(closed, "n1"))
    assert all(firewall_problems(b) == [] for b in bodies)
    outbound = sorted(
        (b["priority"], b.get("destinationRanges"), b.get("allowed", b.get("denied")))
        for b in bodies
        if b["direction"] == "EGRESS"
    )
    assert outbound[-2:] == [
        (65534, ["0.0.0.0/0"], [{"IPProtocol": "all"}]),
        (65534, ["::/0"], [{"IPProtocol": "all"}]),
    ]
    open_host = render_aws_security_group(node_filter(mesh(), "n1"), egress=True)
    assert [p["IpProtocol"] for p in open_host["IpPermissions"]] == ["-1"]
    assert all(b["direction"] == "INGRESS" for b in render_gcp_firewall(node_filter(mesh(), "n1")))


def test_the_seeds_hosts_render_no_outbound_rules() -> None:
    seed = load(["examples/seed"]).compiled
    assert seed is not None
    for node in ("web-1", "docker-1"):
        egress = node_filter(seed, node).egress
        assert (egress.sources, egress.host, egress.unkeyed, egress.bypass) == ((), None, (), ())
        assert "hook output" not in render_nftables(node_filter(seed, node))


def test_check_warns_about_a_restricted_workload_the_kernel_cannot_tell_apart() -> None:
    rule = egress("[{to: [{ipBlocks: [0.0.0.0/0]}], ports: [443]}]")
    on_host_address = host("  addresses: [10.0.0.5]\n")  # web's address is the host's
    as_root = HEAD.replace('"unix:uid:1500"', '"unix:uid:0"')  # uid 0 is never a key
    documents, _ = parse_text(as_root.format(default="allow") + rule + on_host_address, "p.yaml")
    compiled, found = check_documents(documents)
    assert compiled is not None
    assert [str(d) for d in found] == [
        "p.yaml:10:42: warning: workload shop/web's egress is not held back by its node's "
        "packet filter: it has no unix:uid:N selector (other than 0) and no address of its own "
        "on the node; add its uid as a selector"
    ]
    nf = node_filter(compiled, "n1")
    assert (nf.egress.uids, nf.egress.addresses, nf.egress.unkeyed) == ((), (), ("shop/web",))
    assert problems(rule, on_host_address) == []  # uid 1500 keys it
    assert problems(rule) == []  # so does an address of its own (no Host claims 10.0.0.5)
