"""The web console's JSON endpoints and server, without a browser: the graph built from flow
records (edges, counts, causes, newest decision, plaintext peers, filters), the policies view
(rule line ranges, private JWKS members never served), and the HTTP server's guards (loopback
Host names only, GET only, security headers, server-sent events)."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from meshwarden.engine import Effect
from meshwarden.xds import EgressEnds, Flow, Verdict

from meshwarden._console import Console, ConsoleOptions, ConsoleSources
from meshwarden._console_graph import GraphQuery, graph
from meshwarden._console_graph import edge as edge_detail
from meshwarden._console_policies import policies_view
from meshwarden._flows import FlowLog
from meshwarden._policies import Policies
from meshwarden.cli import main
from meshwarden.cli._ui import explain_json

SHOP = Path(__file__).resolve().parents[3] / "examples" / "shop"
FRONTEND = "spiffe://example.org/ns/shop/sa/frontend"
OPS = "spiffe://example.org/ns/ops/sa/ops"
PRIVATE_D = "nr3EbkDD0OrNT3GUP1Ko4RcsS9yBfDwDPxkTkgk8Vkw"


def _flow(
    identity: str | None,
    verdict: Verdict,
    *,
    ip: str | None = None,
    at: float = 0,
    workload: str = "shop/backend-1",
    port: int = 8080,
) -> Flow:
    return Flow(
        time.time() + at, workload, port, identity, ip, "http", "GET", "/x", 200, verdict, None
    )


def _policies(directory: Path = SHOP) -> Policies:
    policies = Policies(directory, report=io.StringIO(), settle=0)
    policies.reload_if_changed()
    assert policies.mesh is not None, policies.status.errors
    return policies


def _view(policies: Policies) -> dict[str, Any]:
    assert policies.contents is not None
    return policies_view(policies.mesh, policies.contents.by_path())


ALLOW = Verdict(Effect.ALLOW, "shop/backend-access", 0)
DENY = Verdict(Effect.DENY, "meshwarden-system/no-debug-anywhere", 0)
WOULD_DENY = Verdict(Effect.ALLOW, "shop/backend-access", 0, Effect.DENY, "shop/tighten-frontend")


def test_an_edge_counts_its_decisions_names_causes_and_takes_the_newest_decision() -> None:
    registry = _policies().registry
    flows = [_flow(FRONTEND, ALLOW), _flow(FRONTEND, ALLOW), _flow(FRONTEND, DENY)]
    view = graph(registry, flows, GraphQuery())
    [edge] = view["edges"]
    assert (edge["source"], edge["target"], edge["port"]) == (
        "shop/frontend-1",
        "shop/backend-1",
        8080,
    )
    assert edge["decision"] == "deny" and edge["counts"] == {"allow": 2, "deny": 1, "wouldDeny": 0}
    assert [(c["cause"], c["count"]) for c in edge["causes"]] == [
        ("shop/backend-access#0", 2),
        ("meshwarden-system/no-debug-anywhere#0", 1),
    ]
    assert "flows" not in edge  # the graph stays small; /api/edge has them
    detail = edge_detail(registry, flows, edge["id"])
    assert detail is not None and {**detail, "flows": None} == {**edge, "flows": None}
    assert [f["decision"] for f in detail["flows"]] == ["deny", "allow", "allow"]  # newest first
    assert edge_detail(registry, flows, "ops/ops-1->shop/backend-1:8080") is None
    assert {n["id"] for n in view["nodes"]} == {
        "shop/frontend-1",
        "shop/backend-1",
        "shop/db-1",
        "ops/ops-1",
    }


def test_plaintext_peers_unknown_identities_and_dry_run_denials_are_told_apart() -> None:
    registry = _policies().registry
    stranger = Verdict(Effect.ALLOW, "shop/backend-access", 2)
    flows = [
        _flow(None, stranger, ip="127.0.0.9"),
        _flow("spiffe://other.org/x", DENY),
        _flow(FRONTEND, WOULD_DENY),
    ]
    view = graph(registry, flows, GraphQuery())
    edges = {e["source"]: e for e in view["edges"]}
    assert edges["ip:127.0.0.9"]["plaintext"] and edges["ip:127.0.0.9"]["decision"] == "allow"
    assert edges["shop/frontend-1"]["decision"] == "would-deny"
    kinds = {n["id"]: n["kind"] for n in view["nodes"]}
    assert kinds["ip:127.0.0.9"] == "plaintext" and kinds["spiffe://other.org/x"] == "identity"


def test_an_egress_denial_is_an_edge_and_an_allowed_egress_is_not_counted_twice() -> None:
    """The frontend's sidecar reports its connection too (egress): allowed, the backend's own
    record already counts it; refused by egress, it is the only record of the attempt."""
    registry = _policies().registry
    ends = EgressEnds("shop/frontend-1", "shop/backend", None, None)
    refused = Verdict(Effect.DENY, "shop/no-backend", 0)
    flows = [
        _flow(FRONTEND, ALLOW),
        replace(_flow(FRONTEND, ALLOW), egress=ends, protocol="tcp"),
        replace(_flow(FRONTEND, refused), egress=ends, protocol="tcp"),
    ]
    [edge] = graph(registry, flows, GraphQuery())["edges"]
    assert edge["counts"] == {"allow": 1, "deny": 1, "wouldDeny": 0}
    assert edge["decision"] == "deny" and edge["causes"][-1]["cause"] == "shop/no-backend#0"


def test_filters_keep_the_edges_asked_for() -> None:
    registry = _policies().registry
    flows = [
        _flow(FRONTEND, ALLOW),
        _flow(OPS, DENY),
        _flow(None, ALLOW, ip="127.0.0.9", workload="shop/db-1", port=5432),
    ]

    def edges(**query: Any) -> set[str]:
        return {e["id"] for e in graph(registry, flows, GraphQuery(**query))["edges"]}

    assert edges(decision="deny") == {"ops/ops-1->shop/backend-1:8080"}
    assert edges(identity=FRONTEND) == {"shop/frontend-1->shop/backend-1:8080"}
    assert edges(identity="127.0.0.9") == {"ip:127.0.0.9->shop/db-1:5432"}
    assert edges(namespace="ops") == {"ops/ops-1->shop/backend-1:8080"}
    ops_only = graph(registry, flows, GraphQuery(namespace="ops"))
    assert {n["id"] for n in ops_only["nodes"]} == {"ops/ops-1", "shop/backend-1"}
    with pytest.raises(ValueError, match="decision must be one of"):
        GraphQuery.from_params({"decision": "maybe"})
    with pytest.raises(ValueError, match="minutes"):
        GraphQuery.from_params({"minutes": "0"})


def test_a_sidecars_sync_state_comes_from_the_health_report() -> None:
    nack = {"state": "NACK", "reason": "Envoy rejected LDS v2", "svid": {"expiry": "2030-01-01"}}
    status = {
        "sidecars": {"shop/backend-1": nack, "shop/frontend-1": {"applied": False}},
        "sidecarProblems": {"shop/db-1": "its Envoy exited (status 1)"},
    }
    view = graph(_policies().registry, [], GraphQuery(), status)
    sync = {n["id"]: (n["sync"], n["syncReason"]) for n in view["nodes"]}
    assert sync == {
        "shop/backend-1": ("NACK", "Envoy rejected LDS v2"),
        "shop/frontend-1": ("STALE", "its current configuration is not ACKed yet"),
        "shop/db-1": ("PROBLEM", "its Envoy exited (status 1)"),
        "ops/ops-1": ("NONE", "no sidecar connected to this control plane"),
    }


def test_policies_view_gives_each_rule_its_lines_in_the_file() -> None:
    view = _view(_policies())
    [access] = [
        d
        for d in view["namespaces"]["shop"]
        if d["ref"] == "shop/backend-access" and d["kind"] == "AuthorizationPolicy"
    ]
    lines = (SHOP / "policies.yaml").read_text().splitlines()
    starts = [r["lines"][0] for r in access["rules"]]
    assert [lines[n - 1].split("#")[0].strip() for n in starts] == ["- from:"] * 3
    first, last = access["rules"][2]["lines"]
    assert "paths: [/api/catalogue]" in lines[last - 1] and first < last
    assert view["files"][access["file"]] == (SHOP / "policies.yaml").read_text()


def test_an_inline_jwks_with_private_key_members_is_never_served(tmp_path: Path) -> None:
    shutil.copytree(SHOP, tmp_path / "shop")
    policies_file = tmp_path / "shop" / "policies.yaml"
    text = policies_file.read_text().replace(
        '"kid": "demo",', f'"kid": "demo", "d": "{PRIVATE_D}",'
    )
    policies_file.write_text(text)
    view = _view(_policies(tmp_path / "shop"))
    served = view["files"][str(policies_file)]
    assert PRIVATE_D not in served and PRIVATE_D in text
    assert len(served.splitlines()) == len(text.splitlines())  # line numbers stay right


def test_a_rejected_change_shows_its_errors_while_the_last_good_version_is_listed(
    tmp_path: Path,
) -> None:
    shutil.copytree(SHOP, tmp_path / "shop")
    policies = _policies(tmp_path / "shop")
    good = policies.status.version
    broken = tmp_path / "shop" / "policies.yaml"
    broken.write_text(broken.read_text().replace("methods: [GET, HEAD]", "method: [GET, HEAD]"))
    policies.reload_if_changed()
    console = Console(ConsoleOptions(), ConsoleSources(policies, FlowLog(10), dict))
    view = console._policies_json()
    assert view["version"] == good and len(view["rejectedChange"]) == 1
    [error] = [d for d in view["diagnostics"] if d["severity"] == "error"]
    lines = broken.read_text().splitlines()
    line = next(n for n, text in enumerate(lines, 1) if "method: [GET, HEAD]" in text)
    assert (error["file"], error["line"]) == (str(broken), line)
    assert "unknown field" in error["message"]


def test_explain_json_is_the_cli_answer_and_names_bad_parameters(
    capsys: pytest.CaptureFixture[str],
) -> None:
    mesh = _policies().mesh
    assert mesh is not None
    params = {
        "to": "shop/backend-1",
        "port": "8080",
        "fromWorkload": "shop/frontend-1",
        "method": "POST",
        "path": "/api/orders",
    }
    answer = explain_json(mesh, params)
    code = main(
        [
            "explain",
            str(SHOP),
            "--to",
            "shop/backend-1",
            "--port",
            "8080",
            "--from-workload",
            "shop/frontend-1",
            "--method",
            "POST",
            "--path",
            "/api/orders",
            "-o",
            "json",
        ]
    )
    assert code == 1 and json.loads(capsys.readouterr().out) == answer
    with pytest.raises(ValueError, match="fromWorkload shop/frontnd-1: no such workload"):
        explain_json(mesh, {**params, "fromWorkload": "shop/frontnd-1"})
    with pytest.raises(ValueError, match=r"to \(NS/NAME\) and port are required"):
        explain_json(mesh, {"to": "shop/backend-1"})


def test_a_non_loopback_console_needs_the_explicit_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert "not a loopback address" in ConsoleOptions("0.0.0.0:8080").problem()
    assert ConsoleOptions("0.0.0.0:8080", allow_remote=True).problem() == ""
    assert ConsoleOptions("[::1]:0").problem() == ""
    assert "{traceId}" in ConsoleOptions(trace_url="http://jaeger/trace/").problem()
    code = main(["up", str(SHOP), "--ui", "10.1.2.3:8080"])
    assert code == 2
    err = capsys.readouterr().err
    assert "meshwarden up: error: --ui 10.1.2.3:8080: not a loopback address" in err


async def _get(
    port: int, path: str, host: str = "127.0.0.1", method: str = "GET"
) -> tuple[str, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nhost: {host}\r\n\r\n".encode())
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *fields = head.decode().split("\r\n")
    headers = dict(f.lower().split(": ", 1) for f in fields)
    return status.split(" ", 1)[1], headers, body


async def _console(flows: FlowLog) -> Console:
    status = {"status": "ok", "sidecars": {"shop/backend-1": {"applied": True, "streams": 1}}}
    sources = ConsoleSources(_policies(), flows, lambda: status)
    console = Console(ConsoleOptions(explain=explain_json), sources)
    await console.start()
    return console


def test_the_console_serves_loopback_host_names_only_and_get_only() -> None:
    async def scenario() -> None:
        console = await _console(FlowLog(100))
        port = console.endpoint.port
        try:
            status, headers, body = await _get(port, "/", host=f"127.0.0.1:{port}")
            assert status == "200 OK" and b"meshwarden" in body
            assert "script-src 'self'" in headers["content-security-policy"]
            assert headers["x-content-type-options"] == "nosniff"
            rebound, _, body = await _get(port, "/api/graph", host=f"attacker.example:{port}")
            assert rebound == "403 Forbidden" and b"not a loopback name" in body
            assert (await _get(port, "/api/graph", host=f"localhost:{port}"))[0] == "200 OK"
            assert (await _get(port, "/api/graph", method="POST"))[0] == "405 Method Not Allowed"
            workload = json.loads((await _get(port, "/api/workload?ref=shop/backend-1"))[2])
            assert workload["sidecar"] == {"applied": True, "streams": 1}
            assert workload["sync"] == "SYNCED"
            assert workload["identity"] == "spiffe://example.org/ns/shop/sa/backend"
            missing, _, body = await _get(port, "/api/edge?id=ops/ops-1->shop/backend-1:8080")
            assert missing == "404 Not Found" and b"no edge" in body
            bad, _, body = await _get(port, "/api/explain?to=shop/backend-1&port=9")
            assert bad == "400 Bad Request" and b"has no such port" in body
        finally:
            await console.stop()

    asyncio.run(scenario())


def test_events_stream_the_policy_version_then_each_new_flow() -> None:
    async def scenario() -> None:
        flows = FlowLog(100)
        console = await _console(flows)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", console.endpoint.port)
            writer.write(b"GET /api/events HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
            events = _events(reader)
            first = await asyncio.wait_for(anext(events), 5)
            assert (
                first[0] == "policies"
                and first[1]["version"] == console.sources.policies.mesh.version
            )  # type: ignore[union-attr]
            flows.add([_flow(OPS, DENY)])
            name, data = await asyncio.wait_for(anext(events), 5)
            assert name == "flow" and (data["source"], data["decision"]) == (OPS, "deny")
            writer.close()
        finally:
            await console.stop()

    asyncio.run(scenario())


async def _events(reader: asyncio.StreamReader) -> AsyncIterator[tuple[str, Any]]:
    """(event name, data) of a server-sent event stream, after the response head."""
    await reader.readuntil(b"\r\n\r\n")
    while True:
        block = (await reader.readuntil(b"\n\n")).decode()
        fields = dict(
            line.split(": ", 1)
            for line in block.splitlines()
            if ": " in line and not line.startswith(":")
        )
        if "event" in fields:
            yield fields["event"], json.loads(fields["data"])
