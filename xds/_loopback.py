"""Test support: the ext_authz service on a plaintext loopback port, and the Envoy cluster to
reach it, for tests and benchmarks that run the service without the control plane's mTLS
endpoint. Production registers `authorization_handler` on the mTLS endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import grpc
from meshwarden.xds._envoy import static_cluster, typed
from meshwarden.xds._ext_authz import Authorization, authorization_handler


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
    """The service on a plaintext 127.0.0.1 port in a thread of its own (tests, benchmarks);
    yields the port. Production registers `authorization_handler` on the mTLS endpoint."""
    loop = asyncio.new_event_loop()
    ready: list[Any] = []
    started = threading.Event()

    async def start() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((authorization_handler(authorization),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        ready.extend((server, port))

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(start())
        finally:
            started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="ext-authz-loopback", daemon=True)
    thread.start()
    started.wait(10)
    if not ready:
        raise RuntimeError("the ext_authz loopback server did not start")
    try:
        yield ready[1]
    finally:
        asyncio.run_coroutine_threadsafe(ready[0].stop(None), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
