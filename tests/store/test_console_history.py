"""The web console's history and diff endpoints on a real etcd store: the revisions `apply`
wrote, newest first with the head, and the diff `meshwarden diff -o json` prints."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
from pathlib import Path

from meshwarden._console import Console, ConsoleOptions, ConsoleSources
from meshwarden._etcd import Etcd
from meshwarden._flows import FlowLog
from meshwarden._policies import Policies
from meshwarden._policy_store import PolicyStore
from meshwarden.cli import main
from meshwarden.cli._ui import diff_json

from ..e2e._browser import chromium_page, screenshot
from .etcd_cluster import EtcdCluster

SHOP = Path(__file__).resolve().parents[2] / "examples" / "shop"


async def _get(port: int, path: str) -> tuple[str, object]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n\r\n".encode())
    head, _, body = (await reader.read()).partition(b"\r\n\r\n")
    writer.close()
    return head.decode().split("\r\n")[0].split(" ", 1)[1], json.loads(body)


def test_history_lists_the_stores_revisions_and_diff_names_what_changed(
    etcd: EtcdCluster, tmp_path: Path, capsys: object
) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(SHOP, policies)
    store = ["--store", etcd.url]
    assert main(["apply", str(policies), *store, "-m", "first"]) == 0
    text = (policies / "policies.yaml").read_text()
    (policies / "policies.yaml").write_text(text.replace("[GET, HEAD]", "[GET, HEAD, POST]", 1))
    assert main(["apply", str(policies), *store, "-m", "frontends may POST"]) == 0
    running = Policies(policies, report=io.StringIO(), settle=0)
    running.reload_if_changed()

    async def scenario() -> None:
        client = Etcd(etcd.endpoints)
        sources = ConsoleSources(running, FlowLog(10), dict, store=PolicyStore(client))
        console = Console(ConsoleOptions(diff=diff_json), sources)
        await console.start()
        port = console.endpoint.port
        try:
            status, history = await _get(port, "/api/history")
            assert status == "200 OK" and isinstance(history, dict)
            assert history["head"] == 2
            assert [(r["revision"], r["message"]) for r in history["revisions"]] == [
                (2, "frontends may POST"),
                (1, "first"),
            ]
            status, diff = await _get(port, "/api/diff?from=1")
            assert status == "200 OK" and isinstance(diff, dict)
            assert (diff["from"], diff["to"]) == (1, 2)
            assert diff["documents"] == [
                {
                    "change": "changed",
                    "document": "AuthorizationPolicy shop/backend-access",
                    "file": "policies.yaml",
                }
            ]
            assert diff["workloads"] == [{"change": "changed", "workload": "shop/backend-1"}]
            missing, _ = await _get(port, "/api/diff?from=9")
            assert missing == "404 Not Found"
            bad, _ = await _get(port, "/api/diff?from=one")
            assert bad == "400 Bad Request"
            await asyncio.to_thread(_in_the_browser, console.url)
            status, view = await _get(port, "/api/policies")  # store mode: no local file read
            assert status == "200 OK" and isinstance(view, dict)
            assert set(view["files"].values()) == {None} and view["diagnostics"] == []
        finally:
            await console.stop()
            await client.close()

    asyncio.run(scenario())


def _in_the_browser(url: str) -> None:
    """The policies page lists the revisions and shows revision 2's diff."""
    with chromium_page() as page:
        page.goto(url + "#/policies?diff=2")
        page.wait_for_selector("#diff-documents li")
        rows = page.eval_on_selector_all("#revisions tr", "rows => rows.map(r => r.textContent)")
        assert rows[1].startswith("2 (serving)") and "frontends may POST" in rows[1]
        changed = page.text_content("#diff-documents") or ""
        assert "changed AuthorizationPolicy shop/backend-access (policies.yaml)" in changed
        assert "changed shop/backend-1" in (page.text_content("#diff-workloads") or "")
        screenshot(page, "history")


def test_without_a_store_history_says_so() -> None:
    running = Policies(SHOP, report=io.StringIO(), settle=0)
    running.reload_if_changed()

    async def scenario() -> None:
        console = Console(ConsoleOptions(), ConsoleSources(running, FlowLog(10), dict))
        await console.start()
        try:
            status, body = await _get(console.endpoint.port, "/api/history")
            assert status == "404 Not Found" and "no policy store" in str(body)
        finally:
            await console.stop()

    asyncio.run(scenario())
