"""`meshwarden explain --trace` exports the explanation as a span tree over OTLP/gRPC (a real
receiver): the verdict on the root, one child per policy considered with why it matched or not."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest

from meshwarden.cli import main
from meshwarden.demo import otlp_receiver

SHOP = str(Path(__file__).parents[2] / "examples" / "shop")
REQUEST = [
    "explain",
    SHOP,
    "--to",
    "shop/backend-1",
    "--port",
    "8080",
    "--from-workload",
    "shop/frontend-1",
    "--path",
    "/api/items",
]


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_the_explanation_is_a_span_tree_with_one_child_per_policy() -> None:
    with otlp_receiver() as receiver:
        code, out, err = _run(
            [*REQUEST, "-o", "json", "--trace", "--otlp-endpoint", receiver.endpoint]
        )
        spans = list(receiver.spans)
    assert code == 0
    explained = json.loads(out)  # stdout stays the plain JSON explanation
    trace_id = err.split("trace ")[1].split()[0]
    roots = [s for s in spans if s.name == "meshwarden.explain"]
    assert len(roots) == 1 and roots[0].trace_id == trace_id
    root = roots[0]
    assert root.attributes["meshwarden.authz.decision"] == "allow"
    assert root.attributes["meshwarden.authz.policy"] == explained["policy"]
    assert root.attributes["meshwarden.authz.rule"] == str(explained["rule"])
    assert root.attributes["meshwarden.source.spiffe_id"].endswith("/ns/shop/sa/frontend")
    children = [
        s
        for s in spans
        if s.parent_span_id == root.span_id and s.name == "meshwarden.explain.policy"
    ]
    assert sorted(c.attributes["meshwarden.authz.policy"] for c in children) == sorted(
        t["policy"] for t in explained["trace"]
    )
    by_policy = {t["policy"]: t for t in explained["trace"]}
    for child in children:
        considered = by_policy[child.attributes["meshwarden.authz.policy"]]
        assert child.attributes["meshwarden.policy.matched"] is considered["matched"]
        reasons = child.attributes["meshwarden.policy.rule_reasons"]
        assert reasons == [r["reason"] or "MATCHED" for r in considered["rules"]]


def test_trace_without_a_collector_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    code, _, err = _run([*REQUEST, "--trace"])
    assert code == 2
    assert "--otlp-endpoint" in err and "OTEL_EXPORTER_OTLP_ENDPOINT" in err


def test_the_standard_environment_variable_names_the_collector(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with otlp_receiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        code, _, err = _run([*REQUEST, "--trace"])
        assert code == 0, err
        assert [s.name for s in receiver.spans].count("meshwarden.explain") == 1


def test_an_unreachable_collector_is_reported() -> None:
    code, _, err = _run([*REQUEST, "--trace", "--otlp-endpoint", "http://127.0.0.1:9"])
    assert code == 2
    assert "could not export the trace to http://127.0.0.1:9" in err


def test_a_source_workload_adds_its_egress_explanation_with_the_same_names(
    tmp_path: Path,
) -> None:
    """With --from-workload the trace also explains egress at the source: a child span with
    the same verdict attributes plus `meshwarden.authz.direction`, and its policies below."""
    policies = tmp_path / "shop"
    shutil.copytree(SHOP, policies)
    (policies / "egress.yaml").write_text(EGRESS_DENY)
    with otlp_receiver() as receiver:
        argv = [*REQUEST[:1], str(policies), *REQUEST[2:], "-o", "json", "--trace"]
        code, out, err = _run([*argv, "--otlp-endpoint", receiver.endpoint])
        spans = list(receiver.spans)
    assert code == 1, err  # egress denies the path
    explained = json.loads(out)["egress"]
    (root,) = [s for s in spans if s.name == "meshwarden.explain"]
    (egress,) = [s for s in spans if s.name == "meshwarden.explain.egress"]
    assert egress.parent_span_id == root.span_id
    assert root.attributes["meshwarden.authz.direction"] == "ingress"
    assert (
        egress.attributes["meshwarden.authz.direction"],
        egress.attributes["meshwarden.authz.decision"],
        egress.attributes["meshwarden.authz.policy"],
        egress.attributes["meshwarden.authz.rule"],
        egress.attributes["meshwarden.source.workload"],
    ) == ("egress", "deny", explained["policy"], str(explained["rule"]), "shop/frontend-1")
    assert explained["policy"] == "shop/frontend-no-backend"
    considered = [s for s in spans if s.parent_span_id == egress.span_id]
    assert [s.attributes["meshwarden.authz.policy"] for s in considered] == [
        "shop/frontend-no-backend"
    ]


EGRESS_DENY = """\
apiVersion: meshwarden.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: frontend-no-backend, namespace: shop}
spec:
  direction: egress
  action: DENY
  selector: {matchLabels: {app: frontend}}
  rules: [{to: [{workloads: {matchLabels: {app: backend}}}]}]
"""
