"""Condition keys (`when[].key`) parsed once into a typed variant: the attribute, and for
`request.headers[NAME]` / `request.jwt.claims[PATH]` its argument. The evaluator and the
translator to Envoy both match on the variant; neither slices the key's text."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from meshwarden.engine._vocabulary import Peers

HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_INDEXED_KEY = re.compile(r"(request\.headers|request\.jwt\.claims)\[([^\[\]]+)\]")


class Attribute(StrEnum):
    """The request attribute a condition looks at."""

    SOURCE_IP = "source.ip"
    SOURCE_NAMESPACE = "source.namespace"
    SOURCE_IDENTITY = "source.identity"
    DESTINATION_PORT = "destination.port"
    REQUEST_METHOD = "request.method"
    REQUEST_PATH = "request.path"
    REQUEST_HEADER = "request.headers"  # request.headers[NAME]
    JWT_CLAIM = "request.jwt.claims"  # request.jwt.claims[PATH]


PLAIN_CONDITION_KEYS = tuple(
    a.value for a in Attribute if a not in (Attribute.REQUEST_HEADER, Attribute.JWT_CLAIM)
)
_PEERS = {
    Attribute.SOURCE_IP: Peers.PLAINTEXT,
    Attribute.SOURCE_IDENTITY: Peers.IDENTIFIED,
    Attribute.SOURCE_NAMESPACE: Peers.IDENTIFIED,
}
_HTTP = frozenset(
    {
        Attribute.REQUEST_METHOD,
        Attribute.REQUEST_PATH,
        Attribute.REQUEST_HEADER,
        Attribute.JWT_CLAIM,
    }
)


@dataclass(frozen=True, slots=True)
class ConditionKey:
    """A parsed condition key; `argument` is the header name (lower-case, as HTTP/2 carries
    it) or the claim's dotted path, "" for the other attributes. Prints as written."""

    text: str
    attribute: Attribute = field(compare=False)
    argument: str = field(default="", compare=False)

    @classmethod
    def parse(cls, text: str) -> ConditionKey:
        """ValueError naming the supported keys when `text` is not one."""
        if text in PLAIN_CONDITION_KEYS:
            return cls(text, Attribute(text))
        match = _INDEXED_KEY.fullmatch(text)
        if match is None:
            supported = ", ".join(
                ["request.headers[NAME]", "request.jwt.claims[PATH]", *PLAIN_CONDITION_KEYS]
            )
            raise ValueError(f"unknown condition key {text!r}; supported keys: {supported}")
        attribute, argument = Attribute(match.group(1)), match.group(2)
        if attribute is Attribute.REQUEST_HEADER:
            if not HEADER_NAME.fullmatch(argument):
                raise ValueError(f"{argument!r} is not a valid HTTP header name")
            argument = argument.lower()
        return cls(text, attribute, argument)

    def __str__(self) -> str:
        return self.text

    @property
    def peers(self) -> Peers:
        """The identity-first rule for this attribute."""
        return _PEERS.get(self.attribute, Peers.ANY)

    @property
    def is_http(self) -> bool:
        """The attribute exists only on HTTP requests."""
        return self.attribute in _HTTP
