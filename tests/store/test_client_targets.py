"""How agents and sidecars are told about every replica: one gRPC target over all of them for
the agent, one ADS cluster with all of them for the sidecar."""

from __future__ import annotations

import json

import pytest
from meshwarden.identities._node_client import channel_target

from meshwarden.cli import main


def test_one_server_is_used_as_given_and_several_become_one_target_over_all():
    assert channel_target("cp.example:8443") == "cp.example:8443"
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
    assert endpoints == [
        {"address": "127.0.0.1", "portValue": 8443},
        {"address": "127.0.0.2", "portValue": 8443},
    ]


@pytest.mark.parametrize("servers", ["127.0.0.1:8443,", "127.0.0.1:8443,nope"])
def test_a_malformed_replica_list_is_a_usage_error(servers, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["agent", "--server", servers, "--data-dir", "/nonexistent"])
    assert stopped.value.code == 2
    assert "--server" in capsys.readouterr().err
