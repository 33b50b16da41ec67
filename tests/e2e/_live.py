"""Helpers for tests that run `meshwarden up` for real: sample apps, an IdP key, requests."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from meshwarden.demo import sample_apps


@contextmanager
def sample_app(port: int) -> Iterator[None]:
    """A tiny HTTP app on 127.0.0.1:port answering 200 to everything (the demo's)."""
    with sample_apps([port], []):
        yield


class _Files(BaseHTTPRequestHandler):
    files: ClassVar[dict[str, str]] = {}

    def do_GET(self) -> None:
        body = self.files.get(self.path)
        self.send_response(200 if body is not None else 404)
        data = (body or "not found").encode()
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def http_server(port: int, handler: type[BaseHTTPRequestHandler]) -> Iterator[None]:
    """`handler` serving on 127.0.0.1:port in a thread, until the block ends."""
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def static_files(port: int, files: dict[str, str]) -> Iterator[None]:
    """An HTTP server on 127.0.0.1:port serving `files` (path → body), e.g. a JWKS."""
    with http_server(port, type("Files", (_Files,), {"files": files})):
        yield


def request(
    host: str,
    port: int,
    method: str = "GET",
    path: str = "/",
    headers: dict[str, str] | None = None,
    source: str | None = None,
) -> int | str:
    """The HTTP status, or a description of how the connection failed."""
    return exchange(host, port, method, path, headers, source)[0]


def exchange(
    host: str,
    port: int,
    method: str = "GET",
    path: str = "/",
    headers: dict[str, str] | None = None,
    source: str | None = None,
) -> tuple[int | str, str]:
    """(HTTP status or how the connection failed, response body)."""
    conn = http.client.HTTPConnection(
        host, port, timeout=10, source_address=(source, 0) if source else None
    )
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as exc:
        return f"connection failed ({type(exc).__name__})", ""
    finally:
        conn.close()


def appended_lines(path: Path) -> list[str]:
    """The complete lines of a file another process appends to (none if it does not exist
    yet): a write is not atomic for a reader once it crosses a page, so a last line without
    its newline is still being written and is left for the next read."""
    if not path.exists():
        return []
    return path.read_text(errors="replace").split("\n")[:-1]


T = TypeVar("T")


def reading_where(read: Callable[[], T], accept: Callable[[T], bool], timeout: float = 60) -> T:
    """The first reading of `read()` that `accept` takes (polled as `wait_for`), else the last:
    assert on the reading that was waited for, never on a second one (the state may have moved
    on in between)."""
    deadline = time.monotonic() + timeout
    got = read()
    while not accept(got) and time.monotonic() < deadline:
        time.sleep(0.2)
        got = read()
    return got


def wait_for(check: Any, expected: Any, timeout: float = 60) -> Any:
    """Poll `check()` until it returns `expected` (pushes take a moment, seconds on a loaded
    host); returns the last."""
    deadline = time.monotonic() + timeout
    got = check()
    while got != expected and time.monotonic() < deadline:
        time.sleep(0.2)
        got = check()
    return got


class MeshwardenUp:
    """`meshwarden up DIR` as a user runs it: a subprocess, ready when it prints `ready`.
    `prefix` runs it through another command (e.g. `ip netns exec NS`)."""

    def __init__(
        self,
        policies: Path,
        data_dir: Path,
        args: tuple[str, ...] = (),
        prefix: tuple[str, ...] = (),
    ) -> None:
        self.policies, self.data_dir, self.args, self.prefix = policies, data_dir, args, prefix
        self.log = data_dir.parent / "up.log"
        self.process: subprocess.Popen[str] | None = None
        self.ready_line = ""

    def start(self, timeout: float = 120) -> None:
        command = [
            *self.prefix,
            sys.executable,
            "-m",
            "meshwarden",
            "up",
            str(self.policies),
            "--data-dir",
            str(self.data_dir),
            *self.args,
        ]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=self.log.open("w"), text=True
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line.startswith("ready"):
                self.ready_line = line.strip()
                return
            if not line and self.process.poll() is not None:
                break
        self.stop()  # nothing it started outlives a failed start (callers stop only after it)
        raise AssertionError(f"meshwarden up did not get ready:\n{self.log.read_text()[-4000:]}")

    def health(self) -> dict[str, Any]:
        url = self.ready_line.split("health ")[1].split(",")[0]
        host, port = url.removeprefix("http://").split("/")[0].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("GET", "/healthz")
        return dict(json.loads(conn.getresponse().read()))

    def stop(self) -> int:
        if self.process is None:
            return 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return -9
