"""The pure parts of running sidecars on a host: outbound-listener rules, the bypass scan, the
restart backoff, process records and the admin socket in the bootstrap."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from meshwarden.engine import load
from meshwarden.xds import bootstrap

from meshwarden._bypass import bypasses, listening
from meshwarden._outbound_filter import Guard, guards, ruleset
from meshwarden._sidecar_process import ProcessRecord, start_time
from meshwarden._up_progress import Restarts

WORKLOADS = """\
apiVersion: meshwarden.io/v1alpha1
kind: Mesh
metadata: {name: mesh}
spec: {trustDomain: t.test}
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {name: web-1, namespace: a, labels: {app: web}}
spec:
  addresses: [10.0.0.5]
  selectors: [unix:uid:1001, unix:path:/usr/bin/web]
  ports: [{port: 8080, targetPort: 18080, protocol: http}, {port: 9000, protocol: tcp}]
  upstreams: [{service: a/db, port: 5432, localPort: 15432}]
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {name: job-1, namespace: a}
spec:
  upstreams: [{service: a/db, port: 5432, localPort: 15433}]
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {name: db-1, namespace: a, labels: {app: db}}
spec:
  addresses: [10.0.0.6]
  ports: [{port: 5432, protocol: tcp}]
---
apiVersion: meshwarden.io/v1alpha1
kind: Service
metadata: {name: db, namespace: a}
spec:
  selector: {matchLabels: {app: db}}
  ports: [{port: 5432, protocol: tcp}]
"""


def _workloads(tmp_path: Path) -> list:
    (tmp_path / "mesh.yaml").write_text(WORKLOADS)
    compiled = load([tmp_path]).compiled
    assert compiled is not None
    return list(compiled.registry.workloads.values())


def test_outbound_listeners_are_guarded_by_the_workloads_uid_and_the_others_are_named(
    tmp_path: Path,
) -> None:
    found, unguarded = guards(_workloads(tmp_path))
    assert found == [Guard("a/web-1", 15432, frozenset({1001}))]
    assert unguarded == ["a/job-1"]  # upstreams, no unix:uid selector: cannot be guarded
    script = ruleset("up_abc", found)
    assert "flush chain inet meshwarden_outbound up_abc" in script  # replaced, not appended
    assert (
        'oifname "lo" ip daddr 127.0.0.1 tcp dport 15432 tcp flags & (syn | ack) == syn '
        'meta skuid != { 1001 } reject with tcp reset comment "a/web-1"' in script
    )


def test_an_app_on_a_wildcard_or_host_address_of_a_target_port_is_a_bypass(
    tmp_path: Path,
) -> None:
    sockets = {
        ("0.0.0.0", 18080),  # the web app on every address: bypass
        ("10.0.0.5", 8080),  # the sidecar's own inbound listener: fine
        ("10.0.0.5", 9000),  # port 9000 has no targetPort: this is the sidecar, fine
        ("::", 5432),  # the db app on every IPv6 address: bypass (and the sidecar could not bind)
        ("0.0.0.0", 22),  # not meshed
    }
    found = [str(b) for b in bypasses(_workloads(tmp_path), sockets)]
    assert found == [
        "warning: a/db-1: an app listens on :: port 5432 (targetPort of port 5432), so other "
        "hosts reach it without its sidecar; bind the app to 127.0.0.1",
        "warning: a/web-1: an app listens on 0.0.0.0 port 18080 (targetPort of port 8080), so "
        "other hosts reach it without its sidecar; bind the app to 127.0.0.1",
    ]


def test_listening_reads_non_loopback_listen_sockets_from_proc_net(tmp_path: Path) -> None:
    header = "  sl  local_address rem_address   st\n"
    (tmp_path / "tcp").write_text(
        header
        + "   0: 00000000:4E20 00000000:0000 0A\n"  # 0.0.0.0:20000 LISTEN
        + "   1: 0100007F:4E21 00000000:0000 0A\n"  # 127.0.0.1:20001 LISTEN: loopback
        + "   2: 0500000A:4E22 0600000A:1F90 01\n"  # 10.0.0.5:20002 ESTABLISHED
        + "   3: 0500000A:4E23 00000000:0000 0A\n"  # 10.0.0.5:20003 LISTEN
    )
    (tmp_path / "tcp6").write_text(
        header
        + "   0: 00000000000000000000000000000000:4E24 0:0 0A\n"  # [::]:20004
        + "   1: 00000000000000000000000001000000:4E25 0:0 0A\n"  # [::1]:20005 loopback
        + "   2: 0000000000000000FFFF00000100007F:4E26 0:0 0A\n"  # ::ffff:127.0.0.1 loopback
    )
    assert listening(tmp_path) == {("0.0.0.0", 20000), ("10.0.0.5", 20003), ("::", 20004)}


def test_restart_delay_doubles_per_exit_in_a_row_up_to_30_s_and_resets_after_a_stable_run() -> None:
    restarts = Restarts(started=0.0)
    delays = []
    now = 1.0
    for _ in range(7):
        delays.append(restarts.exited(now))
        assert not restarts.ready(now + delays[-1] - 0.1) and restarts.ready(now + delays[-1])
        now += delays[-1]
        restarts.restarted(now)
        now += 1.0
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    assert restarts.exited(now + 61.0) == 1  # ran a minute: a fresh start


def test_a_process_record_matches_only_the_process_it_was_taken_of(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    started = start_time(child.pid)
    assert started is not None
    record = ProcessRecord(child.pid, started, "x.json")
    record.save(tmp_path / "x.pid.json")
    assert ProcessRecord.load(tmp_path / "x.pid.json") == record
    assert record.alive()
    assert not ProcessRecord(child.pid, started + 1, "x.json").alive()  # a recycled pid
    child.kill()
    child.wait()
    assert not record.alive()
    assert ProcessRecord.load(tmp_path / "absent.json") is None
    os.symlink(tmp_path / "elsewhere", tmp_path / "y.pid.json.tmp")
    record.save(tmp_path / "y.pid.json")  # a planted symlink at the temp name is not followed
    assert not (tmp_path / "elsewhere").exists()


def test_the_sidecar_admin_is_a_0600_unix_socket_or_absent() -> None:
    config = bootstrap(
        "a/web-1", "127.0.0.1", 8443, "/s.sock", admin_socket="/d/admin.sock", trust_domain="t.test"
    )
    assert config["admin"] == {"address": {"pipe": {"path": "/d/admin.sock", "mode": 0o600}}}
    assert "admin" not in bootstrap("a/web-1", "127.0.0.1", 8443, "/s.sock", trust_domain="t.test")
