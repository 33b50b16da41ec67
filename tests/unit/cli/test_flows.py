"""The flow log store (bound, drops, queries, follow, the decisions counter), its HTTP route
next to /healthz, and `meshwarden flows` against a real endpoint; a flood of access-log
messages into the receiver never takes the store past its bound."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import pytest
from envoy_data_plane.envoy.config.core.v3 import Address, Metadata, Node, SocketAddress
from envoy_data_plane.envoy.data.accesslog.v3 import (
    AccessLogCommon,
    HttpAccessLogEntry,
    HttpRequestProperties,
    HttpResponseProperties,
)
from envoy_data_plane.envoy.service.accesslog.v3 import (
    StreamAccessLogsMessage,
    StreamAccessLogsMessageHttpAccessLogEntries,
    StreamAccessLogsMessageIdentifier,
)
from envoy_data_plane.google.protobuf import Struct
from meshwarden.engine import Direction
from meshwarden.xds import EgressEnds, workload_authorizer
from meshwarden.xds._access_log import AccessLogReceiver, Flow
from meshwarden.xds._decisions import RBAC_NS, Verdict
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from meshwarden._flows import FlowLog, FlowQuery
from meshwarden._health import HealthEndpoint
from meshwarden.cli import main

NOW = 1_800_000_000.0
ALLOW = Verdict("allow", "shop/backend-access", 0)
DENY = Verdict("deny", "default:deny")


def flow(
    n: int, verdict: Verdict = ALLOW, workload: str = "shop/backend-1", age: float = 0.0
) -> Flow:
    return Flow(
        NOW - age,
        workload,
        8080,
        "spiffe://td/ns/shop/sa/frontend-1",
        "10.0.0.2",
        "http",
        "GET",
        f"/n/{n}",
        403 if verdict.decision == "deny" else 200,
        verdict,
        f"{n:032x}",
    )


def test_the_store_keeps_the_newest_records_within_its_bound_and_counts_drops() -> None:
    log = FlowLog(size=3, clock=lambda: NOW)
    log.add([flow(i) for i in range(5)])
    log.add([flow(5)])
    assert [f.path for f in log.query(FlowQuery())] == ["/n/3", "/n/4", "/n/5"]
    assert log.stats() == {
        "size": 3,
        "stored": 3,
        "received": 6,
        "dropped": 3,
        "droppedByWorkload": {"shop/backend-1": 3},
        "followers": 0,
        "followerMisses": 0,
    }
    with pytest.raises(ValueError, match="at least 1"):
        FlowLog(size=0)


def test_queries_select_by_denied_workload_age_and_limit() -> None:
    log = FlowLog(clock=lambda: NOW)
    log.add(
        [
            flow(0, age=600),
            flow(1, DENY, age=120),
            flow(2, workload="shop/db-1"),
            flow(3, DENY),
            flow(4),
        ]
    )
    paths = lambda **q: [f.path for f in log.query(FlowQuery(**q))]  # noqa: E731
    assert paths(denied=True) == ["/n/1", "/n/3"]
    assert paths(workload="shop/db-1") == ["/n/2"]
    assert paths(since=300) == ["/n/1", "/n/2", "/n/3", "/n/4"]
    assert paths(since=60, denied=True) == ["/n/3"]
    assert paths(limit=2) == ["/n/3", "/n/4"]
    assert FlowQuery.from_params({"denied": "1", "workload": "a/b", "since": "300"}) == (
        FlowQuery(True, "a/b", 300.0)
    )
    with pytest.raises(ValueError, match="must be numbers"):
        FlowQuery.from_params({"since": "5m"})


def test_follow_gives_the_backlog_then_new_records_whatever_their_age() -> None:
    async def scenario() -> list[str | None]:
        log = FlowLog(clock=lambda: NOW)
        log.add([flow(0, age=600), flow(1, DENY), flow(2)])
        stream = log.follow(FlowQuery(denied=True, since=60))
        seen = [(await anext(stream)).path]  # type: ignore[union-attr]
        log.add([flow(3), flow(4, DENY, age=3600)])  # a late report of an old request
        seen.append((await anext(stream)).path)  # type: ignore[union-attr]
        await stream.aclose()  # type: ignore[attr-defined]
        assert not log._followers
        return seen

    assert asyncio.run(scenario()) == ["/n/1", "/n/4"]


def test_each_record_is_counted_by_decision_policy_workload_and_direction() -> None:
    reader = InMemoryMetricReader()
    log = FlowLog(meter=MeterProvider(metric_readers=[reader]).get_meter("test"))
    log.add([flow(0), flow(1), flow(2, DENY)])
    data = reader.get_metrics_data()
    assert data is not None
    (metric,) = [m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]
    assert metric.name == "meshwarden.authz.decisions"
    counts = {tuple(sorted(p.attributes.items())): p.value for p in metric.data.data_points}
    assert counts == {
        (
            ("decision", "allow"),
            ("direction", "ingress"),
            ("policy", "shop/backend-access"),
            ("workload", "shop/backend-1"),
        ): 2,
        (
            ("decision", "deny"),
            ("direction", "ingress"),
            ("policy", "default:deny"),
            ("workload", "shop/backend-1"),
        ): 1,
    }


# --- a flood of access-log messages into the receiver --------------------------------------


def _message(denied: bool, size: int, node: str | None = None) -> bytes:
    rbac = {
        "authz_allow_enforced_engine_result": "denied" if denied else "allowed",
        "authz_allow_enforced_effective_policy_id": "default:deny"
        if denied
        else "shop/backend-access#0",
    }
    local = Address(socket_address=SocketAddress(address="10.0.0.3", port_value=8080))
    common = AccessLogCommon(
        downstream_local_address=local,
        metadata=Metadata(filter_metadata={RBAC_NS: Struct.from_dict(rbac)}),
    )
    entry = HttpAccessLogEntry(
        common_properties=common,
        request=HttpRequestProperties(path="/flood"),
        response=HttpResponseProperties(response_code=200),
    )
    out = StreamAccessLogsMessage(
        http_logs=StreamAccessLogsMessageHttpAccessLogEntries(log_entry=[entry] * size)
    )
    if node:
        out.identifier = StreamAccessLogsMessageIdentifier(node=Node(id=node))
    return bytes(out)


class _Context:
    async def abort(self, code: Any, details: str) -> None:
        raise AssertionError(f"aborted: {code} {details}")


def test_a_flood_far_beyond_the_bound_keeps_the_store_within_it() -> None:
    backend = "shop/backend-1"
    authorize = workload_authorizer(lambda: {backend: "spiffe://td/ns/shop/sa/backend-1"})
    log = FlowLog(size=500)
    receiver = AccessLogReceiver(log, authorize, lambda context: "spiffe://td/ns/shop/sa/backend-1")
    first, allowed, denied = _message(False, 100, backend), _message(False, 100), _message(True, 1)

    async def messages() -> AsyncIterator[bytes]:
        yield first
        for _ in range(100):  # 100 + 100 × 101 = 10,200 records into 500 places
            yield allowed
            yield denied
            assert log.stats()["stored"] <= log.size

    assert asyncio.run(receiver.stream(messages(), _Context())) == b""  # type: ignore[arg-type]
    assert log.stats()["stored"] == 500 and log.received == 10_200 and log.dropped == 9_700
    assert len(log.query(FlowQuery(denied=True))) == 5  # one in each of the last five batches
    assert log.query(FlowQuery())[-1].denied and log.query(FlowQuery(limit=2))[0].path == "/flood"


def test_a_flooding_workload_evicts_only_its_own_records() -> None:
    """Two sidecars stream to the same log; backend-1 floods 50 times the log's size."""
    ids = {
        "shop/backend-1": "spiffe://td/ns/shop/sa/backend-1",
        "shop/db-1": "spiffe://td/ns/shop/sa/db-1",
    }
    log = FlowLog(size=500)

    def receiver(workload: str) -> AccessLogReceiver:
        return AccessLogReceiver(
            log, workload_authorizer(lambda: ids), lambda context: ids[workload]
        )

    async def stream(workload: str, batches: int, size: int) -> AsyncIterator[bytes]:
        yield _message(False, 0, workload)
        for _ in range(batches):
            yield _message(True, size)
            await asyncio.sleep(0)  # the two streams interleave, as on the control plane

    async def both() -> None:
        await asyncio.gather(
            receiver("shop/backend-1").stream(stream("shop/backend-1", 250, 100), _Context()),
            receiver("shop/db-1").stream(stream("shop/db-1", 30, 5), _Context()),
        )  # type: ignore[arg-type]

    asyncio.run(both())
    assert log.received == 25_150 and log.stats()["stored"] == 500
    assert len(log.query(FlowQuery(workload="shop/db-1"))) == 150  # every one of them
    assert log.stats()["droppedByWorkload"] == {"shop/backend-1": 24_650}
    assert [f.workload for f in log.query(FlowQuery())].count("shop/backend-1") == 350


def egress_flow(n: int, source: str, verdict: Verdict = ALLOW) -> Flow:
    """A record the sidecar of `source` reported about its connection to backend-1."""
    ends = EgressEnds(source, "shop/backend", None, None)
    return replace(flow(n, verdict), protocol="tcp", method=None, path=None, egress=ends)


def test_egress_records_are_selected_by_direction_and_by_either_end() -> None:
    log = FlowLog(clock=lambda: NOW)
    log.add([flow(0), egress_flow(1, "shop/frontend-1"), egress_flow(2, "shop/web-1", DENY)])
    assert [f.direction for f in log.query(FlowQuery())] == ["ingress", "egress", "egress"]
    egress = FlowQuery.from_params({"direction": "egress", "workload": "shop/frontend-1"})
    assert [f.egress.source_workload for f in log.query(egress) if f.egress] == ["shop/frontend-1"]
    to_backend = log.query(FlowQuery(workload="shop/backend-1"))  # the destination of all three
    assert len(to_backend) == 3
    ingress = log.query(FlowQuery.from_params({"direction": "ingress"}))
    assert [f.path for f in ingress] == ["/n/0"]
    assert log.query(FlowQuery(denied=True))[0].to_json()["sourceWorkload"] == "shop/web-1"
    with pytest.raises(ValueError, match="direction"):
        FlowQuery.from_params({"direction": "sideways"})


def test_egress_records_count_against_the_source_that_reported_them() -> None:
    """A source flooding its own egress records evicts only them, not the destination's."""
    log = FlowLog(size=10, clock=lambda: NOW)
    log.add([flow(n) for n in range(5)])  # backend-1's ingress records
    log.add([egress_flow(n, "shop/frontend-1") for n in range(100)])
    assert [f.path for f in log.query(FlowQuery(direction=Direction.INGRESS))] == [
        f"/n/{n}" for n in range(5)
    ]
    assert log.stats()["droppedByWorkload"] == {"shop/frontend-1": 95}


def test_when_all_flood_each_keeps_an_equal_share() -> None:
    log = FlowLog(size=90)
    for n in range(300):
        log.add([flow(n, workload=w) for w in ("a/x", "b/y", "c/z")])
    assert [len(log.query(FlowQuery(workload=w))) for w in ("a/x", "b/y", "c/z")] == [30] * 3
    assert [f.path for f in log.query(FlowQuery(workload="b/y"))][-1] == "/n/299"
    paths = [f.path for f in log.query(FlowQuery())]
    assert paths == [f"/n/{n}" for n in range(270, 300) for _ in range(3)]  # arrival order


# --- the HTTP route and the command line -----------------------------------------------------


@pytest.fixture
def served() -> Iterator[tuple[str, FlowLog, asyncio.AbstractEventLoop]]:
    """A FlowLog behind a real HealthEndpoint on a loop in a thread: (URL, log, loop)."""
    loop = asyncio.new_event_loop()
    log = FlowLog(clock=lambda: NOW)
    endpoint = HealthEndpoint("127.0.0.1", 0, lambda: {"status": "ok"})
    endpoint.routes["/flows"] = log.route
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(endpoint.start(), loop).result(5)
    try:
        yield f"http://127.0.0.1:{endpoint.port}/healthz", log, loop
    finally:
        asyncio.run_coroutine_threadsafe(endpoint.stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def _get(url: str, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection(url.split("/")[2], timeout=5)
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, response.read().decode()


def _add(loop: asyncio.AbstractEventLoop, log: FlowLog, flows: list[Flow]) -> None:
    loop.call_soon_threadsafe(log.add, flows)


def test_flows_are_served_next_to_an_unchanged_healthz(served: Any) -> None:
    url, log, loop = served
    _add(loop, log, [flow(0), flow(1, DENY)])
    status, health = _get(url, "/healthz")
    assert (status, json.loads(health)) == (200, {"status": "ok"})
    status, body = _get(url, "/flows?denied=1")
    assert status == 200
    reply = json.loads(body)
    assert [f["path"] for f in reply["flows"]] == ["/n/1"] and reply["dropped"] == 0
    assert _get(url, "/flows?since=soon")[0] == 400
    status, body = _get(url, "/nothing")
    assert status == 404 and "/flows" in body and "/healthz" in body


def test_follow_streams_ndjson_as_records_arrive(served: Any) -> None:
    url, log, loop = served
    _add(loop, log, [flow(0)])
    conn = http.client.HTTPConnection(url.split("/")[2], timeout=5)
    conn.request("GET", "/flows?follow=1")
    response = conn.getresponse()
    assert response.getheader("content-type") == "application/x-ndjson"
    assert json.loads(response.readline())["path"] == "/n/0"
    _add(loop, log, [flow(1, DENY)])
    assert json.loads(response.readline())["path"] == "/n/1"
    conn.close()


def test_the_command_prints_a_table_or_json(
    served: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    url, log, loop = served
    _add(loop, log, [flow(0), flow(1, DENY)])
    assert main(["flows", "--server", url, "-o", "json", "--denied"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert (record["path"], record["decision"], record["policy"]) == (
        "/n/1",
        "deny",
        "default:deny",
    )
    assert main(["flows", "--server", url]) == 0
    header, allowed, denied = capsys.readouterr().out.splitlines()
    assert header.split() == [
        "TIME",
        "SOURCE",
        "DESTINATION",
        "REQUEST",
        "STATUS",
        "DECISION",
        "POLICY",
        "DRY-RUN",
        "TRACE",
    ]
    assert allowed.split()[2:] == [
        "spiffe://td/ns/shop/sa/frontend-1",
        "shop/backend-1:8080",
        "GET",
        "/n/0",
        "200",
        "allow",
        "shop/backend-access#0",
        "-",
        f"{0:032x}",
    ]
    assert "default:deny" in denied and denied.endswith(f"{1:032x}")


def test_the_table_writes_control_characters_as_escapes(
    served: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A path from an access-log stream (any workload can open one with its SVID) printed
    raw: an OSC sequence retitling the terminal, a bell, a line faking a record."""
    url, log, loop = served
    _add(loop, log, [replace(flow(0), path="/\x1b]0;owned\x07\n2099-01-01 fake allow")])
    assert main(["flows", "--server", url]) == 0
    _, row = capsys.readouterr().out.splitlines()
    assert "GET /\\x1b]0;owned\\x07\\n2099-01-01 fake allow" in row
    assert row.isprintable()


def test_the_command_explains_what_is_wrong(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MESHWARDEN_SERVER", raising=False)
    assert main(["flows"]) == 2
    assert "give --server HOST:PORT" in capsys.readouterr().err
    assert main(["flows", "--server", "http://127.0.0.1:9", "--workload", "nons"]) == 2
    assert "expected NS/NAME" in capsys.readouterr().err
    assert main(["flows", "--server", "http://127.0.0.1:1"]) == 1
    assert "meshwarden flows: error: 127.0.0.1:1: Connection refused" in capsys.readouterr().err
