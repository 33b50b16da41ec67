"""`meshwarden matrix PATH...`: who can reach whom, every workload against every other."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from meshwarden.cli._common import (
    EXIT_OK,
    InputError,
    add_output_format,
    add_policy_paths,
    fail,
    load_or_raise,
    print_json,
)
from meshwarden.cli._types import port_number
from meshwarden.engine import CompiledMesh, Workload, decide_path

HELP = """\
Print who can reach whom: one row per source workload, one column per destination workload,
1 where a connection from the row to the column is allowed, 0 where it is denied.

Each cell is the engine's decision, the same as `meshwarden explain --from-workload ROW --to
COLUMN --port N --protocol P`: egress at the source AND ingress at the destination (the
source's identity and first address; GET / on an http or grpc port). With --port, every cell
is decided for that port; a destination that does not declare it (for --protocol) is 0, as
nothing listens there (the cause port:undeclared; explain refuses such a port); without
--port, a cell is 1 when any port of --protocol the destination declares is allowed.

examples:
  meshwarden matrix examples/shop --port 8080
  meshwarden import cluster.yaml -o mesh/ && meshwarden matrix mesh/ --port 80 -o json

-o json prints {"port": N or null, "protocol": "tcp", "workloads": ["ns/name", ...],
"allowed": [["from-ns/name", "to-ns/name"], ...]} (never a workload to itself).
exit status: 0 printed, 2 usage or input error (invalid policies)."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "matrix", help="print who can reach whom (a reachability matrix)", description=HELP
    )
    add_policy_paths(parser)
    parser.add_argument(
        "--port",
        type=port_number,
        metavar="N",
        help="destination port (default: any port the destination declares)",
    )
    parser.add_argument(
        "--protocol",
        choices=("tcp", "udp", "sctp"),
        default="tcp",
        help="transport of the connection (http and grpc ports are tcp)",
    )
    add_output_format(parser)
    parser.set_defaults(func=run)


@dataclass(frozen=True, slots=True)
class Matrix:
    """The workloads (sorted by NS/NAME) and the allowed (from, to) pairs."""

    port: int | None
    protocol: str
    workloads: tuple[str, ...]
    allowed: frozenset[tuple[str, str]]

    def to_json(self) -> dict[str, object]:
        pairs = sorted(self.allowed)
        return {
            "port": self.port,
            "protocol": self.protocol,
            "workloads": list(self.workloads),
            "allowed": [list(p) for p in pairs],
        }

    def text(self) -> str:
        width = len(str(len(self.workloads)))
        names = max((len(w) for w in self.workloads), default=0)
        port = f"port {self.port}" if self.port is not None else "any declared port"
        lines = [
            f"{port}/{self.protocol}: rows = from, columns = to (numbered as the rows); "
            "1 allowed, 0 denied",
            " " * (width + names + 2)
            + " ".join(str(i + 1).rjust(width) for i in range(len(self.workloads))),
        ]
        for i, source in enumerate(self.workloads):
            cells = [
                "-" if source == dest else ("1" if (source, dest) in self.allowed else "0")
                for dest in self.workloads
            ]
            row = " ".join(c.rjust(width) for c in cells)
            lines.append(f"{str(i + 1).rjust(width)} {source.ljust(names)} {row}")
        return "\n".join(lines)


def reachability(mesh: CompiledMesh, port: int | None, protocol: str) -> Matrix:
    """Decide every (source, destination) pair of distinct workloads."""
    workloads = sorted(mesh.registry.workloads.values(), key=lambda w: w.ref)
    allowed = {
        (source.ref, dest.ref)
        for source in workloads
        for dest in workloads
        if source is not dest and _reaches(mesh, source, dest, port, protocol)
    }
    return Matrix(port, protocol, tuple(w.ref for w in workloads), frozenset(allowed))


def _reaches(
    mesh: CompiledMesh, source: Workload, dest: Workload, port: int | None, protocol: str
) -> bool:
    """Egress at the source and ingress at the destination (`decide_path`, as explain)."""
    ports = [port] if port is not None else _declared(dest, protocol)
    return any(decide_path(mesh, source.ref, dest.ref, p, protocol).allowed for p in ports)


def _declared(workload: Workload, protocol: str) -> list[int]:
    return sorted({p.port for p in workload.spec.ports if p.transport == protocol})


def run(args: argparse.Namespace) -> int:
    try:
        result = load_or_raise(args.paths)
        if result.compiled is None:
            raise InputError(
                f"the policies have {len(result.errors)} error(s); "
                "run `meshwarden check` for details",
                diagnostics=[d.to_json() for d in result.errors],
            )
    except InputError as exc:
        return fail(str(exc))
    matrix = reachability(result.compiled, args.port, args.protocol)
    if args.output == "json":
        print_json(matrix.to_json())
    else:
        print(matrix.text())
    return EXIT_OK
