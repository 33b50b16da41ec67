"""The inventory: pods and controller templates become Workloads (names, labels, service
accounts, addresses, ports with Istio's protocol conventions), Services become Services; the
output is commented with where each document came from and passes `meshwarden check`."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from meshwarden.cli import main

SEED = Path(__file__).resolve().parents[3] / "examples" / "kubernetes" / "seed.yaml"


def _import(tmp_path: Path, text: str, name: str = "in.yaml") -> Path:
    (tmp_path / name).write_text(textwrap.dedent(text))
    out = tmp_path / "out"
    assert main(["import", str(tmp_path / name), "-o", str(out)]) == 0
    return out


def _documents(path: Path) -> dict[tuple[str, str], dict]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def test_controllers_without_their_pods_stand_for_replicas_named_by_index(tmp_path: Path) -> None:
    out = _import(
        tmp_path,
        """\
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: web, namespace: shop}
        spec:
          replicas: 2
          template:
            metadata: {labels: {app: web}}
            spec:
              serviceAccountName: web
              containers: [{name: c, ports: [{containerPort: 8080, name: http-api}]}]
        ---
        apiVersion: apps/v1
        kind: StatefulSet
        metadata: {name: db, namespace: shop}
        spec:
          template:
            metadata: {labels: {app: db}}
            spec: {containers: [{name: c, ports: [{containerPort: 5432}]}]}
        """,
    )
    docs = _documents(out / "shop.yaml")
    assert sorted(name for kind, name in docs if kind == "Workload") == ["db-0", "web-0", "web-1"]
    web = docs[("Workload", "web-1")]
    assert web["metadata"]["labels"] == {"app": "web"}
    assert web["spec"]["serviceAccount"] == "web"
    assert web["spec"]["ports"] == [{"port": 8080, "name": "http-api", "protocol": "http"}]
    assert docs[("Workload", "db-0")]["spec"] == {
        "serviceAccount": "default",
        "ports": [{"port": 5432, "protocol": "tcp"}],
    }


def test_a_controller_whose_pods_are_listed_adds_no_workloads_of_its_own(tmp_path: Path) -> None:
    """`kubectl get deploy,rs,pods`: the Deployment owns the ReplicaSet, which owns the pod."""
    listing = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "web"},
                "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "c"}]}}},
            },
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "metadata": {
                    "name": "web-5d8",
                    "ownerReferences": [{"kind": "Deployment", "name": "web"}],
                },
                "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "c"}]}}},
            },
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": "web-5d8-abcde",
                    "labels": {"app": "web"},
                    "ownerReferences": [{"kind": "ReplicaSet", "name": "web-5d8"}],
                },
                "spec": {"containers": [{"name": "c"}]},
                "status": {
                    "phase": "Running",
                    "podIP": "10.1.0.7",
                    "podIPs": [{"ip": "10.1.0.7"}, {"ip": "fd00::7"}],
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "job-1"},
                "spec": {"containers": [{"name": "c"}]},
                "status": {"phase": "Succeeded", "podIP": "10.1.0.7"},
            },
        ],
    }
    out = _import(tmp_path, json.dumps(listing), "cluster.json")
    docs = _documents(out / "default.yaml")
    assert list(docs) == [("Workload", "web-5d8-abcde")]
    assert docs[("Workload", "web-5d8-abcde")]["spec"]["addresses"] == ["10.1.0.7", "fd00::7"]


@pytest.mark.parametrize(
    ("port", "service_port", "protocol"),
    [
        ({"containerPort": 80}, {}, "tcp"),
        ({"containerPort": 80, "name": "http"}, {}, "http"),
        ({"containerPort": 80, "name": "http2-web"}, {}, "http"),
        ({"containerPort": 80, "name": "grpc-web"}, {}, "grpc"),
        ({"containerPort": 80, "name": "https"}, {}, "tcp"),
        ({"containerPort": 80, "name": "tcp-http"}, {}, "tcp"),
        ({"containerPort": 80}, {"name": "http-web"}, "http"),
        ({"containerPort": 80, "name": "web"}, {"name": "tcp", "appProtocol": "grpc"}, "grpc"),
        ({"containerPort": 80, "name": "http"}, {"appProtocol": "mysql"}, "tcp"),
        ({"containerPort": 80}, {"appProtocol": "kubernetes.io/h2c"}, "http"),
    ],
)
def test_port_protocols_follow_istio_conventions(
    tmp_path: Path, port: dict, service_port: dict, protocol: str
) -> None:
    """appProtocol of a Service port targeting the container port first, then the port name's
    prefix (the Service port's, else the container port's), tcp otherwise."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "labels": {"app": "p"}},
        "spec": {"containers": [{"name": "c", "ports": [port]}]},
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "s"},
        "spec": {
            "selector": {"app": "p"},
            "ports": [{"port": 8080, "targetPort": 80, **service_port}],
        },
    }
    out = _import(tmp_path, yaml.safe_dump_all([pod, service]))
    docs = _documents(out / "default.yaml")
    assert docs[("Workload", "p")]["spec"]["ports"][0]["protocol"] == protocol
    assert docs[("Service", "s")]["spec"]["selector"] == {"matchLabels": {"app": "p"}}


def test_every_document_names_the_object_it_came_from(tmp_path: Path) -> None:
    out = _import(tmp_path, SEED.read_text())
    text = (out / "shop.yaml").read_text()
    source = tmp_path / "in.yaml"
    assert f"# from: {source}:3 Pod shop/frontend-1\napiVersion: meshwarden.io/v1alpha1\n" in text
    assert (
        f"# from: {source}:32 NetworkPolicy shop/backend-access-policy\n"
        "apiVersion: meshwarden.io/v1alpha1\nkind: AuthorizationPolicy\n"
    ) in text
    assert main(["check", str(out)]) == 0


def test_the_seed_network_policy_lets_only_frontend_reach_backend_8080(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The seed: "only pods with the app: frontend label can access port 8080 of the backend
    service; all other access requests are denied by default"."""
    out = _import(tmp_path, SEED.read_text())

    def explain(source: str, port: int) -> int:
        return main(
            [
                "explain",
                str(out),
                "--to",
                "shop/backend-1",
                "--port",
                str(port),
                "--from-workload",
                source,
            ]
        )

    assert explain("shop/frontend-1", 8080) == 0
    assert explain("shop/reports-1", 8080) == 1
    assert explain("shop/frontend-1", 9090) == 1
    capsys.readouterr()
    assert main(["matrix", str(out), "--port", "8080"]) == 0
    # reports-1 declares no port: nothing listens on its 8080, so no one reaches it there
    assert capsys.readouterr().out.splitlines()[1:] == [
        "                  1 2 3",
        "1 shop/backend-1  - 1 0",
        "2 shop/frontend-1 1 - 0",
        "3 shop/reports-1  0 1 -",
    ]
