"""Test support: the ext_authz service (gRPC Check, or the HTTP front) on a loopback port in a
thread of its own, and the Envoy cluster to reach it, for tests and benchmarks that run the
service without the control plane. Production registers `authorization_handler` on the mTLS
endpoint and serves the HTTP front with `serve_authz_http`."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import grpc
from meshwarden.xds._envoy import static_cluster, typed
from meshwarden.xds._ext_authz import Authorization, authorization_handler
from meshwarden.xds._ext_authz_http import AuthzHttpFront, serve_authz_http

T = TypeVar("T")


def loopback_cluster(name: str, port: int) -> dict[str, Any]:
    """A plaintext HTTP/2 cluster to 127.0.0.1:port, for tests and benchmarks that run the
    service without the control plane's mTLS endpoint."""
    options = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    h2 = typed(options, explicitHttpConfig={"http2ProtocolOptions": {}})
    return {
        **static_cluster(name, "127.0.0.1", port),
        "typedExtensionProtocolOptions": {options: h2},
    }


@contextlib.contextmanager
def serve_on_loopback(authorization: Authorization) -> Iterator[int]:
    """The gRPC service on a plaintext 127.0.0.1 port; yields the port."""

    async def start() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((authorization_handler(authorization),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    async def stop(started: tuple[grpc.aio.Server, int]) -> None:
        await started[0].stop(None)

    with _serving_in_thread(start, stop, "ext-authz-loopback") as (_, port):
        yield port


@contextlib.contextmanager
def serve_http_on_loopback(
    authorization: Authorization, tls: ssl.SSLContext | None = None
) -> Iterator[int]:
    """The HTTP front on a 127.0.0.1 port (plaintext, or `tls`); yields the port."""

    async def start() -> asyncio.Server:
        return await serve_authz_http(AuthzHttpFront(authorization), "127.0.0.1", 0, tls)

    async def stop(server: asyncio.Server) -> None:
        server.close()
        await server.wait_closed()

    with _serving_in_thread(start, stop, "ext-authz-http-loopback") as server:
        yield int(server.sockets[0].getsockname()[1])


@contextlib.contextmanager
def _serving_in_thread(
    start: Callable[[], Coroutine[Any, Any, T]],
    stop: Callable[[T], Coroutine[Any, Any, None]],
    name: str,
) -> Iterator[T]:
    """Run `start` on a new event loop in a daemon thread, yield what it returned, then `stop`
    it, stop the loop and join the thread."""
    loop = asyncio.new_event_loop()
    started: list[T] = []
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            started.append(loop.run_until_complete(start()))
        finally:
            ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    ready.wait(10)
    if not started:
        raise RuntimeError(f"{name}: the service did not start")
    try:
        yield started[0]
    finally:
        asyncio.run_coroutine_threadsafe(stop(started[0]), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
