"""The model registry: models kept by ``name:tag`` under ``LLMOS_HOME`` (default ~/.cache/llmos).

The operations (import, pull, ls, show, rm, verify, quantize, export) live in
`registry.operations`; the storage they share with `llmos.load` (names, manifests, atomic
builds, resolving a name to a folder) lives below the runtime, in `llmos.store`.
"""

from llmos.paths import home
from llmos.registry.operations import (VerifyReport, chat_template, export_onnx, import_model, list_models, load,
                                       pull, pull_target, quantize, remove, show, tokenize, verify)
from llmos.store.files import INDEX_FILE
from llmos.store.manifest import MANIFEST, Entry
from llmos.store.names import DEFAULT_TAG, parse_ref
from llmos.store.resolve import resolve

__all__ = ["home", "resolve", "parse_ref", "list_models", "show", "chat_template", "tokenize", "load", "import_model",
           "pull", "pull_target", "remove", "verify", "quantize", "export_onnx", "Entry", "VerifyReport", "MANIFEST",
           "INDEX_FILE", "DEFAULT_TAG"]
