"""gRPC calls on a `_grpc_connection.GrpcConnection`: the registry the generated
`add_*Servicer_to_server` functions fill (`LocalServer`), the context a servicer is handed
(`CallContext`), and one call run from its request headers to its trailers (`Call`)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from meshwarden.identities import _grpc_wire as wire

if TYPE_CHECKING:
    from meshwarden.identities._grpc_connection import GrpcConnection

log = logging.getLogger(__name__)
HIGH_WATER = 256 * 1024  # response bytes queued per call before its handler waits for window


@dataclass(frozen=True, slots=True)
class _Details:
    """What a generic handler's `service()` reads (grpc.HandlerCallDetails)."""

    method: str
    invocation_metadata: tuple[tuple[str, str | bytes], ...]


class LocalServer:
    """Where services are registered: what the generated `add_*Servicer_to_server(servicer,
    server)` and `server.add_generic_rpc_handlers(...)` call on a grpc.aio server."""

    def __init__(self) -> None:
        self._methods: dict[str, grpc.RpcMethodHandler] = {}
        self._generic: list[grpc.GenericRpcHandler] = []

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._generic.extend(handlers)

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        for name, handler in handlers.items():
            self._methods[f"/{service}/{name}"] = handler

    def handler(self, request: wire.Request) -> grpc.RpcMethodHandler | None:
        found = self._methods.get(request.path)
        if found is None:
            details = _Details(request.path, request.metadata)
            for generic in self._generic:
                found = generic.service(details)
                if found is not None:
                    break
        return found


class _Abort(Exception):
    def __init__(self, code: int, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class CallContext:
    """What a servicer may ask of its call (the part of grpc.aio.ServicerContext our servicers
    use). `peer_process` is what the connection's attestation found."""

    def __init__(self, call: Call, peer_process: object) -> None:
        self._call = call
        self.peer_process = peer_process
        self.code: int | None = None
        self.details = ""

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._call.request.metadata

    def peer(self) -> str:
        pid, uid = getattr(self.peer_process, "pid", "?"), getattr(self.peer_process, "uid", "?")
        return f"unix:pid={pid},uid={uid}"

    async def abort(self, code: grpc.StatusCode, details: str = "", *_: object) -> NoReturn:
        raise _Abort(_number(code), details)

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = _number(code)

    def set_details(self, details: str) -> None:
        self.details = details

    def time_remaining(self) -> float | None:
        deadline = self._call.deadline
        return None if deadline is None else max(0.0, deadline - asyncio.get_running_loop().time())

    def cancelled(self) -> bool:
        return self._call.cancelled

    def done(self) -> bool:
        return self._call.finished


def _number(code: grpc.StatusCode) -> int:
    return int(code.value[0])


class Call:
    """One call: request messages in (`take_data`, `request_ended`), its handler run as a task,
    responses and the status out through the connection's `H2Server`."""

    def __init__(self, connection: GrpcConnection, sid: int, request: wire.Request) -> None:
        self.connection, self.sid, self.request = connection, sid, request
        self.context = CallContext(self, connection.peer)
        self.reader = wire.MessageReader()
        self.inbox: deque[bytes] = deque()
        self.ended = False  # the client half-closed
        self.refused: tuple[int, str] | None = None  # the request bytes were not gRPC messages
        self.held = 0  # request bytes received and not yet given back to the windows
        self.wake = asyncio.Event()
        self.headers_sent = self.cancelled = self.finished = self.expired = False
        self.deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self, handler: grpc.RpcMethodHandler | None) -> None:
        loop = asyncio.get_running_loop()
        self.task = loop.create_task(self._run(handler))
        self.task.add_done_callback(self._done)
        if self.request.timeout is not None:
            self.deadline = loop.time() + self.request.timeout
            self._timer = loop.call_at(self.deadline, self._expire)

    def take_data(self, data: bytes) -> None:
        self.held += len(data)
        found = self.reader.feed(data)
        if isinstance(found, tuple):
            self.refused = found
            self.cancel()
            return
        self.inbox.extend(found)
        self.wake.set()

    def request_ended(self) -> None:
        self.ended = True
        self.wake.set()

    def cancel(self) -> None:
        self.cancelled = True
        if self.task is not None and not self.finished:
            self.task.cancel()

    def _expire(self) -> None:
        if not self.finished:
            self.expired = True
            self.cancel()

    async def _next_message(self) -> bytes | None:
        """The next request message; None once the client half-closed."""
        while not self.inbox:
            if self.ended:
                return None
            self.wake.clear()
            await self.wake.wait()
        message = self.inbox.popleft()
        self._give_back(5 + len(message))
        return message

    def _give_back(self, count: int) -> None:
        count = min(count, self.held)
        self.held -= count
        self.connection.h2.consumed(self.sid, count)
        self.connection.schedule_flush()

    async def _requests(self, handler: grpc.RpcMethodHandler) -> AsyncIterator[Any]:
        while (message := await self._next_message()) is not None:
            yield _parsed(handler, message)

    async def _single_request(self, handler: grpc.RpcMethodHandler) -> Any:
        message = await self._next_message()
        if message is None:
            raise _Abort(wire.INTERNAL, "the call has no request message")
        return _parsed(handler, message)

    async def send(self, handler: grpc.RpcMethodHandler, response: Any) -> None:
        serialize = handler.response_serializer
        payload = serialize(response) if serialize is not None else response
        h2 = self.connection.h2
        if not self.headers_sent:
            self.headers_sent = True
            h2.send_headers(self.sid, wire.RESPONSE_HEADERS)
        h2.send_data(self.sid, wire.message(payload))
        self.connection.schedule_flush()
        while (h2.pending(self.sid) > HIGH_WATER or self.connection.paused) and h2.is_open(
            self.sid
        ):
            self.wake.clear()
            await self.wake.wait()

    async def _run(self, handler: grpc.RpcMethodHandler | None) -> None:
        code, details = wire.OK, ""
        try:
            if handler is None:
                code, details = wire.UNIMPLEMENTED, f"method {self.request.path} not found"
            else:
                await self._dispatch(handler)
                code = self.context.code if self.context.code is not None else wire.OK
                details = self.context.details
        except _Abort as abort:
            code, details = abort.code, abort.details
        except asyncio.CancelledError:
            code, details = self._cancelled_status()
        except Exception as exc:
            log.exception("%s: the handler failed", self.request.path)
            code, details = wire.UNKNOWN, f"Unexpected {type(exc).__name__}: {exc}"
        self._finish(code, details)

    def _cancelled_status(self) -> tuple[int, str]:
        if self.refused is not None:
            return self.refused
        if self.expired:
            return wire.DEADLINE_EXCEEDED, "deadline exceeded"
        return -1, ""  # reset by the client, the connection lost, or the endpoint stopping

    def _done(self, task: asyncio.Task[None]) -> None:
        if not self.finished:  # cancelled before its first step: `_run` never ran
            self._finish(*self._cancelled_status())

    async def _dispatch(self, handler: grpc.RpcMethodHandler) -> None:
        context = self.context
        if not handler.request_streaming:
            request: Any = await self._single_request(handler)
        else:
            request = self._requests(handler)
        if handler.response_streaming:
            method = handler.unary_stream or handler.stream_stream
            responses = method(request, context)
            if hasattr(responses, "__aiter__"):
                async for response in responses:
                    await self.send(handler, response)
            else:
                for response in responses:
                    await self.send(handler, response)
        else:
            method = handler.unary_unary or handler.stream_unary
            response = method(request, context)
            if inspect.isawaitable(response):
                response = await response
            if response is None:
                raise _Abort(wire.INTERNAL, "the handler returned no response")
            await self.send(handler, response)

    def _finish(self, code: int, details: str) -> None:
        self.finished = True
        if self._timer is not None:
            self._timer.cancel()
        connection, h2 = self.connection, self.connection.h2
        if code < 0:
            h2.reset(self.sid)
        elif not self.headers_sent:
            h2.send_headers(self.sid, wire.trailers_only(code, details), end_stream=True)
        else:
            h2.end_stream(self.sid, wire.trailers(code, details))
        self._give_back(self.held)  # what the handler never read
        connection.call_finished(self)


def _parsed(handler: grpc.RpcMethodHandler, message: bytes) -> Any:
    parse = handler.request_deserializer
    if parse is None:
        return message
    try:
        return parse(message)
    except Exception as exc:  # a deserializer's errors are its own (protobuf's, betterproto's)
        raise _Abort(wire.INTERNAL, f"the request message does not parse: {exc}") from None
