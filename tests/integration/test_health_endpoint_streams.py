"""The control plane's loopback endpoint bounds its streaming replies (`/flows?follow=1`, the
console's events) apart from its requests: beyond `MAX_STREAMS` a new stream ends the oldest
(its client sees the stream end), so streams never take the room of a probe; and with the
streams at their bound and slow requests holding every other slot, a probe is still answered,
by closing the oldest slow request, never a stream. `/healthz` counts what was closed."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meshwarden._health import MAX_CONNECTIONS, MAX_STREAMS

from .test_node_attestation import Plane, running_plane

EXTRA_STREAMS = 3
EXTRA_SLOW = 20


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Plane]:
    with running_plane(tmp_path, health="127.0.0.1:0") as running:
        yield running


def _connect(port: int, request: bytes) -> socket.socket:
    client = socket.create_connection(("127.0.0.1", port), timeout=60)
    client.sendall(request)
    return client


def _follow(port: int) -> socket.socket:
    """A `/flows?follow=1` stream whose reply head has arrived (so it streams now)."""
    client = _connect(port, b"GET /flows?follow=1 HTTP/1.1\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = client.recv(4096)
        assert chunk, f"closed before its reply head: {head!r}"
        head += chunk
    assert head.startswith(b"HTTP/1.1 200 OK")
    return client


def _ended(client: socket.socket) -> bool:
    """Reads what is left (heartbeats) until the server closes the stream."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if not client.recv(65536):
                return True
        except ConnectionResetError:
            return True
    return False


def _probe(port: int) -> dict:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as client:
        client.sendall(b"GET /healthz?sidecars=none HTTP/1.1\r\n\r\n")
        reply = b""
        while chunk := client.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200 OK"), reply[:200]
    return json.loads(reply.partition(b"\r\n\r\n")[2])


def _wait(plane: Plane, done: Callable[[dict], bool], timeout: float = 60) -> dict:
    """The endpoint's counters once `done(counters)` holds (read on the loop, once a poll)."""
    assert plane.plane.health is not None
    health = plane.plane.health
    deadline = time.monotonic() + timeout
    while True:
        counters = plane.loop.call(health.counters)
        if done(counters):
            return counters
        assert time.monotonic() < deadline, counters
        time.sleep(0.05)


def test_streams_are_bounded_apart_and_a_probe_gets_through_a_full_endpoint(
    plane: Plane,
) -> None:
    health = plane.plane.health
    assert health is not None
    port = health.port
    clients: list[socket.socket] = []
    try:
        streams = [_follow(port) for _ in range(MAX_STREAMS + EXTRA_STREAMS)]
        clients += streams
        for oldest in streams[:EXTRA_STREAMS]:
            assert _ended(oldest)
        _wait(plane, lambda c: c["streams"] == MAX_STREAMS)
        # slow requests take every other slot, and more (until some were closed to make room:
        # each lives REQUEST_SECONDS at most, so on a slow machine it may take more of them)
        for n in range(4 * MAX_CONNECTIONS):
            clients.append(_connect(port, b"GET /healthz HTTP/1.1\r\n"))
            if n % 50 == 49:
                time.sleep(0.05)  # within the listen backlog
                if plane.loop.call(health.counters)["evicted"]["reading"] >= EXTRA_SLOW:
                    break
        report = _probe(port)
        assert report["status"] == "ok"
        counters = report["healthEndpoint"]
        assert counters["open"] <= MAX_CONNECTIONS
        assert counters["streams"] == MAX_STREAMS  # the probe closed a slow request, no stream
        assert counters["evicted"]["streaming"] == EXTRA_STREAMS
        assert counters["evicted"]["reading"] >= EXTRA_SLOW
        flows = plane.plane.xds.flows  # the ended streams stopped following the flow log
        deadline = time.monotonic() + 60
        while (followers := plane.loop.call(flows.stats)["followers"]) != MAX_STREAMS:
            assert time.monotonic() < deadline, followers
            time.sleep(0.05)
    finally:
        for client in clients:
            client.close()
