"""`meshwarden verify`'s judgement of probes and its matrix (the live part: tests/e2e)."""

from meshwarden.engine import Decision

from meshwarden.cli._verify import matrix
from meshwarden.cli._verify_probes import Outcome, Probe

ALLOWED = Decision(True, "shop/backend-access", 0, "ALLOW rule matched")
DENIED = Decision(False, "default:deny", None, "no rule matched")


def _outcome(source: str, observed: str, explained: Decision, expected: str | None = None):
    probe = Probe(source, "shop/backend", 8080, 15080, True, "GET", "/api/x", expected)
    return Outcome(
        probe, observed, "403" if observed == "DENY" else "200", {"shop/backend-1": explained}
    )


def test_a_probe_differs_when_the_sidecars_disagree_with_explain_or_the_expectation():
    assert _outcome("shop/frontend-1", "ALLOW", ALLOWED).problems == []
    assert _outcome("shop/frontend-1", "DENY", ALLOWED).problems == [
        "sidecars DENY (403), explain ALLOW (shop/backend-1: ALLOW by shop/backend-access rule 0)"
    ]
    assert _outcome("ops/ops-1", "DENY", DENIED, "ALLOW").problems == [
        "expected ALLOW, sidecars DENY (403)"
    ]
    assert _outcome("ops/ops-1", "ERROR", DENIED).problems == ["the probe failed: 200"]


def test_the_matrix_has_sources_down_destinations_across_and_marks_differences():
    text = matrix(
        [_outcome("shop/frontend-1", "DENY", ALLOWED), _outcome("ops/ops-1", "DENY", DENIED)]
    )
    assert text.splitlines() == [
        "FROM \\ TO        shop/backend:8080",
        "ops/ops-1        DENY",
        "shop/frontend-1  DENY!",
    ]
