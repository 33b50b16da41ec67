"""`meshwarden demo`: the shop example as a live mesh with real Envoy sidecars.

Starts the control plane, a node agent, one Envoy per workload and tiny sample apps; sends
requests through the sidecars and prints a table — request, expected, what Envoy did, and the
policy that decided (from `explain` on the same request); then changes a policy while everything
runs and shows the decision flip. Exits 0 only if every row matches. `--offline` runs the
walkthrough of `check` and `explain` alone (no Envoy)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from meshwarden.cli import _observe as observe
from meshwarden.cli import _ui as ui
from meshwarden.cli._common import EXIT_FAILED, EXIT_OK, envoy_or_fail, fail

EXAMPLES = """\
examples:
  meshwarden demo                 # the live mesh: Envoy sidecars, a live policy change, traces
  meshwarden demo --offline       # check and explain only, no Envoy
  meshwarden demo --otlp-endpoint http://127.0.0.1:4317   # spans to your Jaeger or Tempo
  meshwarden demo --ui 127.0.0.1:8088   # and the web console; the mesh runs until Ctrl-C"""


def shipped_example(name: str = "shop") -> Path:
    """An example shipped inside the package (package data), wherever meshwarden is installed."""
    return Path(str(resources.files("meshwarden") / "examples" / name))


@dataclass(frozen=True)
class Step:
    title: str
    args: tuple[str, ...]
    expected: str
    cause: str


STEPS = (
    Step(
        "frontend reads the catalogue",
        ("--from-workload", "shop/frontend-1", "--method", "GET", "--path", "/api/catalogue"),
        "ALLOW",
        "shop/backend-access",
    ),
    Step(
        "frontend tries to POST an order",
        ("--from-workload", "shop/frontend-1", "--method", "POST", "--path", "/api/orders"),
        "DENY",
        "default:deny",
    ),
    Step(
        "frontend sneaks to /debug via ..",
        ("--from-workload", "shop/frontend-1", "--path", "/api/../debug/vars"),
        "DENY",
        "meshwarden-system/no-debug-anywhere",
    ),
    Step(
        "ops admin with a corp token",
        (
            "--from-workload",
            "ops/ops-1",
            "--path",
            "/admin/flush",
            "--jwt-claims",
            '{"iss": "https://idp.example.com", "aud": "backend", "groups": ["admin"]}',
        ),
        "ALLOW",
        "shop/backend-access",
    ),
    Step(
        "ops without the admin group",
        (
            "--from-workload",
            "ops/ops-1",
            "--path",
            "/admin/flush",
            "--jwt-claims",
            '{"iss": "https://idp.example.com", "aud": "backend", "groups": ["dev"]}',
        ),
        "DENY",
        "default:deny",
    ),
    Step(
        "token from an unknown issuer",
        (
            "--from-workload",
            "ops/ops-1",
            "--path",
            "/admin/x",
            "--jwt-claims",
            '{"iss": "https://evil.example.com"}',
        ),
        "DENY",
        "jwt:invalid",
    ),
    Step(
        "stranger (no identity) from its IP",
        ("--source-ip", "127.0.0.9", "--path", "/api/catalogue"),
        "ALLOW",
        "shop/backend-access",
    ),
    Step(
        "stranger from another IP",
        ("--source-ip", "127.0.0.10", "--path", "/api/catalogue"),
        "DENY",
        "default:deny",
    ),
    Step(
        "frontend POSTs from the stranger's IP",
        (
            "--from-workload",
            "shop/frontend-1",
            "--source-ip",
            "127.0.0.9",
            "--method",
            "POST",
            "--path",
            "/api/catalogue",
        ),
        "DENY",
        "default:deny",
    ),
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the shop example as a live mesh (or --offline: check and explain)",
        description=__doc__,
        epilog=EXAMPLES,
    )
    parser.add_argument(
        "--examples",
        type=Path,
        metavar="DIR",
        help="the shop example directory (default: the one shipped with meshwarden)",
    )
    parser.add_argument(
        "--offline", action="store_true", help="only the check/explain walkthrough, no live mesh"
    )
    observe.add_arguments(parser, sidecars=True)
    ui.add_arguments(parser)
    parser.set_defaults(func=run)


def _run(argv: list[str]) -> tuple[int, str]:
    from meshwarden.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue() + err.getvalue()  # explain -o json writes nothing to stderr


def run(args: argparse.Namespace) -> int:
    shop = args.examples or shipped_example()
    if not shop.is_dir():
        return fail(f"{shop}: example directory not found")
    if args.offline:
        return run_offline(shop)
    envoy_or_fail()
    console = ui.options(args)
    from meshwarden._telemetry import TelemetryError, otlp_endpoint
    from meshwarden.demo import otlp_receiver

    try:
        configured = otlp_endpoint(args.otlp_endpoint)
    except TelemetryError as exc:
        return fail(str(exc))
    with contextlib.ExitStack() as stack:
        collector = None
        if configured is None:  # no collector: show the spans ourselves
            collector = stack.enter_context(otlp_receiver())
            args.otlp_endpoint = collector.endpoint
        live = lambda tracing: asyncio.run(  # noqa: E731
            run_live(shop, tracing, collector, console)
        )
        return observe.run(args, "meshwarden", live)


async def run_live(
    shop: Path, tracing: Any = None, collector: Any = None, console: Any = None
) -> int:

    from meshwarden._up import LocalMesh
    from meshwarden.demo import DemoIdp, move_to_free_ports, rows, sample_apps, shop_copy

    idp = DemoIdp("https://idp.example.com")
    folder = shop_copy(shop, idp)
    moved = move_to_free_ports(folder)
    table = rows(idp, moved)
    print("== starting the shop: control plane, node agent, 4 Envoy sidecars, sample apps")
    with sample_apps([moved[18080], moved[18081]], [moved[15433]]):
        data = folder.parent / "data"
        mesh = LocalMesh(folder, data, report=_Quiet(), tracing=tracing, ui=console)
        try:
            print("ready", await mesh.start())
            if mesh.plane.console is not None:
                url = mesh.plane.console.url
                print(f"== web console: {url} (the graph fills as the requests below run)")
            ok = await _print_table(table, folder)
            print("\n== live change: policies.yaml now lets frontends POST (no restart)")
            policies = folder / "policies.yaml"
            policies.write_text(
                policies.read_text().replace(
                    "methods: [GET, HEAD]", "methods: [GET, HEAD, POST]", 1
                )
            )
            mesh.plane.tick()
            await mesh.wait_until_applied(30)
            flipped = [table[1]._replace_expected("ALLOW")]
            ok &= await _print_table(flipped, folder)
            await _print_flows(mesh)
            if collector is not None:
                await _print_spans(collector)
            elif tracing is not None:
                where = f"{tracing.host}:{tracing.port}"
                print(
                    f"\n== the decisions are in your traces: spans went to {where} "
                    "(service '<ns>/<name> sidecar', attributes meshwarden.authz.*)"
                )
            if mesh.plane.console is not None:
                url = mesh.plane.console.url
                print(f"\n== the mesh keeps running for the web console at {url}; Ctrl-C stops it")
                await asyncio.Event().wait()
            print("\n== see the mesh in a browser: meshwarden demo --ui 127.0.0.1:8088")
        finally:
            await mesh.stop()
    print("\nall rows as expected" if ok else "\nSOME ROWS DIFFER")
    return EXIT_OK if ok else EXIT_FAILED


async def _print_flows(mesh: Any) -> None:
    """What the sidecars themselves reported: the newest denied records of the flow log."""
    from meshwarden._flows import FlowQuery
    from meshwarden.cli._flows import print_table

    await asyncio.sleep(1.0)  # sidecars flush their access logs every 0.25 s
    url = mesh.health_url.replace("/healthz", "")
    print(f"\n== the flow log: meshwarden flows --server {url} --denied --limit 8")
    denied = mesh.plane.xds.flows.query(FlowQuery(denied=True, limit=8))
    print_table([flow.to_json() for flow in denied])


async def _print_spans(collector: Any) -> None:
    """The sidecars' decision spans and the control plane's own, as a tracing backend gets
    them (here: the demo's built-in collector)."""
    await asyncio.sleep(1.5)  # sidecars export in batches of 200 spans or every second
    spans = list(collector.spans)
    decided = [s for s in spans if "meshwarden.authz.decision" in s.attributes]
    print(
        f"\n== the same decisions in traces: {len(decided)} sidecar spans reached the demo's "
        "built-in OTLP collector (--otlp-endpoint URL: Jaeger, Tempo, ...)"
    )
    for span in decided[-6:]:
        a = span.attributes
        rule = f"#{a['meshwarden.authz.rule']}" if "meshwarden.authz.rule" in a else ""
        source = a.get("meshwarden.source.spiffe_id") or a.get("meshwarden.source.address", "")
        path = "/" + a.get("http.url", "").split("/", 3)[-1]
        print(
            f"  trace {span.trace_id[:12]}…  {a.get('http.method', '')} {path:<20} "
            f"{a['meshwarden.authz.decision']:<5} {a['meshwarden.authz.policy']}{rule}  "
            f"from {source}"
        )
    names = [s.name for s in spans]
    print(
        f"  control plane: {names.count('meshwarden.policies.reload')} policy reload(s), "
        f"{names.count('meshwarden.xds.push')} pushes, {names.count('meshwarden.xds.ack')} "
        f"ACKs, {names.count('meshwarden.xds.nack')} NACKs — each push names the policy "
        "version the sidecar spans carry"
    )


class _Quiet(io.StringIO):
    """Swallows the control plane's progress lines during the demo."""

    def write(self, text: str) -> int:
        return len(text)


async def _print_table(table: list[Any], folder: Path) -> bool:
    print(
        f"\n{'request':46} {'expected':8} {'Envoy':6} {'decided by (explain)':38} "
        f"{'ok':3} Envoy said"
    )
    ok = True
    for row in table:
        verdict, detail = await asyncio.to_thread(row.call)
        cause = explain_cause(folder, row.explain)
        good = verdict == row.expected
        ok &= good
        mark = "yes" if good else "NO"
        print(f"{row.request:46} {row.expected:8} {verdict:6} {cause:38} {mark:3} {detail}")
    return ok


def explain_cause(folder: Path, flags: list[str]) -> str:
    """`ns/name#rule` (or the default cause) that `meshwarden explain` gives for a request."""
    _, out = _run(["explain", str(folder), *flags, "-o", "json"])
    result = json.loads(out)
    rule = f"#{result['rule']}" if result["rule"] is not None else ""
    return f"{result['policy']}{rule}"


def run_offline(shop: Path) -> int:
    print(f"== 1. meshwarden check {shop}")
    code, text = _run(["check", str(shop)])
    print(text.rstrip() or "(no problems)")
    ok = code == 0
    print("\n== 2. would these requests to shop/backend-1:8080 be allowed, and why?")
    print(f"{'request':38} {'expected':9} {'got':9} {'decided by':38} ok")
    for step in STEPS:
        _, out = _run(
            [
                "explain",
                str(shop),
                "--to",
                "shop/backend-1",
                "--port",
                "8080",
                *step.args,
                "-o",
                "json",
            ]
        )
        got = json.loads(out)
        good = (got["decision"], got["policy"]) == (step.expected, step.cause)
        ok &= good
        print(
            f"{step.title:38} {step.expected:9} {got['decision']:9} {got['policy']:38} "
            f"{'yes' if good else 'NO'}"
        )
    ok &= _broken_change(shop)
    print("\nall rows as expected" if ok else "\nSOME ROWS DIFFER")
    return EXIT_OK if ok else EXIT_FAILED


def _broken_change(shop: Path) -> bool:
    """A typo in a copy of the policies: check names the file and line, exit 1."""
    print("\n== 3. a typo in a policy (a copy in a temp dir): check points at it")
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "shop"
        shutil.copytree(shop, copy)
        policies = copy / "policies.yaml"
        policies.write_text(
            policies.read_text().replace("methods: [GET, HEAD]", "method: [GET, HEAD]", 1)
        )
        code, text = _run(["check", str(copy)])
        print(text.replace(tmp + "/", "").rstrip())
        return code == 1 and "unknown field" in text
