"""Errors of the identities part. Each message says what was checked and what was found."""

from __future__ import annotations


class IdentityError(Exception):
    """Base class of every error raised by meshwarden.identities."""


class SvidValidationError(IdentityError):
    """An X509-SVID or JWT-SVID failed verification; the message names the failed rule."""


class BundleError(IdentityError):
    """A trust bundle could not be parsed or is not usable."""


class IssuanceError(IdentityError):
    """A signing request was refused or could not be served."""


class AttestationError(IdentityError):
    """The caller of a local socket could not be identified."""


class StoreUnreachable(IdentityError):
    """The shared store that holds join tokens and node records does not answer: the caller
    should try another server (never a reason to let anyone in)."""


class StateError(IdentityError):
    """A state file or the data dir cannot be used as it is; the message names the file and
    says how to fix it."""
