"""The HTTP/1.1 request reader of the ext_authz HTTP front: what Envoy's HTTP ext_authz client
sends is read, however the bytes are split; anything else is refused, bounded, and ends the
connection's reading."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from meshwarden.xds._ext_authz_http1 import Malformed, RequestHead, RequestReader

ENVOY_CHECK = (
    b"GET /meshwarden.authz/check/api/items?x=1 HTTP/1.1\r\n"
    b"host: api.a:8080\r\n"
    b"content-length: 0\r\n"
    b"X-Tenant:  acme \r\n"
    b"x-meshwarden-peer: =spiffe://example.org/ns/b/sa/client\r\n"
    b"x-envoy-internal: true\r\n"
    b"\r\n"
)
SECOND = b"POST /meshwarden.authz/check/b HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n"


def _read(*chunks: bytes, **limits: int) -> list[RequestHead | Malformed]:
    reader = RequestReader(**limits)
    return [item for chunk in chunks for item in reader.feed(chunk)]


def test_a_head_as_envoy_sends_it_is_read_with_lower_case_names_and_trimmed_values() -> None:
    (head,) = _read(ENVOY_CHECK)
    assert head == RequestHead(
        "GET",
        "/meshwarden.authz/check/api/items?x=1",
        (
            ("host", "api.a:8080"),
            ("content-length", "0"),
            ("x-tenant", "acme"),
            ("x-meshwarden-peer", "=spiffe://example.org/ns/b/sa/client"),
            ("x-envoy-internal", "true"),
        ),
    )


def test_pipelined_heads_come_out_in_order_and_close_is_noticed() -> None:
    first, second = _read(ENVOY_CHECK + SECOND)
    assert isinstance(first, RequestHead) and isinstance(second, RequestHead)
    assert (first.close, second.method, second.target, second.close) == (
        False,
        "POST",
        "/meshwarden.authz/check/b",
        True,
    )


def test_a_truncated_head_is_no_request_until_its_end_arrives() -> None:
    reader = RequestReader()
    assert reader.feed(ENVOY_CHECK[:-1]) == []
    assert reader.feed(b"") == []
    assert len(reader.feed(ENVOY_CHECK[-1:])) == 1


@given(st.lists(st.integers(0, len(ENVOY_CHECK + SECOND)), max_size=8))
def test_any_split_of_the_bytes_reads_the_same_heads(cuts: list[int]) -> None:
    stream = ENVOY_CHECK + SECOND
    points = sorted(set(cuts))
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert _read(*chunks) == _read(stream)


@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_raise_and_a_refusal_is_always_last(data: bytes) -> None:
    got = _read(data, max_head=256)
    assert all(isinstance(item, RequestHead) for item in got[:-1])
    assert all(isinstance(item, RequestHead | Malformed) for item in got)


def test_an_oversize_head_is_refused_without_waiting_for_its_end() -> None:
    reader = RequestReader(max_head=64)
    assert reader.feed(b"GET /x HTTP/1.1\r\nx-big: " + b"a" * 40) == []
    (refused,) = reader.feed(b"a" * 40)
    assert refused == Malformed(431, "request head too large")


def test_a_complete_head_over_the_limit_is_refused_too() -> None:
    head = b"GET /x HTTP/1.1\r\nx-big: " + b"a" * 100 + b"\r\n\r\n"
    assert _read(head, max_head=64) == [Malformed(431, "request head too large")]


def test_too_many_header_fields_are_refused() -> None:
    head = b"GET /x HTTP/1.1\r\n" + b"".join(b"h%d: v\r\n" % i for i in range(5)) + b"\r\n"
    assert _read(head, max_headers=4) == [Malformed(431, "too many header fields")]


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /x HTTP/1.1\r\nx-a: 1\r\n continued\r\n\r\n", 400),  # obsolete line folding
        (b"GET /x HTTP/1.1\r\nx-a: 1\nx-b: 2\r\n\r\n", 400),  # a bare LF inside a field
        (b"GET /x HTTP/1.1\r\nx-a: a\x00b\r\n\r\n", 400),  # a control character
        (b"GET /x HTTP/1.1\r\nx a: 1\r\n\r\n", 400),  # not a token
        (b"GET /x HTTP/1.1\r\nno-colon\r\n\r\n", 400),
        (b"GET /x HTTP/1.1\r\nx-a: \xff\xfe\r\n\r\n", 400),  # not UTF-8
        (b"GET http://evil/x HTTP/1.1\r\n\r\n", 400),  # absolute form
        (b"GET /x  HTTP/1.1\r\n\r\n", 400),
        (b"GET /x HTTP/1.0\r\n\r\n", 505),
        (b"POST /x HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello", 413),  # a body: never read
        (b"POST /x HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n", 501),
        (b"\r\nGET /x HTTP/1.1\r\n\r\n", 400),
    ],
)
def test_what_envoy_never_sends_is_refused(head: bytes, status: int) -> None:
    (refused,) = _read(head)
    assert isinstance(refused, Malformed) and refused.status == status


def test_after_a_refusal_nothing_more_is_read() -> None:
    reader = RequestReader()
    got = reader.feed(ENVOY_CHECK + b"GET /x HTTP/1.0\r\n\r\n" + ENVOY_CHECK)
    assert [type(item) for item in got] == [RequestHead, Malformed]
    assert reader.feed(ENVOY_CHECK) == []
