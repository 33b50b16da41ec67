"""`meshwarden demo`: a guided walkthrough of `check` and `explain` on examples/shop.

Each step runs the real command and compares what it decided with what the walkthrough expects;
the demo exits 0 only if every row matches. (The live mesh with Envoy replaces this in the xDS
milestone.)"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from meshwarden.cli._common import EXIT_FAILED, EXIT_OK, fail

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "shop"


@dataclass(frozen=True)
class Step:
    title: str
    args: tuple[str, ...]
    expected: str
    cause: str


STEPS = (
    Step("frontend reads the catalogue", ("--from-workload", "shop/frontend-1",
         "--method", "GET", "--path", "/api/catalogue"), "ALLOW", "shop/backend-access"),
    Step("frontend tries to POST an order", ("--from-workload", "shop/frontend-1",
         "--method", "POST", "--path", "/api/orders"), "DENY", "default:deny"),
    Step("frontend sneaks to /debug via ..", ("--from-workload", "shop/frontend-1",
         "--path", "/api/../debug/vars"), "DENY", "meshwarden-system/no-debug-anywhere"),
    Step("ops admin with a corp token", ("--from-workload", "ops/ops-1", "--path", "/admin/flush",
         "--jwt-claims", '{"iss": "https://idp.example.com", "aud": "backend", '
         '"groups": ["admin"]}'), "ALLOW", "shop/backend-access"),
    Step("ops without the admin group", ("--from-workload", "ops/ops-1", "--path", "/admin/flush",
         "--jwt-claims", '{"iss": "https://idp.example.com", "aud": "backend", '
         '"groups": ["dev"]}'), "DENY", "default:deny"),
    Step("token from an unknown issuer", ("--from-workload", "ops/ops-1", "--path", "/admin/x",
         "--jwt-claims", '{"iss": "https://evil.example.com"}'), "DENY", "jwt:invalid"),
    Step("stranger (no identity) from its IP", ("--source-ip", "127.0.0.9",
         "--path", "/api/catalogue"), "ALLOW", "shop/backend-access"),
    Step("stranger from another IP", ("--source-ip", "127.0.0.10", "--path", "/api/catalogue"),
         "DENY", "default:deny"),
    Step("frontend POSTs from the stranger's IP", ("--from-workload", "shop/frontend-1",
         "--source-ip", "127.0.0.9", "--method", "POST", "--path", "/api/catalogue"),
         "DENY", "default:deny"),
)  # fmt: skip


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo", help="guided walkthrough of check and explain on examples/shop",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--examples", default=str(EXAMPLES), help="the shop example directory")
    parser.set_defaults(func=run)


def _run(argv: list[str]) -> tuple[int, str]:
    from meshwarden.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue() + err.getvalue()


def run(args: argparse.Namespace) -> int:
    shop = Path(args.examples)
    if not shop.is_dir():
        return fail(f"{shop}: example directory not found")
    print(f"== 1. meshwarden check {shop}")
    code, text = _run(["check", str(shop)])
    print(text.rstrip() or "(no problems)")
    ok = code == 0
    print("\n== 2. would these requests to shop/backend-1:8080 be allowed, and why?")
    print(f"{'request':38} {'expected':9} {'got':9} {'decided by':38} ok")
    for step in STEPS:
        _, out = _run(["explain", str(shop), "--to", "shop/backend-1", "--port", "8080",
                       *step.args, "-o", "json"])  # fmt: skip
        got = json.loads(out)
        good = (got["decision"], got["policy"]) == (step.expected, step.cause)
        ok &= good
        print(f"{step.title:38} {step.expected:9} {got['decision']:9} {got['policy']:38} "
              f"{'yes' if good else 'NO'}")  # fmt: skip
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
