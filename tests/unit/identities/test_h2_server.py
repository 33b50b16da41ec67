"""The agent's sans-IO HTTP/2 server against a real HTTP/2 client (the `h2` library) and
against bytes no client should send: any split of the input gives the same events, fuzzed
frames end in a GOAWAY or RST_STREAM and never an exception, and oversized header blocks and
HPACK bombs are refused with bounded memory."""

from __future__ import annotations

import struct
import tracemalloc

import h2.config
import h2.connection
import h2.events
import h2.settings
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from meshwarden.identities import _h2_frames as f
from meshwarden.identities._h2_server import MAX_HEADER_LIST, RESET_FLOOD, H2Server

REQUEST = [
    (":method", "POST"),
    (":scheme", "http"),
    (":path", "/SpiffeWorkloadAPI/FetchX509SVID"),
    (":authority", "localhost"),
    ("content-type", "application/grpc"),
    ("te", "trailers"),
    ("workload.spiffe.io", "true"),
]


def _client(local: dict[int, int] | None = None) -> h2.connection.H2Connection:
    config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    client = h2.connection.H2Connection(config)
    client.local_settings = h2.settings.Settings(client=True, initial_values=local or None)
    client.initiate_connection()
    return client


def _request_bytes(streams: int = 1) -> bytes:
    client = _client()
    for n in range(streams):
        client.send_headers(1 + 2 * n, REQUEST)
        client.send_data(1 + 2 * n, b"\x00\x00\x00\x00\x02ab", end_stream=True)
    return client.data_to_send()


def _settled() -> H2Server:
    server = H2Server()
    server.receive(f.PREFACE + f.frame(f.SETTINGS, 0, 0))
    server.data_to_send()
    return server


def test_a_request_from_an_h2_client_and_the_answer_it_reads() -> None:
    client = _client()
    client.send_headers(1, REQUEST)
    client.send_data(1, b"\x00\x00\x00\x00\x02ab", end_stream=True)
    server = H2Server()
    events = server.receive(client.data_to_send())
    assert [type(e) for e in events] == [
        f.WindowOpened,
        f.RequestReceived,
        f.DataReceived,
        f.StreamEnded,
    ]
    assert events[1] == f.RequestReceived(1, REQUEST)
    assert events[2] == f.DataReceived(1, b"\x00\x00\x00\x00\x02ab")
    server.send_headers(1, b"\x88" + f.literal(b"content-type", b"application/grpc"))
    server.send_data(1, b"\x00\x00\x00\x00\x01z")
    server.end_stream(1, f.literal(b"grpc-status", b"0"))
    answer = client.receive_data(server.data_to_send())
    kinds = [type(e) for e in answer]
    assert h2.events.ResponseReceived in kinds and h2.events.TrailersReceived in kinds
    data = b"".join(e.data for e in answer if isinstance(e, h2.events.DataReceived))
    assert data == b"\x00\x00\x00\x00\x01z"
    trailers = next(e for e in answer if isinstance(e, h2.events.TrailersReceived))
    assert list(trailers.headers) == [("grpc-status", "0")]
    assert not server.is_open(1)


def _events_of(chunks: list[bytes]) -> tuple[list[f.Event], bytes]:
    server = H2Server()
    events: list[f.Event] = []
    for chunk in chunks:
        events += server.receive(chunk)
    return events, server.data_to_send()


@given(st.data())
@settings(max_examples=60, deadline=None)
def test_any_split_of_the_input_gives_the_same_events(data: st.DataObject) -> None:
    stream = _request_bytes(streams=3)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    whole_events, whole_out = _events_of([stream])
    split_events, split_out = _events_of(chunks)
    merged = [e for e in split_events if not isinstance(e, f.DataReceived)]
    assert merged == [e for e in whole_events if not isinstance(e, f.DataReceived)]
    for sid in (1, 3, 5):

        def body(events: list[f.Event], sid: int = sid) -> bytes:
            return b"".join(
                e.data for e in events if isinstance(e, f.DataReceived) and e.stream_id == sid
            )

        assert body(split_events) == body(whole_events)
    assert split_out == whole_out


_KNOWN_ERRORS = {
    f.PROTOCOL_ERROR,
    f.FLOW_CONTROL_ERROR,
    f.STREAM_CLOSED,
    f.FRAME_SIZE_ERROR,
    f.REFUSED_STREAM,
    f.COMPRESSION_ERROR,
    f.ENHANCE_YOUR_CALM,
}

_frames = st.builds(
    lambda kind, flags, sid, payload: f.frame(kind, flags, sid, payload),
    st.integers(0, 12),
    st.integers(0, 255),
    st.sampled_from([0, 1, 2, 3, 5, 7, 0x7FFFFFFF]),
    st.one_of(
        st.binary(max_size=40), st.sampled_from([b"\x00" * 4, b"\x00\x00\x00\x01", b"\x00" * 8])
    ),
)


def _frames_out(data: bytes) -> list[tuple[int, int, int, bytes]]:
    out, at = [], 0
    while at + 9 <= len(data):
        length = int.from_bytes(data[at : at + 3], "big")
        kind, flags = data[at + 3], data[at + 4]
        sid = int.from_bytes(data[at + 5 : at + 9], "big")
        out.append((kind, flags, sid, data[at + 9 : at + 9 + length]))
        at += 9 + length
    assert at == len(data)
    return out


@given(st.lists(_frames, max_size=12), st.booleans())
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzzed_frames_end_in_a_goaway_or_rst_stream_never_an_exception(
    frames: list[bytes], after_request: bool
) -> None:
    server = H2Server()
    prefix = _request_bytes() if after_request else f.PREFACE + f.frame(f.SETTINGS, 0, 0)
    events = server.receive(prefix)
    for raw in frames:
        events += server.receive(raw)
    out = _frames_out(server.data_to_send())
    for kind, _, _, payload in out:
        if kind == f.GOAWAY:
            assert int.from_bytes(payload[4:8], "big") in _KNOWN_ERRORS
            assert server.closed
        elif kind == f.RST_STREAM:
            assert int.from_bytes(payload, "big") in _KNOWN_ERRORS
    ended = [e for e in events if isinstance(e, f.ConnectionEnded) and not e.by_peer]
    assert bool(ended) == server.closed
    if server.closed:
        assert server.receive(b"anything after") == []


def test_garbage_instead_of_the_preface_is_a_goaway() -> None:
    server = H2Server()
    events = server.receive(b"GET / HTTP/1.1\r\n\r\n")
    assert events == [f.ConnectionEnded(f.PROTOCOL_ERROR, False, "not the HTTP/2 client preface")]
    assert _frames_out(server.data_to_send())[-1][0] == f.GOAWAY


def _hpack_literal_indexed(name: bytes, value: bytes) -> bytes:
    """An HPACK literal with incremental indexing (enters the dynamic table), new name."""
    return b"\x40" + bytes(f.literal(name, value)[1:])


def test_an_hpack_bomb_is_refused_with_bounded_memory() -> None:
    """A 4,000-byte value entered in the dynamic table once, then referenced 10,000 times
    (one byte each): 40 MB of headers from 10 KB of block, refused at 16 KiB."""
    server = _settled()
    first = _hpack_literal_indexed(b"x-bomb", b"v" * 4000)
    tracemalloc.start()
    try:
        server.receive(f.frame(f.HEADERS, f.END_HEADERS, 1, first + b"\xbe" * 2))
        events = server.receive(f.frame(f.HEADERS, f.END_HEADERS, 3, b"\xbe" * 10_000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(events[-1], f.ConnectionEnded)
    assert events[-1].code == f.COMPRESSION_ERROR
    assert peak < 1_000_000
    assert server.closed


def test_an_endless_header_block_is_refused_once_over_the_cap() -> None:
    server = _settled()
    events = server.receive(f.frame(f.HEADERS, 0, 1, b"\x00\x01a\x01b"))
    refused_after = 0
    for n in range(1, 100):
        events += server.receive(f.frame(f.CONTINUATION, 0, 1, b"\x00\x01a\x01b" * 2000))
        if server.closed:
            refused_after = n
            break
    assert events[-1] == f.ConnectionEnded(f.ENHANCE_YOUR_CALM, False, "header block too large")
    assert refused_after * 10_000 <= MAX_HEADER_LIST + 1024 + 10_000


def test_a_stream_over_the_concurrency_cap_is_refused() -> None:
    server = H2Server(max_streams=2)
    events = server.receive(_request_bytes(streams=3))
    assert [e.stream_id for e in events if isinstance(e, f.RequestReceived)] == [1, 3]
    resets = [(k, s, p) for k, _, s, p in _frames_out(server.data_to_send()) if k == f.RST_STREAM]
    assert resets == [(f.RST_STREAM, 5, struct.pack(">I", f.REFUSED_STREAM))]


@given(st.lists(st.integers(1, 9), min_size=1, max_size=8))
@example([1])
@settings(max_examples=3, deadline=None)
def test_a_one_byte_window_still_delivers_a_100_kib_response(increments: list[int]) -> None:
    """The client allows 1 byte per stream at first, then opens its windows a few bytes at a
    time: the whole response arrives, in order, never beyond a window, and the trailers last."""
    client = _client({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1})
    client.send_headers(1, REQUEST, end_stream=True)
    server = H2Server()
    server.receive(client.data_to_send())
    body = bytes(range(256)) * 400
    server.send_headers(1, b"\x88")
    server.send_data(1, body)
    server.end_stream(1, f.literal(b"grpc-status", b"0"))
    received, window, trailers = bytearray(), 1, False
    for step in range(200_000):
        for kind, flags, sid, payload in _frames_out(server.data_to_send()):
            if kind == f.DATA:
                assert len(payload) <= window
                window -= len(payload)
                received += payload
            elif kind == f.HEADERS and sid == 1 and flags & f.END_STREAM:
                trailers = True
        if trailers:
            break
        grant = increments[step % len(increments)]
        window += grant
        server.receive(f.window_update(1, grant) + f.window_update(0, grant))
    assert trailers and bytes(received) == body


def test_ping_is_answered_and_goaway_from_the_client_is_reported() -> None:
    server = _settled()
    events = server.receive(f.frame(f.PING, 0, 0, b"12345678"))
    assert _frames_out(server.data_to_send()) == [(f.PING, f.ACK, 0, b"12345678")]
    events = server.receive(f.goaway(0, f.NO_ERROR, b"bye"))
    assert events == [f.ConnectionEnded(f.NO_ERROR, True, "bye")]
    assert server.going_away


def test_rst_stream_from_the_client_ends_the_stream() -> None:
    server = H2Server()
    client = _client()
    client.send_headers(1, REQUEST)
    server.receive(client.data_to_send())
    server.data_to_send()
    events = server.receive(f.rst_stream(1, f.CANCEL))
    assert events == [f.StreamReset(1, f.CANCEL, by_peer=True)]
    assert not server.is_open(1)
    server.send_data(1, b"late")  # a handler that has not noticed yet: nothing is sent
    assert server.data_to_send() == b""


def _block() -> bytes:
    return b"".join(f.literal(k.encode(), v.encode()) for k, v in REQUEST)


def test_a_header_block_in_continuations_with_padding_and_priority_is_one_request() -> None:
    block = _block()
    priority = b"\x00\x00\x00\x00\x10"  # depends on stream 0, weight 17
    padded = bytes((7,)) + priority + block[:10] + b"\x00" * 7
    frames = (
        f.frame(f.HEADERS, f.PADDED | f.PRIORITY_FLAG, 1, padded)
        + f.frame(f.PRIORITY, 0, 3, priority)  # on an idle stream: allowed, opens nothing
        + f.frame(0xFA, 0, 0, b"an extension")  # unknown types are ignored
    )
    server = _settled()
    assert server.receive(frames) == [
        f.ConnectionEnded(f.PROTOCOL_ERROR, False, "a header block was interrupted")
    ]
    server = _settled()
    events = server.receive(
        f.frame(f.HEADERS, f.PADDED | f.PRIORITY_FLAG, 1, padded)
        + f.frame(f.CONTINUATION, 0, 1, block[10:30])
        + f.frame(f.CONTINUATION, f.END_HEADERS, 1, block[30:])
        + f.frame(f.PRIORITY, 0, 3, priority)
        + f.frame(0xFA, 0, 0, b"an extension")
    )
    assert events == [f.RequestReceived(1, REQUEST)]
    assert server.data_to_send() == b""


def test_the_clients_max_frame_size_is_honoured() -> None:
    client = _client({h2.settings.SettingCodes.MAX_FRAME_SIZE: 20_000})
    client.send_headers(1, REQUEST, end_stream=True)
    server = H2Server(window=f.DEFAULT_WINDOW)
    server.receive(client.data_to_send())
    server.data_to_send()
    server.send_headers(1, b"\x88")
    server.send_data(1, b"y" * 60_000)
    sizes = [len(p) for k, _, _, p in _frames_out(server.data_to_send()) if k == f.DATA]
    assert sizes == [20_000, 20_000, 20_000]


def _open_and_reset(client: h2.connection.H2Connection, server: H2Server, sid: int) -> list:
    client.send_headers(sid, REQUEST)
    client.reset_stream(sid)
    return server.receive(client.data_to_send())


def test_a_rapid_reset_flood_ends_the_connection() -> None:
    """Opening streams and resetting them at once bypasses the concurrent-stream cap (each
    costs the server a handler): the connection ends with ENHANCE_YOUR_CALM."""
    client, server = _client(), H2Server()
    server.receive(client.data_to_send())
    ended = []
    for n in range(RESET_FLOOD + 50):
        events = _open_and_reset(client, server, 1 + 2 * n)
        ended += [e for e in events if isinstance(e, f.ConnectionEnded)]
        if ended:
            break
    assert ended == [
        f.ConnectionEnded(
            f.ENHANCE_YOUR_CALM,
            False,
            f"{RESET_FLOOD} of {RESET_FLOOD} streams reset before their answer",
        )
    ]
    assert server.closed


def test_a_client_whose_streams_mostly_get_their_answer_may_cancel_some() -> None:
    """A third of 1,000 streams cancelled before their answer (a client going away, deadlines):
    no flood, the connection stays."""
    client, server = _client(), H2Server()
    server.receive(client.data_to_send())
    for n in range(1000):
        sid = 1 + 2 * n
        if n % 3 == 0:
            events = _open_and_reset(client, server, sid)
        else:
            client.send_headers(sid, REQUEST, end_stream=True)
            events = server.receive(client.data_to_send())
            server.send_headers(sid, b"\x88" + f.literal(b"grpc-status", b"0"), end_stream=True)
            client.receive_data(server.data_to_send())
        assert not any(isinstance(e, f.ConnectionEnded) for e in events)
    assert not server.closed


def test_a_malformed_request_is_refused_on_every_connection_that_sends_it() -> None:
    """A first header block is cached with whether it is a well-formed request: the second
    connection sending the same malformed block (a connection-specific field, an upper-case
    name, `te` other than trailers) is refused as the first was, and a well-formed one is
    not refused for having shared the cache with them."""
    for bad in (("connection", "close"), ("X-Upper", "1"), ("te", "gzip")):
        block = b"".join(f.literal(n.encode(), v.encode()) for n, v in [*REQUEST[:4], bad])
        for _ in range(2):
            server = _settled()
            events = server.receive(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, 1, block))
            assert events == []
            assert _frames_out(server.data_to_send()) == [
                (f.RST_STREAM, 0, 1, (f.PROTOCOL_ERROR).to_bytes(4, "big"))
            ]
    good = b"".join(f.literal(n.encode(), v.encode()) for n, v in REQUEST)
    for _ in range(2):
        events = _settled().receive(f.frame(f.HEADERS, f.END_HEADERS, 1, good))
        assert events == [f.RequestReceived(1, REQUEST)]
