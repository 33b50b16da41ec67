"""Checks on single values of the policy language; each raises ValueError with a fix-it message."""

from __future__ import annotations

import ipaddress
import re

from meshwarden.engine._condition_keys import HEADER_NAME, ConditionKey
from meshwarden.engine._path_templates import PathTemplate, is_template
from meshwarden.engine._spiffe import SpiffeId, SpiffeIdError, TrustDomain

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
UNIX_SELECTOR_KINDS = ("uid", "gid", "user", "group", "path")


def dns_label(value: str) -> str:
    if len(value) > 63 or not _DNS_LABEL.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid name: use at most 63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit (Kubernetes DNS label)"
        )
    return value


def dns_subdomain(value: str) -> str:
    if len(value) > 253 or not _DNS_SUBDOMAIN.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid name: use lowercase letters, digits, '-' and '.' "
            "(Kubernetes DNS subdomain, at most 253 characters)"
        )
    return value


def label_key(value: str) -> str:
    prefix, slash, name = value.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        raise ValueError(f"label key {value!r} has an invalid prefix {prefix!r}")
    if len(name) > 63 or not _LABEL_NAME.fullmatch(name):
        raise ValueError(
            f"label key {value!r} is invalid: at most 63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit, optionally behind a DNS prefix and '/'"
        )
    return value


def label_value(value: str) -> str:
    if value and (len(value) > 63 or not _LABEL_NAME.fullmatch(value)):
        raise ValueError(
            f"label value {value!r} is invalid: at most 63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return value


def trust_domain(value: str) -> str:
    try:
        TrustDomain(value)
    except SpiffeIdError as exc:
        raise ValueError(f"invalid trust domain: {exc}") from None
    return value


def spiffe_id(value: str) -> str:
    try:
        SpiffeId.parse(value)
    except SpiffeIdError as exc:
        raise ValueError(f"invalid SPIFFE ID {value!r}: {exc}") from None
    return value


def identity_pattern(value: str) -> str:
    """An exact SPIFFE ID, `*`, or one `*` as a prefix or suffix wildcard."""
    if value == "*":
        return value
    if value.count("*") > 1 or ("*" in value and not (value[0] == "*" or value[-1] == "*")):
        raise ValueError(
            f"identity pattern {value!r}: use an exact SPIFFE ID, '*', or one '*' "
            "at the start or the end"
        )
    if value.endswith("*"):
        if not "spiffe://".startswith(value[:-1][:9]):
            raise ValueError(f"identity pattern {value!r} must start with 'spiffe://'")
        return value
    if value.startswith("*"):
        return value
    return spiffe_id(value)


def string_pattern(value: str) -> str:
    if value != "*" and (
        value.count("*") > 1 or ("*" in value and value[0] != "*" and value[-1] != "*")
    ):
        raise ValueError(
            f"pattern {value!r}: use an exact value, '*', or one '*' at the start or the end"
        )
    return value


def path_pattern(value: str) -> str:
    """Exact, `/prefix*`, `*suffix`, `*`, or an Istio-style template with `{*}`/`{**}`."""
    if is_template(value):
        PathTemplate.parse(value)
        return value
    string_pattern(value)
    if value != "*" and not value.startswith(("/", "*")):
        raise ValueError(f"path {value!r} must start with '/' (or be a '*suffix' pattern)")
    return value


def condition_value(value: str) -> str:
    """A `when` value: a string pattern, or a path template (only `request.path` takes those)."""
    return path_pattern(value) if is_template(value) else string_pattern(value)


def no_path_template(value: str, key: str) -> None:
    if is_template(value):
        raise ValueError(
            f"value {value!r} of {key}: path templates ({{*}}, {{**}}) apply only to paths "
            "(to.paths, to.notPaths and request.path)"
        )


def cidr(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        hint = ""
        if "has host bits set" in str(exc):
            net = ipaddress.ip_network(value, strict=False)
            hint = f"; did you mean {net}?"
        raise ValueError(f"invalid CIDR {value!r}: {exc}{hint}") from None
    return value


def ip_address(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from None
    return value


def port_number(value: int) -> int:
    if isinstance(value, bool) or not 1 <= value <= 65535:
        raise ValueError(f"port {value!r} is out of range: use 1-65535")
    return value


def port_range(value: int | str) -> tuple[int, int]:
    """`8080`, `"8080"` or `"9000-9010"` (inclusive) → (low, high)."""
    if isinstance(value, int) and not isinstance(value, bool):
        port_number(value)
        return value, value
    text = str(value).strip()
    low_text, dash, high_text = text.partition("-")
    try:
        low = int(low_text)
        high = int(high_text) if dash else low
    except ValueError:
        raise ValueError(f"port {value!r} is not a number or a range like '9000-9010'") from None
    port_number(low)
    port_number(high)
    if low > high:
        raise ValueError(f"port range {value!r} is reversed: write '{high}-{low}'")
    return low, high


def port_spec(value: int | str) -> int | str:
    port_range(value)
    return value


def http_method(value: str) -> str:
    if not value or (not HEADER_NAME.fullmatch(value.strip("*")) and value != "*"):
        raise ValueError(f"{value!r} is not an HTTP method")
    return value


def header_name(value: str) -> str:
    if not HEADER_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid HTTP header name")
    return value


def condition_key(value: str) -> str:
    ConditionKey.parse(value)
    return value


MAX_LINUX_ID = 4294967294  # (uid_t)-1 = 4294967295 means "no id" to the kernel


def _linux_id(text: str) -> bool:
    """A uid or gid as the agent writes it: str.isdigit() alone admits '²' (which int()
    refuses) and other scripts' digits (which never equal an attested selector)."""
    return (
        text.isascii()
        and text.isdigit()
        and (text == "0" or not text.startswith("0"))
        and int(text) <= MAX_LINUX_ID
    )


def attestation_selector(value: str) -> str:
    kind, _, rest = value.partition(":")
    if kind == "node":
        dns_subdomain(rest)
        return value
    if kind == "unix":
        sub, _, arg = rest.partition(":")
        if sub not in UNIX_SELECTOR_KINDS or not arg:
            raise ValueError(
                f"selector {value!r}: use unix:uid:N, unix:gid:N, unix:user:NAME, "
                "unix:group:NAME or unix:path:/absolute/exe"
            )
        if sub in ("uid", "gid") and not _linux_id(arg):
            raise ValueError(
                f"selector {value!r}: {sub} must be a number from 0 to {MAX_LINUX_ID}, in "
                "ASCII digits without a leading zero (as the agent attests it)"
            )
        if sub == "path" and not arg.startswith("/"):
            raise ValueError(f"selector {value!r}: the path must be absolute")
        return value
    raise ValueError(f"selector {value!r}: the kind must be 'unix' or 'node'")


def upstream_service(value: str) -> str:
    namespace, slash, name = value.partition("/")
    if not slash:
        raise ValueError(f"service {value!r} must be written NAMESPACE/NAME")
    dns_label(namespace)
    dns_label(name)
    return value
