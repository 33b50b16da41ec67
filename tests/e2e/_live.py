"""Helpers for tests that run `meshwarden up` for real: sample apps, an IdP key, requests."""

from __future__ import annotations

import base64
import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _App(BaseHTTPRequestHandler):
    def _reply(self) -> None:
        body = f"app {self.server.server_address[1]} {self.command} {self.path}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _reply

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def sample_app(port: int) -> Iterator[None]:
    """A tiny HTTP app on 127.0.0.1:port answering 200 to everything."""
    server = ThreadingHTTPServer(("127.0.0.1", port), _App)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class FakeIdp:
    """An OIDC-style issuer with one ES256 key: signs tokens, publishes its JWKS."""

    def __init__(self, issuer: str) -> None:
        self.issuer = issuer
        self.key = ec.generate_private_key(ec.SECP256R1())

    def jwks(self) -> str:
        numbers = self.key.public_key().public_numbers()
        x, y = (_b64(n.to_bytes(32, "big")) for n in (numbers.x, numbers.y))
        jwk = {"kty": "EC", "crv": "P-256", "kid": "test", "alg": "ES256", "x": x, "y": y}
        return json.dumps({"keys": [jwk]})

    def token(self, forged: bool = False, **claims: Any) -> str:
        body = {
            "iss": self.issuer,
            "exp": int(time.time()) + 600,
            "iat": int(time.time()),
            **claims,
        }
        header = {"alg": "ES256", "kid": "test", "typ": "JWT"}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(body).encode())}"
        key = ec.generate_private_key(ec.SECP256R1()) if forged else self.key
        r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


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


def exchange(host: str, port: int, method: str = "GET", path: str = "/",
             headers: dict[str, str] | None = None, source: str | None = None
             ) -> tuple[int | str, str]:  # fmt: skip
    """(HTTP status or how the connection failed, response body)."""
    conn = http.client.HTTPConnection(host, port, timeout=10,
                                      source_address=(source, 0) if source else None)  # fmt: skip
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as exc:
        return f"connection failed ({type(exc).__name__})", ""
    finally:
        conn.close()


def wait_for(check: Any, expected: Any, timeout: float = 15) -> Any:
    """Poll `check()` until it returns `expected` (pushes take a moment); returns the last."""
    deadline = time.monotonic() + timeout
    got = check()
    while got != expected and time.monotonic() < deadline:
        time.sleep(0.2)
        got = check()
    return got


class MeshwardenUp:
    """`meshwarden up DIR` as a user runs it: a subprocess, ready when it prints `ready`."""

    def __init__(self, policies: Path, data_dir: Path) -> None:
        self.policies, self.data_dir = policies, data_dir
        self.log = data_dir.parent / "up.log"
        self.process: subprocess.Popen[str] | None = None
        self.ready_line = ""

    def start(self, timeout: float = 120) -> None:
        command = [sys.executable, "-m", "meshwarden", "up", str(self.policies),
                   "--data-dir", str(self.data_dir)]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE,
                                        stderr=self.log.open("w"), text=True)  # fmt: skip
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line.startswith("ready"):
                self.ready_line = line.strip()
                return
            if not line and self.process.poll() is not None:
                break
        raise AssertionError(f"meshwarden up did not get ready:\n{self.log.read_text()[-4000:]}")

    def health(self) -> dict[str, Any]:
        url = self.ready_line.split("health ")[1].split(",")[0]
        host, port = url.removeprefix("http://").split("/")[0].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
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
