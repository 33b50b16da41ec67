"""The server side of one HTTP/2 connection (RFC 9113), sans-IO and restricted to what a gRPC
server needs: `receive(bytes)` returns events, the `send_*` methods queue frames, and
`data_to_send()` hands the bytes to write. No I/O, no clock, no task.

What it does with the client's bytes: checks the preface and that SETTINGS comes first; decodes
header blocks (HEADERS + CONTINUATION, padding and priority stripped) with a bounded HPACK
decoder (a dynamic table of at most `TABLE_SIZE`, a header list of at most `max_header_list`
bytes, a block of at most that plus 1 KiB before decoding); enforces the stream-id rules and
MAX_CONCURRENT_STREAMS (a stream over the cap is refused with REFUSED_STREAM); keeps both
directions' flow-control windows (the client's INITIAL_WINDOW_SIZE and MAX_FRAME_SIZE honoured;
response bytes wait for window; the client's windows reopen as the caller reports bytes
consumed); answers PING and SETTINGS; reports RST_STREAM and GOAWAY; ignores PRIORITY and frame
types it does not know. A connection error queues a GOAWAY and ends the connection
(`ConnectionEnded`); a stream error queues a RST_STREAM (`StreamReset`). Nothing the client sends
raises, and nothing it sends is held beyond the frame being read, a header block under the cap,
and the request bytes its windows allow."""

from __future__ import annotations

import functools
from collections import deque

from hpack import HPACKError
from meshwarden.identities import _h2_frames as f
from meshwarden.identities._h2_headers import TABLE_SIZE, HeaderDecoder

MAX_STREAMS = 100
MAX_HEADER_LIST = 16 * 1024
RESET_FLOOD = 200  # streams reset by the client before their answer (see the docstring)


class _Stream:
    __slots__ = ("end", "pending", "recv_window", "remote_closed", "send_window", "size", "unacked")

    def __init__(self, send_window: int, recv_window: int) -> None:
        self.send_window = send_window
        self.recv_window = recv_window  # what the client may still send on it
        self.unacked = 0  # consumed bytes not yet given back with a WINDOW_UPDATE
        self.remote_closed = False
        self.pending: deque[memoryview] = deque()  # response bytes waiting for window
        self.size = 0
        self.end: bytes | None = None  # the trailers block, sent once `pending` is out


class H2Server:
    """One connection's HTTP/2 state (see the module docstring)."""

    def __init__(
        self,
        window: int = f.DEFAULT_WINDOW,
        max_streams: int = MAX_STREAMS,
        max_header_list: int = MAX_HEADER_LIST,
    ) -> None:
        self.window = window  # what the client may send unconsumed, per stream and in all
        self.max_streams = max_streams
        self.max_header_list = max_header_list
        self.closed = False  # a GOAWAY was sent: nothing more is read
        self.going_away = False  # the client sent GOAWAY: it opens no more streams
        self._in = bytearray()
        self._out = bytearray()
        self._preface = False
        self._settled = False  # the client's first SETTINGS arrived
        self._decoder = HeaderDecoder(max_header_list)
        self._streams: dict[int, _Stream] = {}
        self._last_stream = 0
        self._opened = 0  # streams this connection opened
        self._premature = 0  # of them, reset by the client before their answer
        self._send_window = f.DEFAULT_WINDOW
        self._recv_window = window
        self._unacked = 0
        self._peer_window = f.DEFAULT_WINDOW  # the client's INITIAL_WINDOW_SIZE
        self._peer_frame = f.MIN_FRAME_SIZE  # the client's MAX_FRAME_SIZE
        self._table_update = b""
        self._block: bytearray | None = None  # a header block waiting for CONTINUATION
        self._block_stream = self._block_flags = 0
        self._out += _server_preface(window, max_streams, max_header_list)

    # --- the client's bytes -------------------------------------------------------------

    def receive(self, data: bytes) -> list[f.Event]:
        events: list[f.Event] = []
        if self.closed:
            return events
        self._in += data
        try:
            self._frames(events)
        except f.H2Error as exc:
            self._fail(exc.code, str(exc), events)
        return events

    def _frames(self, events: list[f.Event]) -> None:
        buffer, at = self._in, 0
        if not self._preface:
            if not f.PREFACE.startswith(bytes(buffer[: len(f.PREFACE)])):
                raise f.H2Error(f.PROTOCOL_ERROR, "not the HTTP/2 client preface")
            if len(buffer) < len(f.PREFACE):
                return
            self._preface, at = True, len(f.PREFACE)
        try:
            unpack, size = f.FRAME_HEADER.unpack_from, len(buffer)
            while size - at >= 9 and not self.closed:
                length_kind, flags, stream_id = unpack(buffer, at)
                length = length_kind >> 8
                if length > f.MIN_FRAME_SIZE:  # our SETTINGS_MAX_FRAME_SIZE
                    raise f.H2Error(f.FRAME_SIZE_ERROR, f"a frame of {length} bytes")
                if size - at < 9 + length:
                    break
                payload = bytes(buffer[at + 9 : at + 9 + length])
                at += 9 + length
                self._frame(length_kind & 0xFF, flags, stream_id & 0x7FFFFFFF, payload, events)
        finally:
            del buffer[:at]

    def _frame(self, kind: int, flags: int, sid: int, payload: bytes, ev: list[f.Event]) -> None:
        if self._block is not None and (kind != f.CONTINUATION or sid != self._block_stream):
            raise f.H2Error(f.PROTOCOL_ERROR, "a header block was interrupted")
        if not self._settled and (kind != f.SETTINGS or flags & f.ACK):
            raise f.H2Error(f.PROTOCOL_ERROR, "the preface's SETTINGS is missing")
        if kind == f.DATA:
            self._data(flags, sid, payload, ev)
        elif kind == f.HEADERS:
            self._headers(flags, sid, payload, ev)
        elif kind == f.CONTINUATION:
            self._continuation(flags, sid, payload, ev)
        elif kind in (f.SETTINGS, f.PING, f.GOAWAY, f.PUSH_PROMISE):
            if sid != 0 or kind == f.PUSH_PROMISE:
                raise f.H2Error(f.PROTOCOL_ERROR, f"frame type {kind} on stream {sid}")
            (self._settings if kind == f.SETTINGS else self._ping_or_goaway)(
                kind, flags, payload, ev
            )
        elif kind in (f.PRIORITY, f.RST_STREAM, f.WINDOW_UPDATE):
            self._stream_control(kind, sid, payload, ev)
        # Any other type is an extension this server does not know: ignored (RFC 9113 §5.5).

    def _data(self, flags: int, sid: int, payload: bytes, ev: list[f.Event]) -> None:
        if sid == 0:
            raise f.H2Error(f.PROTOCOL_ERROR, "DATA on stream 0")
        if len(payload) > self._recv_window:
            raise f.H2Error(f.FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        self._recv_window -= len(payload)
        body = f.unpadded(flags, payload)
        stream = self._streams.get(sid)
        if stream is None and sid > self._last_stream:
            raise f.H2Error(f.PROTOCOL_ERROR, f"DATA on idle stream {sid}")
        if stream is None or stream.remote_closed or len(payload) > stream.recv_window:
            self.consumed(sid, len(payload))  # nobody reads it: the connection window reopens
            if stream is not None:
                code = f.STREAM_CLOSED if stream.remote_closed else f.FLOW_CONTROL_ERROR
                self._reset(sid, code, ev)
            return  # a stream that has ended: what the client sent before it knew is dropped
        stream.recv_window -= len(payload)
        self.consumed(sid, len(payload) - len(body))  # padding
        if body:
            ev.append(f.DataReceived(sid, body))
        if flags & f.END_STREAM:
            stream.remote_closed = True
            ev.append(f.StreamEnded(sid))

    def _headers(self, flags: int, sid: int, payload: bytes, ev: list[f.Event]) -> None:
        if sid == 0:
            raise f.H2Error(f.PROTOCOL_ERROR, "HEADERS on stream 0")
        fragment = f.unpadded(flags, payload)
        if flags & f.PRIORITY_FLAG:
            if len(fragment) < 5:
                raise f.H2Error(f.FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            fragment = fragment[5:]
        if flags & f.END_HEADERS and len(fragment) <= self.max_header_list + 1024:
            return self._header_block(sid, flags, fragment, ev)  # a block in one frame
        self._block, self._block_stream, self._block_flags = bytearray(), sid, flags
        self._continuation(flags, sid, fragment, ev)

    def _continuation(self, flags: int, sid: int, fragment: bytes, ev: list[f.Event]) -> None:
        if self._block is None:
            raise f.H2Error(f.PROTOCOL_ERROR, "CONTINUATION without HEADERS")
        self._block += fragment
        if len(self._block) > self.max_header_list + 1024:
            raise f.H2Error(f.ENHANCE_YOUR_CALM, "header block too large")
        if flags & f.END_HEADERS:
            block, self._block = bytes(self._block), None
            self._header_block(sid, self._block_flags, block, ev)

    def _header_block(self, sid: int, flags: int, block: bytes, ev: list[f.Event]) -> None:
        try:
            headers = self._decoder.decode(block)
        except HPACKError as exc:  # OversizedHeaderListError included: the table may be torn
            raise f.H2Error(f.COMPRESSION_ERROR, f"header block: {exc}") from None
        except (ValueError, IndexError) as exc:
            raise f.H2Error(f.COMPRESSION_ERROR, f"header block: {exc}") from None
        stream = self._streams.get(sid)
        if stream is not None:  # trailers: they must end the stream
            if stream.remote_closed or not flags & f.END_STREAM:
                self._reset(sid, f.PROTOCOL_ERROR, ev)
            else:
                stream.remote_closed = True
                ev.append(f.StreamEnded(sid))
            return
        if sid <= self._last_stream or sid % 2 == 0:
            raise f.H2Error(f.PROTOCOL_ERROR, f"HEADERS opening stream {sid}")
        self._last_stream = sid
        if self.going_away or len(self._streams) >= self.max_streams:
            self._out += f.rst_stream(sid, f.REFUSED_STREAM)
            return
        known = self._decoder.well_formed
        if not (f.well_formed(headers) if known is None else known):
            self._out += f.rst_stream(sid, f.PROTOCOL_ERROR)
            return
        self._streams[sid] = _Stream(self._peer_window, self.window)
        self._opened += 1
        ev.append(f.RequestReceived(sid, headers))
        if flags & f.END_STREAM:
            self._streams[sid].remote_closed = True
            ev.append(f.StreamEnded(sid))

    def _settings(self, kind: int, flags: int, payload: bytes, ev: list[f.Event]) -> None:
        if flags & f.ACK:
            if payload:
                raise f.H2Error(f.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise f.H2Error(f.FRAME_SIZE_ERROR, "SETTINGS of a length not a multiple of 6")
        for at in range(0, len(payload), 6):
            key = int.from_bytes(payload[at : at + 2], "big")
            self._setting(key, int.from_bytes(payload[at + 2 : at + 6], "big"))
        self._settled = True
        self._out += f.frame(f.SETTINGS, f.ACK, 0)
        self._flush_all()
        ev.append(f.WindowOpened())

    def _setting(self, key: int, value: int) -> None:
        if key == f.HEADER_TABLE_SIZE and value < TABLE_SIZE:
            self._table_update = f.table_size_update(value)
        elif key == f.ENABLE_PUSH and value > 1:
            raise f.H2Error(f.PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH not 0 or 1")
        elif key == f.INITIAL_WINDOW_SIZE:
            if value > f.MAX_WINDOW:
                raise f.H2Error(f.FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE")
            delta, self._peer_window = value - self._peer_window, value
            for stream in self._streams.values():
                stream.send_window += delta
                if stream.send_window > f.MAX_WINDOW:
                    raise f.H2Error(f.FLOW_CONTROL_ERROR, "a stream window overflowed")
        elif key == f.MAX_FRAME_SIZE:
            if not f.MIN_FRAME_SIZE <= value <= f.MAX_FRAME_SIZE_LIMIT:
                raise f.H2Error(f.PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range")
            self._peer_frame = value

    def _ping_or_goaway(self, kind: int, flags: int, payload: bytes, ev: list[f.Event]) -> None:
        if kind == f.PING:
            if len(payload) != 8:
                raise f.H2Error(f.FRAME_SIZE_ERROR, "PING of a length other than 8")
            if not flags & f.ACK:
                self._out += f.frame(f.PING, f.ACK, 0, payload)
            return
        if len(payload) < 8:
            raise f.H2Error(f.FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
        self.going_away = True
        code = int.from_bytes(payload[4:8], "big")
        ev.append(f.ConnectionEnded(code, True, payload[8:200].decode("utf-8", "replace")))

    def _stream_control(self, kind: int, sid: int, payload: bytes, ev: list[f.Event]) -> None:
        if len(payload) != (5 if kind == f.PRIORITY else 4):
            raise f.H2Error(f.FRAME_SIZE_ERROR, f"frame type {kind} of a wrong length")
        value = int.from_bytes(payload[:4], "big")
        if sid == 0 and kind == f.WINDOW_UPDATE:
            return self._connection_window(value & 0x7FFFFFFF, ev)
        if sid == 0:
            raise f.H2Error(f.PROTOCOL_ERROR, f"frame type {kind} on stream 0")
        if kind == f.PRIORITY:
            return  # advisory; a stream depending on itself harms nobody here
        stream = self._streams.get(sid)
        if stream is None:
            if sid > self._last_stream:
                raise f.H2Error(f.PROTOCOL_ERROR, f"frame type {kind} on idle stream")
            return  # a stream that has ended
        if kind == f.RST_STREAM:
            del self._streams[sid]
            ev.append(f.StreamReset(sid, value, by_peer=True))
            self._premature += 1
            if self._premature >= RESET_FLOOD and self._premature * 2 > self._opened:
                raise f.H2Error(
                    f.ENHANCE_YOUR_CALM,
                    f"{self._premature} of {self._opened} streams reset before their answer",
                )
            return
        increment = value & 0x7FFFFFFF
        if increment == 0 or stream.send_window + increment > f.MAX_WINDOW:
            self._reset(sid, f.PROTOCOL_ERROR if not increment else f.FLOW_CONTROL_ERROR, ev)
            return
        stream.send_window += increment
        self._flush(sid, stream)
        ev.append(f.WindowOpened())

    def _connection_window(self, increment: int, ev: list[f.Event]) -> None:
        if increment == 0:
            raise f.H2Error(f.PROTOCOL_ERROR, "WINDOW_UPDATE of 0 on the connection")
        self._send_window += increment
        if self._send_window > f.MAX_WINDOW:
            raise f.H2Error(f.FLOW_CONTROL_ERROR, "the connection window overflowed")
        self._flush_all()
        ev.append(f.WindowOpened())

    def _reset(self, sid: int, code: int, ev: list[f.Event]) -> None:
        self._out += f.rst_stream(sid, code)
        if self._streams.pop(sid, None) is not None:
            ev.append(f.StreamReset(sid, code, by_peer=False))

    def _fail(self, code: int, reason: str, ev: list[f.Event]) -> None:
        self._out += f.goaway(self._last_stream, code, reason.encode()[:200])
        self.closed = True
        self._streams.clear()
        self._in.clear()
        ev.append(f.ConnectionEnded(code, False, reason))

    # --- the server's side --------------------------------------------------------------

    def consumed(self, sid: int, count: int) -> None:
        """The caller has taken `count` request bytes of `sid`: reopen the windows, with a
        WINDOW_UPDATE once half of a window is used up."""
        if count <= 0 or self.closed:
            return
        self._unacked += count
        if self._recv_window < self.window // 2:
            self._out += f.window_update(0, self._unacked)
            self._recv_window, self._unacked = self._recv_window + self._unacked, 0
        stream = self._streams.get(sid)
        if stream is None or stream.remote_closed:
            return
        stream.unacked += count
        if stream.recv_window < self.window // 2:
            self._out += f.window_update(sid, stream.unacked)
            stream.recv_window, stream.unacked = stream.recv_window + stream.unacked, 0

    def is_open(self, sid: int) -> bool:
        return sid in self._streams

    def send_headers(self, sid: int, block: bytes, end_stream: bool = False) -> None:
        """Response headers (or a trailers-only response with `end_stream`) of an open stream."""
        if sid not in self._streams:
            return
        block, self._table_update = self._table_update + block, b""
        flags = f.END_STREAM if end_stream else 0
        kind, size = f.HEADERS, self._peer_frame
        for at in range(0, len(block), size):
            last = at + size >= len(block)
            self._out += f.frame(
                kind, flags | (f.END_HEADERS if last else 0), sid, block[at:][:size]
            )
            kind, flags = f.CONTINUATION, 0
        if end_stream:
            del self._streams[sid]

    def send_data(self, sid: int, data: bytes) -> None:
        """Response bytes, sent as the windows allow (see `pending`)."""
        stream = self._streams.get(sid)
        if stream is not None and data:
            stream.pending.append(memoryview(data))
            stream.size += len(data)
            self._flush(sid, stream)

    def end_stream(self, sid: int, trailers: bytes) -> None:
        """The trailers, sent with END_STREAM after every byte queued before them."""
        stream = self._streams.get(sid)
        if stream is not None:
            stream.end = trailers
            self._flush(sid, stream)

    def pending(self, sid: int) -> int:
        """Response bytes of `sid` still waiting for window."""
        stream = self._streams.get(sid)
        return 0 if stream is None else stream.size

    def reset(self, sid: int, code: int = f.CANCEL) -> None:
        if self._streams.pop(sid, None) is not None:
            self._out += f.rst_stream(sid, code)

    def close(self, code: int = f.NO_ERROR, reason: str = "") -> None:
        """Send GOAWAY: no more streams; what is queued for the open ones still goes out."""
        if not self.closed:
            self._out += f.goaway(self._last_stream, code, reason.encode()[:200])
            self.closed = True

    @property
    def has_output(self) -> bool:
        return bool(self._out)

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def _flush_all(self) -> None:
        for sid, stream in list(self._streams.items()):
            if self._send_window <= 0:
                return
            if stream.pending or stream.end is not None:
                self._flush(sid, stream)

    def _flush(self, sid: int, stream: _Stream) -> None:
        out, pending = self._out, stream.pending
        while pending:
            room = min(self._send_window, stream.send_window, self._peer_frame)
            if room <= 0:
                return
            head = pending[0]
            chunk = head[:room]
            if len(head) > room:
                pending[0] = head[room:]
            else:
                pending.popleft()
            out += f.FRAME_HEADER.pack(len(chunk) << 8 | f.DATA, 0, sid)
            out += chunk
            self._send_window -= len(chunk)
            stream.send_window -= len(chunk)
            stream.size -= len(chunk)
        if stream.end is not None:
            self.send_headers(sid, stream.end, end_stream=True)


@functools.cache
def _server_preface(window: int, max_streams: int, max_header_list: int) -> bytes:
    """The server's SETTINGS (and the connection window beyond the default), built once."""
    settings = {
        f.MAX_CONCURRENT_STREAMS: max_streams,
        f.MAX_HEADER_LIST_SIZE: max_header_list,
        f.ENABLE_PUSH: 0,
        f.INITIAL_WINDOW_SIZE: window,
    }
    extra = f.window_update(0, window - f.DEFAULT_WINDOW) if window > f.DEFAULT_WINDOW else b""
    return f.settings_frame(settings) + extra
