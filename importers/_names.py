"""Kubernetes names as meshwarden names: object names may be DNS subdomains (dots, 253
characters), ours are DNS labels (63 characters, no dots)."""

from __future__ import annotations

import hashlib
import re

_NOT_LABEL = re.compile(r"[^a-z0-9-]+")
LABEL_LENGTH = 63


def dns_label(name: str) -> str:
    """`name` as a DNS label: dots become dashes; a name still too long keeps its start and
    gains a short hash of the whole name, so two long names never collide silently."""
    label = _NOT_LABEL.sub("-", name.lower()).strip("-") or "x"
    if len(label) <= LABEL_LENGTH:
        return label
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{label[: LABEL_LENGTH - 9].rstrip('-')}-{digest}"


def joined(name: str, suffix: str) -> str:
    """`name-suffix` as a DNS label."""
    return dns_label(f"{name}-{suffix}")
