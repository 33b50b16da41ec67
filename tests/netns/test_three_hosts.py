"""The "Three hosts" walkthrough of docs/operations.md, followed step by step on three network
namespaces (host-a runs the control plane and the frontend, host-b the backend, host-c the
database; examples/shop-hosts): one agent per host attested with a join token, each sidecar run
by `meshwarden sidecar --user` as its workload's own uid and told apart by `unix:uid:N`
selectors. Then: every sidecar SYNCED in `meshwarden status`, requests across hosts allowed and
denied by the policies, a sidecar whose uid matches no Workload named by the agent (a
timestamped log line) and by the sidecar itself, and no Envoy deprecation warning."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ._hosts import ADDRESSES, ThreeHosts, meshwarden

EXAMPLE = Path(__file__).parents[2] / "examples" / "shop-hosts"
SERVER = f"{ADDRESSES['host-a']}:8443"  # the node API, for the agents
ADS = f"{ADDRESSES['host-a']}:8444"  # for the sidecars
# workload, host, uid of its sidecar, app port (behind the sidecar)
WORKLOADS = (
    ("shop/frontend-1", "host-a", 2001, 18080),
    ("shop/backend-1", "host-b", 2002, 18081),
    ("shop/db-1", "host-c", 2003, 15433),
)
STRAY_UID = 2999  # no Workload names it
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def _control_plane(lab: ThreeHosts) -> None:
    data = lab.path("host-a", "server")
    lab.spawn(
        "host-a",
        meshwarden(
            "server",
            str(EXAMPLE),
            "--data-dir",
            str(data),
            "--listen",
            "0.0.0.0:8443",
            "--xds-listen",
            "0.0.0.0:8444",
            "--health",
            "127.0.0.1:9090",
        ),
        "server.log",
    )
    lab.wait_for(lambda: "ready " in lab.log("server.log"), "the control plane")
    lab.sh(
        *meshwarden(
            "ca", "bundle", "--data-dir", str(data), "--output-file", str(lab.root / "bundle.pem")
        )
    )


def _agent(lab: ThreeHosts, host: str) -> Path:
    token = lab.sh(
        *meshwarden(
            "token",
            "create",
            "--data-dir",
            str(lab.root / "host-a" / "server"),
            "--node",
            host,
            "--ttl",
            "10m",
        )
    ).strip()
    (lab.path(host, "etc") / "join-token").write_text(token)
    run = lab.path(host, "run", mode=0o755)
    lab.spawn(
        host,
        meshwarden(
            "agent",
            "--server",
            SERVER,
            "--join-token-file",
            str(lab.root / host / "etc" / "join-token"),
            "--server-bundle",
            str(lab.root / "bundle.pem"),
            "--data-dir",
            str(lab.path(host, "agent")),
            "--socket",
            str(run / "agent.sock"),
            "--sds-socket",
            str(run / "sds.sock"),
        ),
        f"{host}-agent.log",
    )
    lab.wait_for((run / "sds.sock").exists, f"the agent of {host}")
    return run / "sds.sock"


def _sidecar(lab: ThreeHosts, workload: str, host: str, uid: int, sds: Path, log: str) -> None:
    admin = lab.root / host / f"admin-{uid}" / "admin.sock"  # the sidecar makes the directory
    lab.spawn(
        host,
        meshwarden(
            "sidecar",
            "--workload",
            workload,
            "--user",
            str(uid),
            "--server",
            ADS,
            "--trust-domain",
            "shop.example",
            "--sds-socket",
            str(sds),
            "--admin-socket",
            str(admin),
            "--log-level",
            "info",
        ),  # deprecations are warnings; info too
        log,
    )


@pytest.fixture(scope="module")
def lab() -> Iterator[ThreeHosts]:
    assert shutil.which("ip"), "the three-hosts walkthrough needs iproute2"
    lab = ThreeHosts().start()
    try:
        _control_plane(lab)
        sockets = {host: _agent(lab, host) for host in ADDRESSES}
        for workload, host, uid, port in WORKLOADS:
            lab.spawn(
                host,
                ["python3", "-m", "http.server", "--bind", "127.0.0.1", str(port)],
                f"app-{port}.log",
            )
            _sidecar(lab, workload, host, uid, sockets[host], f"sidecar-{uid}.log")
        _sidecar(lab, "shop/backend-1", "host-b", STRAY_UID, sockets["host-b"], "stray.log")
        yield lab
    finally:
        lab.close()


def _status_json(lab: ThreeHosts) -> dict[str, str]:
    done = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            lab.ns["host-a"],
            *meshwarden("status", "--server", "127.0.0.1:9090", "-o", "json"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    rows = json.loads(done.stdout)["sidecars"] if done.stdout else []
    return {row["workload"]: row["state"] for row in rows}


def _get(lab: ThreeHosts, host: str, url: str) -> str:
    """HTTP status of GET url from `host`, or the connection error's name."""
    code = (
        "import sys, urllib.request, urllib.error\n"
        "try:\n"
        "    print(urllib.request.urlopen(sys.argv[1], timeout=5).status)\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code)\n"
        "except Exception as e:\n"
        "    print(type(e).__name__)\n"
    )
    return lab.sh("python3", "-c", code, url, host=host).strip()


def test_every_sidecar_gets_its_own_identity_by_uid_and_is_synced(lab: ThreeHosts) -> None:
    wanted = {workload: "SYNCED" for workload, *_ in WORKLOADS}
    lab.wait_for(lambda: _status_json(lab) == wanted, f"status {wanted}", timeout=90)
    for _workload, host, uid, _port in WORKLOADS:
        admin = lab.root / host / f"admin-{uid}"
        assert (admin.stat().st_uid, admin.stat().st_mode & 0o777) == (uid, 0o700)
        pid = next(p.pid for p, _ in lab.processes if f"admin-{uid}" in " ".join(p.args))  # type: ignore[arg-type]
        status = Path(f"/proc/{pid}/status").read_text()
        assert re.search(rf"^Uid:\s+{uid}\s+{uid}\s+{uid}\s+{uid}$", status, re.M), status
        assert Path(f"/proc/{pid}/exe").resolve().name == "envoy"


def test_requests_cross_hosts_through_the_sidecars_as_the_policies_say(lab: ThreeHosts) -> None:
    lab.wait_for(lambda: _status_json(lab).get("shop/db-1") == "SYNCED", "the mesh", timeout=90)
    assert _get(lab, "host-a", "http://127.0.0.1:15080/api/items") in ("200", "404")
    assert _get(lab, "host-a", "http://127.0.0.1:15080/admin/x") == "403"  # not in the policy
    assert _get(lab, "host-b", "http://127.0.0.1:15432/") in ("200", "404")  # tcp to the db
    # plaintext from another host straight to the backend's sidecar: mTLS only
    plaintext = _get(lab, "host-c", f"http://{ADDRESSES['host-b']}:8080/api/items")
    assert plaintext not in ("200", "404", "403"), plaintext
    # the app behind the sidecar listens on loopback only
    direct = _get(lab, "host-a", f"http://{ADDRESSES['host-b']}:18081/")
    assert direct == "URLError", direct


def test_a_sidecar_whose_uid_matches_no_workload_is_named_by_agent_and_sidecar(
    lab: ThreeHosts,
) -> None:
    lab.wait_for(lambda: "no identity" in lab.log("host-b-agent.log"), "the agent's warning")
    line = next(li for li in lab.log("host-b-agent.log").splitlines() if "no identity" in li)
    assert re.match(rf"{STAMP} WARNING meshwarden\.xds\._sds: SDS: no identity", line), line
    assert f"unix:uid:{STRAY_UID}" in line
    assert "spiffe://shop.example/ns/shop/sa/backend needs node:host-b, unix:uid:2002" in line
    lab.wait_for(lambda: "warning" in lab.log("stray.log"), "the sidecar's warning")
    assert (
        f"meshwarden sidecar: warning: the agent has no identity for this sidecar "
        f"(uid {STRAY_UID})" in lab.log("stray.log")
    )


def test_no_envoy_logs_a_deprecation_warning_for_our_configuration(lab: ThreeHosts) -> None:
    lab.wait_for(lambda: _status_json(lab).get("shop/db-1") == "SYNCED", "the mesh", timeout=90)
    for _workload, _host, uid, _port in WORKLOADS:
        log = lab.log(f"sidecar-{uid}.log")
        assert "deprecat" not in log.lower(), log  # "Using deprecated option ..."
        # the runtime key of old: "There is no configured limit to the number of allowed
        # active downstream connections. Configure a limit in `envoy.resource_monitors...`"
        assert "no configured limit" not in log, log
