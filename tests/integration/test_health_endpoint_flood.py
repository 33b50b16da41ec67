"""The unauthenticated loopback endpoint (`/healthz`, `/flows`, the console; the agent's
`--health` too) under a slow-connection flood from another local user: what one user can hold
of the process's descriptors — shared with the node API, ADS and the policy directory's scan —
is bounded (`MAX_CONNECTIONS`); a probe arriving while the flood holds every slot is answered
(the flood's oldest unfinished request is closed to make room: a liveness probe failing here
would have a healthy control plane restarted); a request that dribbles in a header line a
second is closed once `REQUEST_SECONDS` have passed. (Found by a tour: 600 slow requests from
`nobody` held 600 descriptors; at the soft limit accept failed on every listener and the policy
directory could not be read.) Closing a connection to make room logs nothing."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time

from meshwarden._health import MAX_CONNECTIONS, REQUEST_SECONDS, HealthEndpoint, Phase

HOLD = """
import socket, sys, time
port, count = int(sys.argv[1]), int(sys.argv[2])
held = []
for n in range(count):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /healthz HTTP/1.1\\r\\n")
    held.append(s)
    if n % 50 == 49:
        time.sleep(0.05)  # within the listen backlog (asyncio's default: 100)
print("holding", flush=True)
for _ in range(30):  # 30 s at most: a header line a second keeps each request unfinished
    for s in held:
        try:
            s.sendall(b"x-slow: 1\\r\\n")
        except OSError:  # closed by the endpoint
            pass
    time.sleep(1)
"""


def _descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def _get(port: int) -> bytes:
    """The reply to GET /healthz; empty when the endpoint closed the connection unanswered."""
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        try:
            client.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
            while chunk := client.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            return b""
    return b"".join(chunks)


def _assert_ok(reply: bytes) -> None:
    assert reply.startswith(b"HTTP/1.1 200 OK"), reply[:200]
    assert json.loads(reply.partition(b"\r\n\r\n")[2]) == {"status": "ok"}


def test_one_local_user_can_neither_hold_the_endpoints_descriptors_nor_starve_its_probes() -> None:
    loop = asyncio.new_event_loop()
    unhandled: list[dict[str, object]] = []  # what asyncio would log (a traceback each)
    loop.set_exception_handler(lambda _, context: unhandled.append(context))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    endpoint = HealthEndpoint("127.0.0.1", 0, lambda: {"status": "ok"})
    asyncio.run_coroutine_threadsafe(endpoint.start(), loop).result(10)
    before = _descriptors()
    user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    holder = subprocess.Popen(
        [*user, sys.executable, "-c", HOLD, str(endpoint.port), "600"],
        stdout=subprocess.PIPE,
        text=True,
        cwd="/",
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        started = time.monotonic()
        deadline = started + 60
        while endpoint.open + endpoint.evicted[Phase.READING] < 600:
            assert time.monotonic() < deadline, endpoint.counters()
            time.sleep(0.05)  # until every connection was accepted (and kept or closed)
        assert endpoint.evicted[Phase.READING] >= 600 - MAX_CONNECTIONS
        assert _descriptors() - before <= MAX_CONNECTIONS + 8
        # the flood holds every slot, and a probe is answered all the same
        _assert_ok(_get(endpoint.port))
        assert holder.poll() is None  # while the flood still runs
        # the slow requests are closed at their deadline, though each is still sending
        while endpoint.open and time.monotonic() < started + REQUEST_SECONDS + 60:
            time.sleep(0.1)
        assert endpoint.open == 0
        assert holder.poll() is None  # the flood still runs: it was the deadline
        _assert_ok(_get(endpoint.port))
        assert unhandled == []  # closing hundreds of connections floods no log
    finally:
        holder.kill()
        holder.wait(10)
        asyncio.run_coroutine_threadsafe(endpoint.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
