"""The argparse types every command shares: one grammar for HOST:PORT, one for durations.

An argparse type raises `argparse.ArgumentTypeError`; the parser turns it into the one-line
`meshwarden COMMAND: error: --flag 'VALUE': ...` (exit 2)."""

from __future__ import annotations

import argparse
import ipaddress
import re
from urllib.parse import urlsplit

_HOST_PORT = re.compile(
    r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9._-]*)):(?P<port>\d{1,5})"
)
LOOPBACK = "127.0.0.1"
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DURATION_EXAMPLES = "90s, 5m, 1h30m, 500ms or 2d"
_INTERFACE = re.compile(r"(?=.{1,15}$)[A-Za-z0-9_.-]+\+?")  # `docker0`, or `br-+` (iptables)
_CHAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,27}")  # iptables: at most 28 characters


def split_host_port(text: str) -> tuple[str, int]:
    """`127.0.0.1:8443` → ("127.0.0.1", 8443); `[::1]:80` → ("::1", 80); `:80` → ("127.0.0.1",
    80), never all interfaces by omission; ValueError otherwise."""
    match = _HOST_PORT.fullmatch(text)
    if match is None or int(match["port"]) > 65535:
        raise ValueError(f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:8443")
    return match["ipv6"] or match["host"] or LOOPBACK, int(match["port"])


def host_port(text: str) -> str:
    """An argparse type: HOST:PORT, returned as written except that an empty HOST is 127.0.0.1
    (port 0 asks the system for a free port where one listens)."""
    try:
        host, port = split_host_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def loopback_host_port(text: str) -> str:
    """An argparse type: HOST:PORT as `host_port`, where HOST must be a loopback address or
    `localhost` (for endpoints that answer without authentication, such as /healthz and /flows)."""
    address = host_port(text)
    host = address.rpartition(":")[0].strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise argparse.ArgumentTypeError(
            f"{text!r}: this endpoint has no authentication, so it listens on loopback only "
            "(127.0.0.1, ::1 or localhost); put an authenticating proxy in front to reach it "
            "from elsewhere"
        )
    return address


def host_port_list(text: str) -> str:
    """An argparse type: HOST:PORT, or several separated by commas (control-plane replicas),
    each checked as `host_port`; returned comma-joined."""
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT[,HOST:PORT...]")
    return ",".join(host_port(part) for part in parts)


def http_server(text: str) -> str:
    """An argparse type: HOST:PORT of an HTTP endpoint. The `http://HOST:PORT/...` URL that
    `meshwarden up` and `server` print is accepted too (its path is ignored). Returns HOST:PORT."""
    if "://" in text:
        url = urlsplit(text)
        try:
            port = url.port
        except ValueError:
            port = None
        if url.scheme != "http" or not url.hostname or port is None:
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected HOST:PORT or http://HOST:PORT, e.g. 127.0.0.1:9901"
            )
        host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
        text = f"{host}:{port}"
    return host_port(text)


def parse_duration(text: str) -> float:
    """`90s`, `5m`, `1h30m`, `500ms`, `1.5h`, `2d` or `0` → seconds; ValueError otherwise.

    Every number carries its unit (as in Go and kubectl), so `90` is refused rather than guessed."""
    if text == "0":
        return 0.0
    if not text or _DURATION_PART.sub("", text):
        hint = f" (add a unit: {text}s)" if re.fullmatch(r"\d+(\.\d+)?", text) else ""
        raise ValueError(f"{text!r}: expected a duration like {DURATION_EXAMPLES}{hint}")
    return sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))


def duration(text: str) -> float:
    """An argparse type: a duration in the one grammar of `parse_duration`, in seconds."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_duration(text: str) -> float:
    """An argparse type: a duration greater than zero."""
    seconds = duration(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be longer than 0")
    return seconds


def _number_in(
    text: str, convert: type[int] | type[float], low: float, high: float, expected: str
) -> float:
    value: float | None
    try:
        value = convert(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{text!r}: expected {expected}")
    return value


def percentage(text: str) -> float:
    """An argparse type: a number from 0 to 100."""
    return float(_number_in(text, float, 0, 100, "a percentage, 0 to 100"))


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    return int(_number_in(text, int, 1, float("inf"), "a whole number of at least 1"))


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 1 to 65535."""
    return int(_number_in(text, int, 1, 65535, "a port number, 1 to 65535"))


def interface_name(text: str) -> str:
    """An argparse type: a network interface as iptables' -i/-o take it (at most 15
    characters of letters, digits, `_.-`, optionally ending in the wildcard `+`). Written into
    a restore file, anything else would break the file or add rules of its own."""
    if not _INTERFACE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: not an interface name (at most 15 letters, digits, '_', '.', '-'; "
            "a trailing '+' matches every interface with that prefix)"
        )
    return text


def iptables_chain(text: str) -> str:
    """An argparse type: an iptables chain name (at most 28 letters, digits, `_.-`)."""
    if not _CHAIN.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: not an iptables chain name (at most 28 letters, digits, '_', '.', '-')"
        )
    return text
