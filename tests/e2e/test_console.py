"""The web console in a real browser (Debian's chromium, driven by Playwright) against a live
`meshwarden up --ui` of the demo's shop with real Envoy sidecars: the graph shows the shop's
workloads with an allowed and a denied edge, clicking the denied edge names the deciding
`ns/policy#rule` (and opens its YAML with the rule highlighted), the explain form answers exactly
what `meshwarden explain -o json` answers, and a live policy change recolours the edge without
a reload. Screenshots of each view go to build/console-screenshots/ (docs/console.md shows
copies)."""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import APIResponse, Page, Route

from meshwarden.demo import DemoIdp, move_to_free_ports, sample_apps, shop_copy

from .._loopback import claim_net
from ._browser import chromium_page, screenshot
from ._live import MeshwardenUp, request, wait_for

ROOT = Path(__file__).resolve().parents[2]
GREEN, RED = "rgb(46,125,50)", "rgb(198,40,40)"
ALLOWED = "shop/frontend-1->shop/backend-1:8080"
DENIED = "ops/ops-1->shop/backend-1:8080"
DATABASE = "shop/backend-1->shop/db-1:5432"  # tcp
TRACE_UI = "http://127.0.0.1:16686/trace/{traceId}"


class ShopMesh:
    """The demo's shop on addresses of its own (127.116.N.x), run by `meshwarden up --ui`."""

    def __init__(self, root: Path) -> None:
        self.net = claim_net()
        self.idp = DemoIdp("https://idp.example.com")
        self.folder = shop_copy(ROOT / "examples" / "shop", self.idp)
        self.ports = move_to_free_ports(self.folder)
        for name in ("workloads.yaml", "policies.yaml"):
            path = self.folder / name
            path.write_text(path.read_text().replace("127.0.0.", f"{self.net}."))
        self.trace_id = secrets.token_hex(16)  # of the denied request
        ui = ("--ui", "127.0.0.1:0", "--ui-trace-url", TRACE_UI)
        self.up = MeshwardenUp(self.folder, root / "data", ui)

    @property
    def console(self) -> str:
        return self.up.ready_line.split("console ")[1].split(",")[0]

    def frontend_reads_the_catalogue(self) -> Any:
        return request("127.0.0.1", self.ports[15080], "GET", "/api/catalogue")

    def ops_reads_debug_vars(self) -> Any:
        traceparent = f"00-{self.trace_id}-{secrets.token_hex(8)}-01"
        return request(
            "127.0.0.1", self.ports[15081], "GET", "/debug/vars", {"traceparent": traceparent}
        )

    def stranger_reads_the_catalogue(self) -> Any:
        return request(f"{self.net}.3", 8080, "GET", "/api/catalogue", source=f"{self.net}.9")

    def backend_queries_the_db(self) -> bytes:
        with socket.create_connection(("127.0.0.1", self.ports[15432]), timeout=10) as conn:
            conn.sendall(b"ping")
            return conn.recv(64)

    def explain(self, *flags: str) -> dict[str, Any]:
        result = subprocess.run(
            [sys.executable, "-m", "meshwarden", "explain", str(self.folder), *flags, "-o", "json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode in (0, 1), result.stderr
        return dict(json.loads(result.stdout))


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShopMesh]:
    mesh = ShopMesh(tmp_path_factory.mktemp("console"))
    with sample_apps([mesh.ports[18080], mesh.ports[18081]], [mesh.ports[15433]]):
        mesh.up.start()
        try:
            assert mesh.frontend_reads_the_catalogue() == 200
            assert mesh.ops_reads_debug_vars() == 403
            assert mesh.stranger_reads_the_catalogue() == 200
            assert mesh.backend_queries_the_db() == b"echo ping"
            yield mesh
        finally:
            assert mesh.up.stop() == 0, mesh.up.log.read_text()[-3000:]


@pytest.fixture(scope="module")
def browser_page(shop: ShopMesh) -> Iterator[Page]:
    with chromium_page() as page:
        yield page


def _edge(page: Page, edge_id: str) -> dict[str, Any] | None:
    found: Any = page.evaluate(
        """id => { const cy = window.meshwardenConsole.cy; const e = cy && cy.getElementById(id);
             return e && e.nonempty() ? {decision: e.data('decision'), causes: e.data('causes'),
               colour: e.style('line-color').replace(/ /g, '')} : null; }""",
        edge_id,
    )
    return dict(found) if found else None


def _until(page: Page, expression: str, timeout: float = 60) -> None:
    """Poll a JavaScript expression until it is true (the page's CSP forbids the eval that
    Playwright's wait_for_function needs)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"still false after {timeout:.0f} s: {expression}"
        time.sleep(0.1)


def _open_graph(page: Page, shop: ShopMesh, edge: str) -> None:
    """The graph view, once it shows `edge`."""
    page.goto(shop.console + "#/graph")
    page.wait_for_selector("body[data-ready=graph]")
    _until(page, f"window.meshwardenConsole.cy.getElementById('{edge}').nonempty()")


def test_the_graph_shows_the_shops_workloads_an_allowed_and_a_denied_edge(
    shop: ShopMesh, browser_page: Page
) -> None:
    page = browser_page
    _open_graph(page, shop, DENIED)
    workloads = page.evaluate(
        "window.meshwardenConsole.cy.nodes('[kind = \"workload\"]').map(n => n.id())"
    )
    assert set(workloads) >= {"shop/frontend-1", "shop/backend-1", "shop/db-1", "ops/ops-1"}
    assert _edge(page, ALLOWED) == {
        "decision": "allow",
        "colour": GREEN,
        "causes": [
            {
                "decision": "allow",
                "cause": "shop/backend-access#0",
                "policy": "shop/backend-access",
                "rule": 0,
                "count": 1,
            }
        ],
    }
    _until(page, f"window.meshwardenConsole.cy.getElementById('{DATABASE}').nonempty()")
    database = _edge(page, DATABASE)
    assert database is not None and database["causes"][0]["cause"] == "shop/db-access#0"
    denied = _edge(page, DENIED)
    assert denied is not None and (denied["decision"], denied["colour"]) == ("deny", RED)
    # the stranger's record may come in a later flush of the backend's sidecar than the others
    _until(page, f"window.meshwardenConsole.cy.getElementById('ip:{shop.net}.9').nonempty()")
    stranger = page.evaluate(
        f"window.meshwardenConsole.cy.getElementById('ip:{shop.net}.9').data('kind')"
    )
    assert stranger == "plaintext"
    overview = page.text_content("#details") or ""
    assert "Sidecars: 4 of 4 in sync" in overview, overview
    screenshot(page, "graph")


def test_clicking_the_denied_edge_names_the_policy_rule_and_opens_its_yaml(
    shop: ShopMesh, browser_page: Page
) -> None:
    page = browser_page
    _open_graph(page, shop, DENIED)
    _click(page, DENIED, "renderedMidpoint")
    page.wait_for_selector("#details-title")
    assert page.text_content("#details-title") == "ops/ops-1 → shop/backend-1:8080"
    causes = page.text_content("#edge-causes") or ""
    assert "deny meshwarden-system/no-debug-anywhere#0" in causes
    assert page.get_attribute("#edges tr.selected", "data-edge") == DENIED
    trace = page.get_attribute("#edge-flows a[target=_blank]", "href")
    assert trace == TRACE_UI.replace("{traceId}", shop.trace_id)
    screenshot(page, "edge-details")
    page.click("#edge-causes a")
    page.wait_for_selector("body[data-ready=policies]")
    page.wait_for_selector("#source .line.rule")
    highlighted = page.eval_on_selector_all(
        "#source .line.rule", "rows => rows.map(r => r.textContent)"
    )
    assert any("paths: [/debug/*, /internal/*]" in line for line in highlighted), highlighted
    assert "AuthorizationPolicy meshwarden-system/no-debug-anywhere" in (
        page.text_content("#source-title") or ""
    )
    screenshot(page, "policies")


def _click(page: Page, element: str, where: str) -> None:
    """A real mouse click on a graph element (`where`: renderedMidpoint or renderedPosition)."""
    point = page.evaluate(
        f"""() => {{ const box = document.getElementById('cy').getBoundingClientRect();
             const p = window.meshwardenConsole.cy.getElementById('{element}').{where}();
             return [box.left + p.x, box.top + p.y]; }}"""
    )
    page.mouse.click(point[0], point[1])


def test_clicking_a_workload_shows_its_identity_svid_expiry_and_sidecar_state(
    shop: ShopMesh, browser_page: Page
) -> None:
    page = browser_page
    _open_graph(page, shop, DENIED)
    _click(page, "ops/ops-1", "renderedPosition")
    page.wait_for_selector("#details dl")
    terms = page.eval_on_selector_all("#details dt", "items => items.map(i => i.textContent)")
    values = page.eval_on_selector_all("#details dd", "items => items.map(i => i.textContent)")
    shown = dict(zip(terms, values, strict=True))
    assert shown["identity"] == "spiffe://example.org/ns/ops/sa/ops"
    assert dt.datetime.fromisoformat(shown["SVID expires"]) > dt.datetime.now(dt.UTC)
    assert shown["sidecar"].startswith("SYNCED, 1 stream(s), replica 127.0.0.1:")
    screenshot(page, "workload")


def test_the_decision_filter_keeps_the_denied_edges_and_is_in_the_url(
    shop: ShopMesh, browser_page: Page
) -> None:
    page = browser_page
    _open_graph(page, shop, DENIED)
    page.select_option("#filter-decision", "deny")
    _until(page, "window.meshwardenConsole.cy.edges().length == 1")
    assert page.evaluate("window.meshwardenConsole.cy.edges().map(e => e.id())") == [DENIED]
    assert page.url.endswith("#/graph?decision=deny&minutes=15")
    assert page.eval_on_selector_all("#edges tbody tr", "rows => rows.length") == 1


def test_the_explain_form_answers_what_the_cli_answers(shop: ShopMesh, browser_page: Page) -> None:
    page = browser_page
    page.goto(shop.console + "#/explain")
    page.wait_for_selector("body[data-ready=explain]")
    page.select_option("#explain-to", "shop/backend-1")
    page.fill("#explain-port", "8080")
    page.select_option("#explain-from-workload", "ops/ops-1")
    page.fill("#explain-path", "/admin/flush")
    claims = shop.idp.claims(groups=["admin"])
    page.fill("#explain-jwt", json.dumps(claims))
    page.click("#explain-submit")
    page.wait_for_selector("#explain-result:not([hidden])")
    shown = json.loads(page.text_content("#explain-json") or "")
    cli = shop.explain(
        "--to",
        "shop/backend-1",
        "--port",
        "8080",
        "--from-workload",
        "ops/ops-1",
        "--path",
        "/admin/flush",
        "--jwt-claims",
        json.dumps(claims),
    )
    assert shown == cli
    assert (cli["decision"], cli["policy"], cli["rule"]) == ("ALLOW", "shop/backend-access", 1)
    assert page.text_content("#explain-verdict") == "ALLOW"
    screenshot(page, "explain")
    deep_link = page.url  # the answer's URL, opened afresh, answers the same
    page.goto("about:blank")
    page.goto(deep_link)
    page.wait_for_selector("#explain-result:not([hidden])")
    assert json.loads(page.text_content("#explain-json") or "") == cli


def _served_allows(shop: ShopMesh, page: Page, edge_id: str) -> int:
    """How many allowed records of `edge_id` the console serves for the page's filters now."""
    url = shop.console + "api/graph?" + page.evaluate("graphParams().toString()")
    with urllib.request.urlopen(url, timeout=10) as reply:
        edges = json.loads(reply.read())["edges"]
    return sum(int(e["counts"]["allow"]) for e in edges if e["id"] == edge_id)


def _pump_until(page: Page, check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Wait in the browser (route handlers run meanwhile) until `check()`."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        page.wait_for_timeout(100)


GRAPH_FETCH = re.compile(r"/api/graph\?")


def test_a_record_announced_while_the_graph_is_fetched_brings_one_more_fetch(
    shop: ShopMesh, browser_page: Page
) -> None:
    """The page fetches the graph at most once a second; a record announced while a fetch is
    under way (whose answer was built before that record was stored) is shown by the next."""
    page = browser_page
    edge_id = f"ip:{shop.net}.9->shop/backend-1:8080"  # a plaintext peer: one record a request
    _open_graph(page, shop, edge_id)
    held: list[tuple[Route, APIResponse]] = []
    released = False

    def hold(route: Route) -> None:  # answered now by the console, handed to the page later
        if released:
            route.continue_()
        else:
            held.append((route, route.fetch()))

    page.route(GRAPH_FETCH, hold)
    try:
        before = _served_allows(shop, page, edge_id)
        assert shop.stranger_reads_the_catalogue() == 200
        _pump_until(page, lambda: bool(held), "the page fetches the graph for the record")
        announced = page.evaluate("window.meshwardenConsole.events")
        assert shop.stranger_reads_the_catalogue() == 200
        assert wait_for(lambda: _served_allows(shop, page, edge_id), before + 2, 60) == before + 2
        _pump_until(
            page,
            lambda: page.evaluate("window.meshwardenConsole.events") > announced,
            "the page hears of the second record while its fetch is under way",
        )
    finally:
        released = True
        for route, answer in held:  # answered as built when the fetch was made
            route.fulfill(response=answer)
    shown = f"window.meshwardenConsole.graph.edges.find(e => e.id == '{edge_id}').counts.allow"
    _until(page, f"{shown} == {before + 2}", timeout=60)
    page.unroute(GRAPH_FETCH)


def test_a_live_policy_change_recolours_the_edge_without_a_reload(
    shop: ShopMesh, browser_page: Page
) -> None:
    page = browser_page
    _open_graph(page, shop, ALLOWED)
    assert _edge(page, ALLOWED)["decision"] == "allow"  # type: ignore[index]
    page.evaluate("window.meshwardenConsole.marker = 'same page'")
    before = shop.up.health()["policyVersion"]
    policies = shop.folder / "policies.yaml"
    policies.write_text(
        policies.read_text().replace("paths: [/api/*, /health]", "paths: [/health]")
    )
    assert wait_for(lambda: shop.up.health()["policyVersion"] != before, True) is True
    assert wait_for(shop.frontend_reads_the_catalogue, 403) == 403
    _until(
        page, f"window.meshwardenConsole.cy.getElementById('{ALLOWED}').data('decision') == 'deny'"
    )
    edge = _edge(page, ALLOWED)
    assert edge is not None and edge["colour"] == RED
    assert page.evaluate("window.meshwardenConsole.marker") == "same page"  # no reload
    screenshot(page, "live-change")
