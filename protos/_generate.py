"""Regenerate the protobuf/gRPC Python code in this folder: `python -m meshwarden.protos._generate`
(the `make protos` target). Needs grpcio-tools.

The Workload API proto has no package, so its messages are top-level names (`X509SVIDRequest`)
that py-spiffe also registers in protobuf's default descriptor pool; loading both in one process
fails with "duplicate symbol". The generated workload_pb2.py is therefore rewritten to build its
descriptors in a private pool. The wire format and method paths are unchanged.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTOS = ("workload.proto", "node.proto")
_DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
_PRIVATE_POOL = """# meshwarden: a private descriptor pool (see protos/_generate.py).
_POOL = _descriptor_pool.DescriptorPool()
_POOL.AddSerializedFile(google_dot_protobuf_dot_struct__pb2.DESCRIPTOR.serialized_pb)
"""


def _use_private_pool(path: Path) -> None:
    text = path.read_text()
    if _DEFAULT_POOL not in text:
        raise SystemExit(f"{path}: generated code changed shape; update protos/_generate.py")
    head, tail = text.split("DESCRIPTOR = " + _DEFAULT_POOL, 1)
    path.write_text(head + _PRIVATE_POOL + "DESCRIPTOR = _POOL.AddSerializedFile(" + tail)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "meshwarden" / "protos"
        package.mkdir(parents=True)
        for name in PROTOS:
            shutil.copy(HERE / name, package / name)
        command = [sys.executable, "-m", "grpc_tools.protoc", f"-I{tmp}"]
        command += ["--python_out", tmp, "--grpc_python_out", tmp]
        subprocess.run(command + [f"meshwarden/protos/{n}" for n in PROTOS], check=True)
        for generated in package.glob("*_pb2*.py"):
            shutil.copy(generated, HERE / generated.name)
    _use_private_pool(HERE / "workload_pb2.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
