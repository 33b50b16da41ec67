"""Problems found in policy documents, each with the place it was found."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Severity(StrEnum):
    """How bad a diagnostic is: an error rejects the documents, a warning does not."""

    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True, order=True)
class Location:
    """A place in a file; line and column are 1-based."""

    file: str
    line: int = 1
    column: int = 1

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True, slots=True, order=True)
class Diagnostic:
    """A problem found in a policy file: where, how bad, and what (`file:line:col: error: ...`)."""

    location: Location
    severity: Severity
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.severity.value}: {self.message}"

    def to_json(self) -> dict[str, object]:
        return {
            "file": self.location.file,
            "line": self.location.line,
            "column": self.location.column,
            "severity": self.severity.value,
            "message": self.message,
        }


def error(location: Location, message: str) -> Diagnostic:
    return Diagnostic(location, Severity.ERROR, message)


def warning(location: Location, message: str) -> Diagnostic:
    return Diagnostic(location, Severity.WARNING, message)
