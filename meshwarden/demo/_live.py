"""The live demo: examples/shop as a real mesh on this host — sample apps, one Envoy per
workload, requests through the sidecars, and a policy changed while everything runs."""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from meshwarden.demo._idp import DemoIdp

Outcome = tuple[str, str]  # (verdict as seen from outside, detail)


class _App(BaseHTTPRequestHandler):
    def _reply(self) -> None:
        assert isinstance(self.server, ThreadingHTTPServer)
        body = f"{self.server.server_port}: {self.command} {self.path}\n".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _reply

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def sample_apps(http_ports: list[int], tcp_ports: list[int]) -> Iterator[None]:
    """Tiny apps behind the sidecars: HTTP ones answer 200, TCP ones echo."""
    servers: list[Any] = [ThreadingHTTPServer(("127.0.0.1", p), _App) for p in http_ports]
    echoes = [_echo_server(p) for p in tcp_ports]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
        for echo in echoes:
            echo.close()


def _echo_server(port: int) -> socket.socket:
    listener = socket.create_server(("127.0.0.1", port))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                data = conn.recv(1024)
                conn.sendall(b"echo " + data)

    threading.Thread(target=serve, daemon=True).start()
    return listener


def http_call(
    port: int,
    method: str,
    path: str,
    host: str = "127.0.0.1",
    headers: dict[str, str] | None = None,
    source: str | None = None,
) -> Outcome:
    address = (source, 0) if source else None
    conn = http.client.HTTPConnection(host, port, timeout=10, source_address=address)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        body = response.read().decode(errors="replace").strip()
        verdict = "ALLOW" if response.status < 400 else "DENY"
        return verdict, f"{response.status} {body[:40]}"
    except (OSError, http.client.HTTPException) as exc:
        return "DENY", f"connection refused ({type(exc).__name__})"
    finally:
        conn.close()


def tcp_call(port: int) -> Outcome:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"ping")
            data = conn.recv(1024)
        return ("ALLOW", data.decode().strip()) if data else ("DENY", "connection closed")
    except OSError as exc:
        return "DENY", f"connection failed ({type(exc).__name__})"


@dataclass(frozen=True)
class Row:
    request: str
    expected: str
    call: Callable[[], Outcome]
    explain: list[str]  # `meshwarden explain` flags for the same request (to name the cause)

    def _replace_expected(self, expected: str) -> Row:
        return Row(self.request, expected, self.call, self.explain)


def shop_copy(examples: Path, idp: DemoIdp) -> Path:
    """The shop example in a temp dir, with the corp IdP's JWKS replaced by the demo key."""
    folder = Path(tempfile.mkdtemp(prefix="meshwarden-demo-")) / "shop"
    shutil.copytree(examples, folder)
    policies = folder / "policies.yaml"
    lines = [
        f"  jwks: '{idp.jwks()}'" if line.startswith("  jwks:") else line
        for line in policies.read_text().splitlines()
    ]
    policies.write_text("\n".join(lines) + "\n")
    return folder


_MOVABLE_PORT = re.compile(r"((?:targetPort|localPort): )(\d+)")


def reserve_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that stays free for a server binding it with SO_REUSEADDR (Envoy's
    listeners, `http.server`, asyncio, grpc all do): the port is left in TIME_WAIT (the
    listening side closes first), and for that minute the kernel gives it to no bind() to port
    0 and no connect(), so no other process on the host takes it between choosing and binding."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, 0))
        listener.listen(1)
        with socket.create_connection(listener.getsockname()[:2], timeout=10) as client:
            accepted, _ = listener.accept()
            accepted.close()  # this end closes first, so this end enters TIME_WAIT
            client.recv(1)  # its FIN arrived; closing the client completes the handshake
        return int(listener.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """`count` distinct ports on 127.0.0.1 reserved for the demo's apps and listeners."""
    return [reserve_port() for _ in range(count)]


def move_to_free_ports(folder: Path) -> dict[int, int]:
    """Give the apps (targetPort) and upstream listeners (localPort) of the shop copy ports that
    are free on this host, so a busy port does not stop the demo. Old port → new port."""
    workloads = folder / "workloads.yaml"
    text = workloads.read_text()
    fixed = sorted({int(m[2]) for m in _MOVABLE_PORT.finditer(text)})
    moved = dict(zip(fixed, free_ports(len(fixed)), strict=True))
    workloads.write_text(_MOVABLE_PORT.sub(lambda m: f"{m[1]}{moved[int(m[2])]}", text))
    return moved


def rows(idp: DemoIdp, moved: dict[int, int] | None = None) -> list[Row]:
    """The demo's requests; `moved` maps the example's ports to the ones this run uses."""
    port = (moved or {}).get
    to_backend = ["--to", "shop/backend-1", "--port", "8080"]
    frontend = [*to_backend, "--from-workload", "shop/frontend-1"]
    ops = [*to_backend, "--from-workload", "ops/ops-1", "--path", "/admin/flush"]
    admin, dev = idp.claims(groups=["admin"]), idp.claims(groups=["dev"])
    stranger = idp.claims(groups=["admin"]) | {"iss": "https://evil.example.com"}

    def bearer(claims: dict[str, Any]) -> dict[str, str]:
        return {"authorization": "Bearer " + idp.token(claims)}

    return [
        Row(
            "frontend  GET  /api/catalogue",
            "ALLOW",
            lambda: http_call(port(15080, 15080), "GET", "/api/catalogue"),
            [*frontend, "--path", "/api/catalogue"],
        ),
        Row(
            "frontend  POST /api/orders",
            "DENY",
            lambda: http_call(port(15080, 15080), "POST", "/api/orders"),
            [*frontend, "--method", "POST", "--path", "/api/orders"],
        ),
        Row(
            "frontend  GET  /api/../debug/vars",
            "DENY",
            lambda: http_call(port(15080, 15080), "GET", "/api/../debug/vars"),
            [*frontend, "--path", "/api/../debug/vars"],
        ),
        Row(
            "ops       GET  /admin/flush (admin token)",
            "ALLOW",
            lambda: http_call(port(15081, 15081), "GET", "/admin/flush", headers=bearer(admin)),
            [*ops, "--jwt-claims", json.dumps(admin)],
        ),
        Row(
            "ops       GET  /admin/flush (dev token)",
            "DENY",
            lambda: http_call(port(15081, 15081), "GET", "/admin/flush", headers=bearer(dev)),
            [*ops, "--jwt-claims", json.dumps(dev)],
        ),
        Row(
            "ops       GET  /admin/flush (unknown issuer)",
            "DENY",
            lambda: http_call(port(15081, 15081), "GET", "/admin/flush", headers=bearer(stranger)),
            [*ops, "--jwt-claims", json.dumps(stranger)],
        ),
        Row(
            "stranger  GET  /api/catalogue from .9",
            "ALLOW",
            lambda: http_call(8080, "GET", "/api/catalogue", "127.0.0.3", source="127.0.0.9"),
            [*to_backend, "--source-ip", "127.0.0.9", "--path", "/api/catalogue"],
        ),
        Row(
            "stranger  GET  /api/catalogue from .10",
            "DENY",
            lambda: http_call(8080, "GET", "/api/catalogue", "127.0.0.3", source="127.0.0.10"),
            [*to_backend, "--source-ip", "127.0.0.10", "--path", "/api/catalogue"],
        ),
        Row(
            "backend   tcp  db:5432",
            "ALLOW",
            lambda: tcp_call(port(15432, 15432)),
            ["--to", "shop/db-1", "--port", "5432", "--from-workload", "shop/backend-1"],
        ),
    ]
