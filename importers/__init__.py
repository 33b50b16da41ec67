"""meshwarden.importers: Kubernetes (and Istio) objects translated into meshwarden documents.

Pure, like the engine it builds on: files in, documents out, no network and no cluster access.
`import_paths(paths, outdir, options)` reads YAML/JSON files and directories (one object per
document, or `kind: List` as `kubectl get -o yaml|json` prints), keeping the FILE:LINE:COL of
every field; builds the inventory (Namespaces, Pods, controller templates, Services, see
`_inventory`); calls the translator registered for each policy object's (API group, kind);
gives pods of one service account distinct identities where a policy tells them apart (see
`_identities`); and returns the output files, one per namespace plus mesh.yaml, already checked
by the engine. Nothing is dropped: an object or field that cannot be translated is an `error:`
at its position, and then no file is returned.

Adding a translator (e.g. Istio's AuthorizationPolicy in `importers/_istio.py`):
1. write `def translate_x(obj: KubeObject, ctx: ImportContext) -> None`; read fields through
   `Fields(obj, ctx.problems)` (typed reads, `known(path, names)` refuses unknown fields at
   their position), check `obj.version` yourself;
2. emit documents with `ctx.emit(obj, {"kind": ..., "metadata": {...}, "spec": {...}})`
   (apiVersion is added; the document lands in its namespace's file after a `# from:` comment);
   record pods your peers name with `ctx.select(pods, where, what)` and use `ctx.identity(pod)`
   for their SPIFFE IDs; set Mesh fields in `ctx.mesh` (e.g. `rootNamespace`);
   report with `ctx.error(location, message)` and `ctx.note(message)` (stderr);
3. add `(group, kind): translate_x` to `TRANSLATORS` in `_run.py`. Translators run twice per
   import (the first run finds where identities must be split), so they must be pure.
"""

from meshwarden.importers._context import Emitted, ImportContext, ImportOptions, Translator
from meshwarden.importers._fields import Fields
from meshwarden.importers._inventory import Inventory, Pod
from meshwarden.importers._local_runtime import LocalRuntime
from meshwarden.importers._objects import KubeObject, read_objects
from meshwarden.importers._output import OutputFile, write_files
from meshwarden.importers._run import TRANSLATORS, ImportResult, import_paths

__all__ = [
    "TRANSLATORS",
    "Emitted",
    "Fields",
    "ImportContext",
    "ImportOptions",
    "ImportResult",
    "Inventory",
    "KubeObject",
    "LocalRuntime",
    "OutputFile",
    "Pod",
    "Translator",
    "import_paths",
    "read_objects",
    "write_files",
]
