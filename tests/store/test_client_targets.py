"""How agents and sidecars are told about every replica: one gRPC target over all of them for
the agent, one ADS cluster with all of them for the sidecar."""

from __future__ import annotations

import json

import pytest
from meshwarden.identities._node_client import channel_target
from meshwarden.xds import XDS_CLUSTER, bootstrap

from meshwarden.cli import main
from meshwarden.cli._types import split_host_port


def test_servers_become_one_target_over_every_address():
    assert channel_target("127.0.0.1:8443") == "ipv4:127.0.0.1:8443"
    assert channel_target("127.0.0.1:8443,127.0.0.2:8443") == "ipv4:127.0.0.1:8443,127.0.0.2:8443"
    assert channel_target("[::1]:1,[::1]:2") == "ipv6:[::1]:1,[::1]:2"


def test_replicas_of_both_address_families_are_refused():
    with pytest.raises(ValueError, match="one address family"):
        channel_target("127.0.0.1:8443,[::1]:8443")


def test_the_sidecar_bootstrap_lists_every_replica_in_its_ads_cluster(tmp_path, capsys):
    argv = [
        "bootstrap",
        "--workload",
        "shop/backend-1",
        "--trust-domain",
        "example.org",
        "--sds-socket",
        str(tmp_path / "sds.sock"),
        "--server",
        "127.0.0.1:8443,127.0.0.2:8443,127.0.0.1:8443",
    ]
    assert main(argv) == 0
    clusters = json.loads(capsys.readouterr().out)["staticResources"]["clusters"]
    xds = next(c for c in clusters if "transportSocket" in c)  # the mTLS one: ADS
    endpoints = [
        e["endpoint"]["address"]["socketAddress"]
        for e in xds["loadAssignment"]["endpoints"][0]["lbEndpoints"]
    ]
    assert sorted(endpoints, key=lambda e: e["address"]) == [
        {"address": "127.0.0.1", "portValue": 8443},
        {"address": "127.0.0.2", "portValue": 8443},
    ]
    assert main(argv) == 0  # the same bootstrap every time
    again = json.loads(capsys.readouterr().out)["staticResources"]["clusters"]
    assert again == clusters


def _ads_endpoints(workload: str, servers: list[str]) -> list[str]:
    config = bootstrap(
        workload,
        *split_host_port(servers[0]),
        "/run/sds.sock",
        trust_domain="example.org",
        replicas=[split_host_port(s) for s in servers[1:]],
    )
    xds = next(c for c in config["staticResources"]["clusters"] if c["name"] == XDS_CLUSTER)
    return [
        "{address}:{portValue}".format(**e["endpoint"]["address"]["socketAddress"])
        for e in xds["loadAssignment"]["endpoints"][0]["lbEndpoints"]
    ]


def test_the_sidecars_of_a_failed_replica_spread_over_the_others():
    """Envoy moves to the next address of its ADS cluster when its replica goes away: the
    sidecars given the same --server list must not all have the same next one."""
    servers = ["127.0.0.1:8443", "127.0.0.2:8443", "127.0.0.3:8443"]
    moved_to: dict[str, dict[str, int]] = {s: {} for s in servers}
    for n in range(300):
        order = _ads_endpoints(f"shop/backend-{n}", servers)
        assert sorted(order) == servers
        for position, failed in enumerate(order):
            after = order[(position + 1) % len(order)]
            moved_to[failed][after] = moved_to[failed].get(after, 0) + 1
    for failed, counts in moved_to.items():
        assert set(counts) == set(servers) - {failed}, counts
        assert min(counts.values()) >= 100, f"the sidecars of {failed} moved to {counts}"


@pytest.mark.parametrize("servers", ["127.0.0.1:8443,", "127.0.0.1:8443,nope"])
def test_a_malformed_replica_list_is_a_usage_error(servers, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["agent", "--server", servers, "--data-dir", "/nonexistent"])
    assert stopped.value.code == 2
    assert "--server" in capsys.readouterr().err
