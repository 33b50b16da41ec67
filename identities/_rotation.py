"""Key rotation, as SPIRE's CA manager: each authority goes prepared → active → retired.

A prepared authority is published in the bundle before it signs anything, so every relying party
trusts it by the time it is activated; a retired one stays published until it expires, so the
SVIDs it signed stay verifiable until they expire too (their NotAfter is capped at the CA's).
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Generic, Protocol, TypeVar


class Lifetime(Protocol):
    @property
    def not_before(self) -> dt.datetime: ...

    @property
    def not_after(self) -> dt.datetime: ...


A = TypeVar("A", bound=Lifetime)

PREPARE_CAP = dt.timedelta(days=30)
ACTIVATE_CAP = dt.timedelta(days=7)


class SlotState(enum.Enum):
    """Where an authority is in its rotation."""

    PREPARED = "prepared"
    ACTIVE = "active"
    RETIRED = "retired"


@dataclass(frozen=True)
class Slot(Generic[A]):
    """An authority and its place in rotation (prepared, active or retired)."""

    authority: A
    state: SlotState


def prepare_at(authority: Lifetime) -> dt.datetime:
    lifetime = authority.not_after - authority.not_before
    return authority.not_after - min(lifetime / 2, PREPARE_CAP)


def activate_at(authority: Lifetime) -> dt.datetime:
    lifetime = authority.not_after - authority.not_before
    return authority.not_after - min(lifetime / 6, ACTIVATE_CAP)


class Rotation(Generic[A]):
    """The slots of one kind of authority. `advance(now)` applies every due transition."""

    def __init__(self, mint: Callable[[dt.datetime], A], slots: tuple[Slot[A], ...] = ()) -> None:
        self._mint = mint
        self._slots: tuple[Slot[A], ...] = slots

    @property
    def slots(self) -> tuple[Slot[A], ...]:
        return self._slots

    def active(self) -> A:
        for slot in self._slots:
            if slot.state is SlotState.ACTIVE:
                return slot.authority
        raise LookupError("no active authority; call advance() first")

    def published(self) -> tuple[A, ...]:
        """Authorities relying parties must trust: prepared, active and unexpired retired."""
        return tuple(slot.authority for slot in self._slots)

    def _of(self, state: SlotState) -> Slot[A] | None:
        return next((s for s in self._slots if s.state is state), None)

    def advance(self, now: dt.datetime) -> bool:
        """Apply due transitions; True when the published set changed."""
        before = self._slots
        self._slots = tuple(s for s in self._slots if s.authority.not_after > now)
        active, prepared = self._of(SlotState.ACTIVE), self._of(SlotState.PREPARED)
        if active is None:
            self._activate(prepared or Slot(self._mint(now), SlotState.PREPARED))
        elif prepared is None and now >= prepare_at(active.authority):
            self._slots += (Slot(self._mint(now), SlotState.PREPARED),)
        elif prepared is not None and now >= activate_at(active.authority):
            self._activate(prepared)
        return [s.authority for s in before] != [s.authority for s in self._slots]

    def _activate(self, prepared: Slot[A]) -> None:
        kept = [s for s in self._slots if s is not prepared]
        retired = [
            replace(s, state=SlotState.RETIRED) if s.state is SlotState.ACTIVE else s for s in kept
        ]
        self._slots = (*retired, replace(prepared, state=SlotState.ACTIVE))
