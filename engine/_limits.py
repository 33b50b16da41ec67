"""Limits on policy input, so a hostile or broken file costs bounded memory and time.

Each limit is checked while the file is read and parsed (never after building what it
describes); a file over a limit is an `error:` diagnostic at the place the limit was crossed.
The values are documented in docs/security.md ("Policy input") and docs/policy-reference.md.
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class InputLimits:
    """How much one policy file (and, for `rule_targets`, the whole mesh) may contain."""

    file_bytes: int = 4 * MIB
    """Size of one file, in bytes."""
    documents: int = 1_000
    """YAML documents (`---`) in one file."""
    nodes: int = 100_000
    """Values (scalars, mappings, sequences, keys included) in one file, aliases counted
    with everything they repeat."""
    alias_nodes: int = 10_000
    """Values repeated by alias dereferences (`*name`) in one file, counted in full each time."""
    depth: int = 64
    """Nesting of mappings and sequences."""
    scalar_chars: int = 64 * 1024
    """Characters of one scalar (a string, number or key)."""
    integer_digits: int = 64
    """Digits of one integer."""
    rule_targets: int = 500_000
    """Per mesh (all files together): AuthorizationPolicy rules times the workloads each
    policy selects, what the compiled plans hold; bounds the compile of a root-namespace
    policy with many rules in a mesh of many workloads."""


LIMITS = InputLimits()


def over_limit(what: str) -> str:
    """The message of a crossed limit, pointing at where the limits are documented."""
    return f"{what} (a policy input limit; see docs/security.md)"
