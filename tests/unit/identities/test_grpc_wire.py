"""gRPC's wire parts of the agent's local server: length-prefixed request messages read with a
size cap (an oversized or compressed message is refused before its bytes are held), status
messages percent-encoded as the gRPC spec says, and request headers checked."""

from __future__ import annotations

import tracemalloc
import urllib.parse

import hpack
from hypothesis import given, settings
from hypothesis import strategies as st
from meshwarden.identities import _grpc_wire as wire


def _framed(messages: list[bytes]) -> bytes:
    return b"".join(wire.message(m) for m in messages)


@given(st.lists(st.binary(max_size=300), max_size=6), st.data())
@settings(max_examples=100, deadline=None)
def test_any_split_of_the_request_bytes_gives_the_same_messages(
    messages: list[bytes], data: st.DataObject
) -> None:
    stream = _framed(messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    reader, read = wire.MessageReader(), []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        found = reader.feed(stream[a:b])
        assert isinstance(found, list)
        read += found
    assert read == messages
    assert not reader.partial


def test_an_oversized_message_is_refused_from_its_prefix_with_bounded_memory() -> None:
    reader = wire.MessageReader()
    tracemalloc.start()
    try:
        refused = reader.feed(b"\x00" + (5 * 1024 * 1024).to_bytes(4, "big") + b"x" * 100)
        for _ in range(100):  # the rest of the 5 MiB, 50 KiB at a time: nothing is kept
            assert reader.feed(b"x" * 50_000) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refused == (
        wire.RESOURCE_EXHAUSTED,
        "a request message of 5242880 bytes, more than the 1048576 allowed",
    )
    assert peak < 500_000


def test_a_compressed_message_is_a_grpc_error_not_a_crash() -> None:
    reader = wire.MessageReader()
    assert reader.feed(b"\x01\x00\x00\x00\x02hi") == (
        wire.UNIMPLEMENTED,
        "compressed request messages are not supported",
    )
    assert reader.feed(b"\x00\x00\x00\x00\x00") == []  # nothing more is read
    assert wire.MessageReader().feed(b"\x80\x00\x00\x00\x00")[0] == wire.INTERNAL  # type: ignore[index]


@given(st.text(max_size=200))
def test_status_messages_are_percent_encoded_printable_ascii(message: str) -> None:
    encoded = wire.percent_encoded(message)
    assert all(0x20 <= b <= 0x7E for b in encoded)
    assert urllib.parse.unquote(encoded.decode("ascii"), errors="replace") == message.encode(
        "utf-8", "replace"
    ).decode("utf-8", "replace")


def _headers(**extra: str) -> list[tuple[str, str]]:
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/SpiffeWorkloadAPI/FetchX509SVID"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("workload.spiffe.io", "true"),
    ]
    return headers + [(k.replace("_", "-"), v) for k, v in extra.items()]


def test_request_headers_give_the_metadata_a_servicer_sees_and_the_deadline() -> None:
    request = wire.request(_headers(grpc_timeout="1500m", x_id_bin="aGk", user_agent="grpc-c"))
    assert isinstance(request, wire.Request)
    assert request.path == "/SpiffeWorkloadAPI/FetchX509SVID"
    assert request.metadata == (("workload.spiffe.io", "true"), ("x-id-bin", b"hi"))
    assert request.timeout == 1.5


def test_headers_that_are_not_a_grpc_call_get_a_status() -> None:
    get = [(k, "GET" if k == ":method" else v) for k, v in _headers()]
    assert wire.request(get)[0] == wire.UNIMPLEMENTED  # type: ignore[index]
    json = [(k, "application/json" if k == "content-type" else v) for k, v in _headers()]
    assert wire.request(json)[0] == wire.UNIMPLEMENTED  # type: ignore[index]
    assert wire.request(_headers(grpc_timeout="forever")) == (
        wire.INTERNAL,
        "malformed grpc-timeout",
    )
    assert wire.request([*_headers(), (":path", "/again")])[0] == wire.INTERNAL  # type: ignore[index]


@given(st.text(alphabet=st.sampled_from("aé%\n\u2603"), min_size=300, max_size=1200))
@settings(max_examples=20, deadline=None)
def test_a_long_status_message_is_cut_between_escapes(message: str) -> None:
    headers = dict(hpack.Decoder().decode(wire.trailers(wire.INTERNAL, message), raw=True))
    encoded = headers[b"grpc-message"]
    assert len(encoded) <= wire.MAX_STATUS_MESSAGE
    assert b"%" not in encoded[-2:]
    assert message.encode().startswith(urllib.parse.unquote_to_bytes(encoded))


@given(
    st.lists(
        st.lists(
            st.sampled_from(
                [
                    (":path", "/a/B"),
                    (":path", "/c/D"),
                    ("grpc-timeout", "5S"),
                    ("grpc-timeout", "1m"),
                    ("x-id", "1"),
                    ("x-id", "2"),
                    ("x-id-bin", "aGk"),
                ]
            ),
            max_size=4,
        ),
        min_size=1,
        max_size=6,
    )
)
def test_a_kept_request_is_the_one_its_own_headers_give(
    extras: list[list[tuple[str, str]]],
) -> None:
    """Header lists that differ in any field (the method, the deadline, metadata) never share
    a Request, however often each comes back."""
    for extra in extras * 2:
        headers = _headers() + extra
        assert wire.request(headers) == wire._request(headers)
