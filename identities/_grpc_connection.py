"""One accepted connection of the agent's local gRPC server: asyncio's transport below, an
`H2Server` for the bytes, a `Call` per stream. The process at the other end is attested when
the connection is accepted (`identify`), before a byte is read, and every call on the
connection is that process's: no table of names, no second socket."""

from __future__ import annotations

import asyncio

from meshwarden.identities import _grpc_wire as wire
from meshwarden.identities._grpc_calls import Call, LocalServer
from meshwarden.identities._h2_frames import (
    ConnectionEnded,
    DataReceived,
    Event,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowOpened,
)
from meshwarden.identities._h2_server import H2Server


class GrpcConnection(asyncio.Protocol):
    """Serves the calls of one connection from `server`'s handlers. Subclasses attest the peer
    in `identify` (raise to refuse the connection: it is closed unread)."""

    def __init__(self, server: LocalServer) -> None:
        self.server = server
        self.h2 = H2Server(window=wire.MAX_MESSAGE + 5)
        self.calls: dict[int, Call] = {}
        self.transport: asyncio.Transport | None = None
        self.peer: object = None
        self.paused = False  # the transport's write buffer is full
        self.closing = False
        self._flush_due = False

    def identify(self, transport: asyncio.Transport) -> object:
        return None

    def admit_call(self) -> bool:
        """Whether a new call may run; one refused is answered RESOURCE_EXHAUSTED."""
        return True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        try:
            self.peer = self.identify(transport)
        except Exception:
            transport.close()
            return
        self.transport = transport  # the server's SETTINGS go out with the first answer

    def data_received(self, data: bytes) -> None:
        for event in self.h2.receive(data):
            self._event(event)
        if (self.h2.closed or self.closing) and not self.calls:
            self.close()
        elif self.h2.has_output:  # a call's task schedules its own answer
            self.schedule_flush()

    def _event(self, event: Event) -> None:
        if isinstance(event, DataReceived):
            call = self.calls.get(event.stream_id)
            if call is None:
                self.h2.consumed(event.stream_id, len(event.data))
            else:
                call.take_data(event.data)
        elif isinstance(event, RequestReceived):
            self._request(event.stream_id, event.headers)
        elif isinstance(event, StreamEnded):
            if (call := self.calls.get(event.stream_id)) is not None:
                call.request_ended()
        elif isinstance(event, StreamReset):
            if (call := self.calls.get(event.stream_id)) is not None:
                call.cancel()
        elif isinstance(event, WindowOpened):
            self._wake_writers()
        elif isinstance(event, ConnectionEnded):
            if not event.by_peer or event.code:  # an error: every call is over
                self._cancel_calls()
            self.closing = True

    def _request(self, sid: int, headers: list[tuple[str, str]]) -> None:
        request = wire.request(headers)
        if isinstance(request, tuple):
            self.h2.send_headers(sid, wire.trailers_only(*request), end_stream=True)
            return
        if not self.admit_call():
            refused = wire.trailers_only(wire.RESOURCE_EXHAUSTED, "too many calls from this uid")
            self.h2.send_headers(sid, refused, end_stream=True)
            return
        call = self.calls[sid] = Call(self, sid, request)
        call.start(self.server.handler(request))

    def call_finished(self, call: Call) -> None:
        self.calls.pop(call.sid, None)
        self.schedule_flush()
        if (self.closing or self.h2.closed) and not self.calls:
            self.close()

    def schedule_flush(self) -> None:
        """Write what is queued once the calls started by this read have taken their first
        step: a call answered at once shares one write with the SETTINGS before it."""
        if not self._flush_due and self.transport is not None:  # lost: nothing to write to
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._flush_due = False
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def _wake_writers(self) -> None:
        for call in self.calls.values():
            call.wake.set()

    def _cancel_calls(self) -> None:
        for call in list(self.calls.values()):
            call.cancel()

    def close(self) -> None:
        """GOAWAY, every call cancelled, the connection closed once its bytes are written."""
        self._cancel_calls()
        self.h2.close()
        self.flush()
        if self.transport is not None:
            self.transport.close()

    def pause_writing(self) -> None:
        self.paused = True
        if self.transport is not None:
            self.transport.pause_reading()  # a client that does not read gets no more answers

    def resume_writing(self) -> None:
        self.paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
        self._wake_writers()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._cancel_calls()
