"""`meshwarden verify`'s judgement of probes and its matrix (the live part: tests/e2e)."""

import contextlib
import socket
import threading

from meshwarden.engine import CompiledMesh, Decision, check_documents, parse_text

from meshwarden.cli._verify import matrix
from meshwarden.cli._verify_probes import Outcome, Probe, send

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


MESH = """\
apiVersion: meshwarden.io/v1alpha1
kind: Mesh
metadata: {name: mesh}
spec: {trustDomain: example.org}
---
apiVersion: meshwarden.io/v1alpha1
kind: Workload
metadata: {name: db-1, namespace: shop, labels: {app: db}}
spec:
  addresses: [127.0.0.4]
  ports: [{name: pg, port: 5432, targetPort: TARGET}]
---
apiVersion: meshwarden.io/v1alpha1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
  ports: [{port: 5432}]
"""


def load_text(text: str) -> CompiledMesh:
    documents, problems = parse_text(text, "mesh.yaml")
    compiled, diagnostics = check_documents(documents)
    assert compiled is not None and not problems, (problems, diagnostics)
    return compiled


def _closing_listener() -> socket.socket:
    """What a destination sidecar does with a tcp connection it refuses, or cannot forward for
    want of an app: accepts it and closes it at once."""
    listener = socket.create_server(("127.0.0.1", 0))

    def close_each() -> None:
        with contextlib.suppress(OSError):
            while True:
                listener.accept()[0].close()

    threading.Thread(target=close_each, daemon=True).start()
    return listener


def test_a_tcp_close_is_a_deny_only_while_the_app_behind_the_sidecar_listens() -> None:
    """Without the app, verify reported `sidecars DENY (connection closed)` for a pair explain
    allows: a difference in the policies for what was a missing app."""
    with _closing_listener() as sidecar, socket.create_server(("127.0.0.1", 0)) as app:
        app_port = app.getsockname()[1]
        mesh = load_text(MESH.replace("TARGET", str(app_port)))
        probe = Probe("shop/backend-1", "shop/db", 5432, sidecar.getsockname()[1], False)
        assert send(mesh, probe) == ("DENY", "connection closed")
        app.close()
        assert send(mesh, probe) == (
            "ERROR",
            f"connection closed, and no app listens on 127.0.0.1:{app_port} "
            "(shop/db-1's targetPort)",
        )
