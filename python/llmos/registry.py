"""The model registry: models kept by ``name:tag`` under ``LLMOS_HOME`` (default ~/.cache/llmos).

Layout::

    $LLMOS_HOME/models/<name>/<tag>/        one entry: the model's files + llmos-manifest.json
    $LLMOS_HOME/downloads/<org>--<repo>/    files of an unfinished pull, kept so that the next
                                            pull of the same repository resumes
    $LLMOS_HOME/tmp/                        entries being built

An entry appears only by one rename of a finished folder (files and manifest written and
fsynced first), so a crash, Ctrl-C or a full disk leaves the old entry or the new one, never
a mix. Whatever a dead process left in tmp/ is removed the next time the registry is used.

Every function that takes a model also takes a folder path (see `resolve`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import difflib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from .config import ConfigReader, read_json
from .errors import (
    DiskFullError,
    InvalidInputError,
    LlmosError,
    ModelFileError,
    ModelFormatError,
    ModelNotFoundError,
    NotAvailableError,
)

MANIFEST = "llmos-manifest.json"
MANIFEST_FORMAT = "llmos-manifest"
MANIFEST_VERSION = 1
DEFAULT_TAG = "latest"
INDEX_FILE = "model.safetensors.index.json"

# The files that make up a model besides its weights: what the runtime, the tokenizer and the
# chat template read, plus the licence and card that must travel with the weights.
SIDE_FILES = (
    "config.json", "generation_config.json", INDEX_FILE,
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "tokenizer.model", "vocab.json", "merges.txt",
    "chat_template.jinja", "chat_template.json",
    "README.md", "USE_POLICY.md",
)
SIDE_PATTERNS = ("LICENSE*", "LICENCE*", "NOTICE*", "additional_chat_templates/*.jinja")

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,79}")
_TAG_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
_CHUNK = 1 << 20
_HOST = socket.gethostname().replace("~", "-")
_FOREIGN_TMP_AGE_S = 7 * 24 * 3600  # leftovers of another machine sharing LLMOS_HOME
_QUANT_GROUPS = (32, 64, 128)

_SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3", "F8_E5M2": "float8_e5m2",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
}


# ---------------------------------------------------------------------------------------------
# Entries and names
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """A model in the registry (or a plain folder described the same way, with name None)."""

    name: str | None
    tag: str | None
    path: str
    manifest: dict = field(repr=False)

    @property
    def ref(self) -> str:
        """``name:tag``, or the folder path for a model outside the registry."""
        return f"{self.name}:{self.tag}" if self.name is not None else self.path

    @property
    def digest(self) -> str | None:
        return self.manifest.get("digest")

    @property
    def size(self) -> int:
        return int(self.manifest.get("size") or 0)

    @property
    def family(self) -> str | None:
        return self.manifest.get("family")

    @property
    def format(self) -> str | None:
        return self.manifest.get("model_format")

    @property
    def dtype(self) -> str | None:
        return self.manifest.get("dtype")

    @property
    def quantization(self) -> dict | None:
        return self.manifest.get("quantization")

    @property
    def created(self) -> str | None:
        return self.manifest.get("created")

    @property
    def source(self) -> dict:
        return self.manifest.get("source") or {}

    @property
    def lineage(self) -> list[dict]:
        return list(self.manifest.get("lineage") or [])

    @property
    def chat_template(self) -> str | None:
        return self.manifest.get("chat_template")

    @property
    def eos_token_ids(self) -> list[int]:
        return list(self.manifest.get("eos_token_ids") or [])

    @property
    def files(self) -> dict[str, dict]:
        return dict(self.manifest.get("files") or {})


@dataclass
class VerifyReport:
    """What `verify` found: ``ok`` when every file is present, unchanged and well-formed."""

    ref: str
    path: str
    checked: int = 0
    problems: list[str] = field(default_factory=list)
    has_manifest: bool = True

    @property
    def ok(self) -> bool:
        return not self.problems


def home() -> Path:
    """The registry folder: $LLMOS_HOME, or ~/.cache/llmos."""
    value = os.environ.get("LLMOS_HOME")
    return Path(os.path.expanduser(value)) if value else Path.home() / ".cache" / "llmos"


def parse_ref(ref: str) -> tuple[str, str]:
    """``name[:tag]`` -> (name, tag). Names are case-insensitive and stored lowercase."""
    if not isinstance(ref, str) or not ref.strip():
        raise InvalidInputError(f"model name: expected 'name' or 'name:tag', got {ref!r}", field="name")
    text = ref.strip().lower()
    name, sep, tag = text.partition(":")
    tag = tag if sep else DEFAULT_TAG
    if not _NAME_RE.fullmatch(name):
        raise InvalidInputError(
            f"model name {ref!r}: a name is 1-80 characters of a-z, 0-9, '.', '_' and '-', starting with a "
            "letter or digit (an optional ':tag' follows)", field="name")
    if not _TAG_RE.fullmatch(tag):
        raise InvalidInputError(
            f"model name {ref!r}: a tag is 1-128 characters of a-z, 0-9, '.', '_' and '-', starting with a "
            "letter or digit", field="name")
    return name, tag


def _slug(text: str, pattern: re.Pattern = _NAME_RE) -> str:
    """A valid name or tag made from arbitrary text (a folder or repository name)."""
    s = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")
    s = s[:80].rstrip("-._") or "model"
    return s if pattern.fullmatch(s) else "model"


def _entry_dir(name: str, tag: str) -> Path:
    return home() / "models" / name / tag


def _looks_like_path(text: str) -> bool:
    return (os.sep in text or (os.altsep is not None and os.altsep in text) or text.startswith(("~", "."))
            or os.path.isabs(text) or text.lower().endswith(".onnx"))


def resolve(name_or_path: str | os.PathLike) -> str:
    """The folder of a model given by registry name (``name[:tag]``) or by path.

    A path (an os.PathLike, or text containing a separator or starting with '.' or '~') must
    exist; a FILE.onnx resolves to its folder. A bare word is a registry name first and a
    folder in the working directory second. An unknown name raises ModelNotFoundError with
    the closest names.
    """
    if isinstance(name_or_path, os.PathLike) or (isinstance(name_or_path, str) and _looks_like_path(name_or_path)):
        path = Path(os.path.expanduser(os.fspath(name_or_path)))
        if path.is_dir():
            return str(path)
        if path.is_file() and path.suffix.lower() == ".onnx":
            return str(path.parent)
        text = os.fspath(name_or_path)
        hint = ""
        if isinstance(name_or_path, str) and re.fullmatch(r"[\w.-]+/[\w.-]+(@[\w./-]+)?", text):
            hint = f" (to download it from the Hugging Face Hub: llmos pull {text})"
        raise ModelFileError(f"{text}: no such model folder{hint}", file=text)
    if not isinstance(name_or_path, str):
        raise InvalidInputError(f"model: expected a name or a folder path, got {type(name_or_path).__name__}",
                                field="model")
    try:
        name, tag = parse_ref(name_or_path)
    except InvalidInputError:
        if os.path.isdir(name_or_path):
            return name_or_path
        raise
    folder = _entry_dir(name, tag)
    if (folder / MANIFEST).is_file():
        return str(folder)
    if os.path.isdir(name_or_path):
        return name_or_path
    raise _not_found(name, tag)


def _not_found(name: str, tag: str) -> ModelNotFoundError:
    refs = [e.ref for e in _iter_entries()]
    wanted = f"{name}:{tag}"

    def closeness(ref: str) -> float:
        ref_name = ref.split(":", 1)[0]
        if ref_name == name:  # same model, other tag: always worth naming
            return 2.0
        return max(difflib.SequenceMatcher(None, wanted, ref).ratio(),
                   difflib.SequenceMatcher(None, name, ref_name).ratio())

    scored = sorted(((closeness(r), r) for r in refs), key=lambda s: (-s[0], s[1]))
    suggestions = [r for score, r in scored if score >= 0.6][:5]
    if suggestions:
        hint = f"; did you mean {', '.join(suggestions)}?"
    elif refs:
        hint = "; `llmos ls` lists the models"
    else:
        hint = "; the registry is empty: add a model with `llmos pull ORG/NAME` or `llmos import DIR`"
    return ModelNotFoundError(f"no model named '{wanted}' in {home()}{hint}", suggestions=suggestions,
                              field="name")


# ---------------------------------------------------------------------------------------------
# Reading the registry
# ---------------------------------------------------------------------------------------------


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    data = read_json(str(path))
    if data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("files"), dict):
        raise ModelFormatError(f"{path}: not an llmos manifest (expected format '{MANIFEST_FORMAT}' and a "
                               "'files' object)", file=str(path))
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ModelFormatError(f"{path}: field 'version': expected an integer, got {version!r}", file=str(path),
                               field="version")
    if version > MANIFEST_VERSION:
        raise ModelFormatError(f"{path}: manifest version {data.get('version')} is newer than this llmos "
                               f"understands ({MANIFEST_VERSION}); upgrade llmos", file=str(path), field="version")
    return data


def _iter_entries() -> Iterator[Entry]:
    models = home() / "models"
    if not models.is_dir():
        return
    for name_dir in sorted(models.iterdir()):
        if not name_dir.is_dir() or not _NAME_RE.fullmatch(name_dir.name):
            continue
        for tag_dir in sorted(name_dir.iterdir()):
            if not _TAG_RE.fullmatch(tag_dir.name) or not (tag_dir / MANIFEST).is_file():
                continue
            try:
                manifest = _read_manifest(tag_dir)
            except LlmosError as e:
                manifest = {"problem": str(e), "files": {}}
            yield Entry(name_dir.name, tag_dir.name, str(tag_dir), manifest)


def list_models() -> list[Entry]:
    """Every entry, sorted by name then tag. An entry whose manifest is unreadable is listed
    with ``manifest['problem']`` set (``verify`` reports it too)."""
    _clean_stale()
    return list(_iter_entries())


def _entry_for(name_or_path) -> Entry:
    folder = Path(resolve(name_or_path))
    models = (home() / "models").resolve()
    real = folder.resolve()
    if real.parent.parent == models and (folder / MANIFEST).is_file():
        return Entry(real.parent.name, real.name, str(folder), _read_manifest(folder))
    if (folder / MANIFEST).is_file():  # an entry folder copied elsewhere still carries its manifest
        return Entry(None, None, str(folder), _read_manifest(folder))
    return Entry(None, None, str(folder), _describe(folder, _model_files(folder), hashes=None))


def show(name_or_path) -> Entry:
    """The entry (manifest: source, family, dtype/quantization, files and checksums, chat
    template, EOS tokens, lineage). A plain folder is described without checksums."""
    return _entry_for(name_or_path)


def chat_template(name_or_path) -> str:
    """The chat template recorded for the model (ChatTemplateError when it has none)."""
    from .errors import ChatTemplateError

    entry = _entry_for(name_or_path)
    if not entry.chat_template:
        raise ChatTemplateError(f"{entry.ref}: the model has no chat template (tokenizer_config.json "
                                "'chat_template' or chat_template.jinja)", file=entry.path, field="chat_template")
    return entry.chat_template


def tokenize(name_or_path, text: str) -> list[tuple[int, str, str]]:
    """How the model's tokenizer splits `text`: (id, vocabulary token, decoded text) per token."""
    from .tokenizer import Tokenizer

    tok = Tokenizer.from_dir(resolve(name_or_path))
    ids = tok.encode(text, add_special_tokens=False)
    return [(i, tok.id_to_token(i) or "", tok.decode([i], skip_special_tokens=False)) for i in ids]


def load(name_or_path, **options):
    """llmos.load for a registry name or a folder."""
    from .model import load as _load

    return _load(resolve(name_or_path), **options)


# ---------------------------------------------------------------------------------------------
# Which files make a model, and what they say
# ---------------------------------------------------------------------------------------------


def is_side_file(rel: str) -> bool:
    """True for the non-weight files of a model (config, tokenizer, chat templates, licence)."""
    import fnmatch

    if "/" not in rel and rel in SIDE_FILES:
        return True
    return any(fnmatch.fnmatchcase(rel, p) and rel.count("/") == p.count("/") for p in SIDE_PATTERNS)


def weight_files(names: set[str] | list[str], index: dict | None, *, where: str = "") -> list[str]:
    """The .safetensors files to take: the shards an index names, else model.safetensors, else
    every top-level .safetensors (repositories that also ship e.g. consolidated.safetensors
    duplicate their weights; the index says which set the config belongs to)."""
    names = set(names)
    if index is not None:
        wm = index.get("weight_map")
        if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
            raise ModelFormatError(f"{where}{INDEX_FILE}: field 'weight_map': expected an object of tensor name -> "
                                   "file name", file=where + INDEX_FILE, field="weight_map")
        shards = sorted(set(wm.values()))
        bad = [s for s in shards if "/" in s or "\\" in s or not s.endswith(".safetensors")]
        if bad:
            raise ModelFormatError(f"{where}{INDEX_FILE}: '{bad[0]}' is not a .safetensors file in the model folder",
                                   file=where + INDEX_FILE, field="weight_map")
        missing = [s for s in shards if s not in names]
        if missing:
            raise ModelFileError(f"{where}{INDEX_FILE} lists {missing[0]}, which is missing"
                                 + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                                 file=where + missing[0])
        return shards
    if "model.safetensors" in names:
        return ["model.safetensors"]
    return sorted(n for n in names if "/" not in n and n.endswith(".safetensors"))


def _onnx_external_files(onnx_path: Path) -> list[str]:
    """Files an ONNX model keeps its tensors in (models over 2 GB must use external data)."""
    try:
        import onnx
    except ImportError:
        # Without the onnx package, fall back to the names exporters use (model.onnx.data,
        # model.onnx_data).
        prefix = onnx_path.name
        return sorted(p.name for p in onnx_path.parent.iterdir()
                      if p.is_file() and p.name != prefix and p.name.startswith((prefix + ".", prefix + "_")))
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and others from protobuf
        raise ModelFormatError(f"{onnx_path}: not a readable ONNX model ({e})", file=str(onnx_path)) from None
    found: set[str] = set()

    def visit_tensor(t) -> None:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            for kv in t.external_data:
                if kv.key == "location":
                    found.add(kv.value)

    def visit_graph(g) -> None:
        for t in g.initializer:
            visit_tensor(t)
        for node in g.node:
            for a in node.attribute:
                if a.HasField("t"):
                    visit_tensor(a.t)
                for t in a.tensors:
                    visit_tensor(t)
                if a.HasField("g"):
                    visit_graph(a.g)
                for sub in a.graphs:
                    visit_graph(sub)

    visit_graph(model.graph)
    for loc in sorted(found):
        if os.path.basename(loc) != loc or loc in ("", ".", ".."):
            raise ModelFormatError(f"{onnx_path}: external data location {loc!r} is outside the model folder",
                                   file=str(onnx_path), field="external_data")
        if not (onnx_path.parent / loc).is_file():
            raise ModelFileError(f"{onnx_path}: external data file {loc} is missing", file=str(onnx_path.parent / loc))
    return sorted(found)


def _model_files(src: Path) -> list[str]:
    """The files (relative paths) to copy from a model folder, or from beside a FILE.onnx."""
    if src.is_file():
        if src.suffix.lower() != ".onnx":
            raise InvalidInputError(f"{src}: import takes a model folder or a .onnx file", field="path")
        folder, onnx_files = src.parent, [src.name]
    else:
        folder = src
        onnx_files = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".onnx")
    names = {p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}
    sub = folder / "additional_chat_templates"
    if sub.is_dir():
        names |= {f"additional_chat_templates/{p.name}" for p in sub.iterdir() if p.is_file()}
    side = sorted(n for n in names if is_side_file(n))
    has_safetensors = any(n.endswith(".safetensors") for n in names if "/" not in n)
    if src.is_dir() and has_safetensors:
        index = read_json(str(folder / INDEX_FILE)) if INDEX_FILE in names else None
        return sorted(set(side) | set(weight_files(names, index, where=f"{folder}{os.sep}")))
    if onnx_files:
        extra = {n for f in onnx_files for n in _onnx_external_files(folder / f)}
        # An ONNX export describes itself in JSON files whose names vary by exporter
        # (genai_config.json, ...): take them all.
        jsons = {n for n in names if "/" not in n and n.endswith(".json")}
        return sorted(set(side) | set(onnx_files) | extra | jsons)
    found = sorted(names)
    hint = ""
    if any(n.endswith((".bin", ".pt", ".pth", ".ckpt")) for n in found):
        hint = " (PyTorch pickle weights are not imported, for safety: save the model with safetensors)"
    raise ModelFileError(f"{folder}: no .safetensors or .onnx model files{hint}; found: {', '.join(found) or 'nothing'}",
                         file=str(folder))


def _safetensors_summary(folder: Path, files: list[str]) -> dict:
    from . import _core

    elements: dict[str, int] = {}
    for rel in files:
        if not rel.endswith(".safetensors"):
            continue
        tensors, _ = _core.safetensors_read_header(str(folder / rel))
        for t in tensors:
            n = 1
            for d in t["shape"]:
                n *= int(d)
            dtype = _SAFETENSORS_DTYPES.get(t["dtype"], t["dtype"].lower())
            elements[dtype] = elements.get(dtype, 0) + n
    if not elements:
        return {}
    floats = {k: v for k, v in elements.items() if k.startswith(("float", "bfloat"))}
    dominant = max(floats or elements, key=lambda k: (floats or elements)[k])
    return {"dtype": dominant, "tensor_elements": elements, "parameters": sum(elements.values())}


def _quantization_of(config: dict) -> dict | None:
    q = config.get("quantization_config")
    if not isinstance(q, dict):
        return None
    out = {"method": q.get("quant_method") or q.get("method") or "unknown"}
    for key in ("bits", "group_size", "sym", "zero_point", "version"):
        if q.get(key) is not None:
            out[key] = q[key]
    return out


def _relative_origin(origin: str | None, folder: Path) -> str | None:
    if not origin:
        return origin
    prefix = str(folder) + os.sep
    return origin[len(prefix):] if origin.startswith(prefix) else origin


def _describe(folder: Path, files: list[str], hashes: dict[str, str] | None) -> dict:
    """The manifest fields read from the model's own files (no source or lineage)."""
    is_onnx = any(f.lower().endswith(".onnx") for f in files) and not any(f.endswith(".safetensors") for f in files)
    config_path = folder / "config.json"
    config = read_json(str(config_path), required=not is_onnx) or {}
    info: dict[str, Any] = {"model_format": "onnx" if is_onnx else "safetensors"}
    family = config.get("model_type")
    if not is_onnx:
        from .families import family_for

        family_for(ConfigReader(config, str(config_path)))  # unsupported families fail here, not at load
    info["family"] = family
    info["architectures"] = config.get("architectures")
    summary = _safetensors_summary(folder, files) if not is_onnx else {}
    info["dtype"] = summary.get("dtype") or _config_dtype(config)
    info["quantization"] = _quantization_of(config)
    if summary:
        info["parameters"] = summary["parameters"]
        info["tensor_elements"] = summary["tensor_elements"]
    info.update(_text_info(folder, required=not is_onnx or (folder / "tokenizer.json").is_file()))
    entries = {}
    for rel in files:
        st = (folder / rel).stat()
        entries[rel] = {"size": st.st_size}
        if hashes is not None:
            entries[rel]["sha256"] = hashes[rel]
    info["files"] = entries
    info["size"] = sum(e["size"] for e in entries.values())
    if hashes is not None:
        info["digest"] = _digest(hashes)
    return info


def _config_dtype(config: dict) -> str | None:
    name = config.get("torch_dtype") or config.get("dtype")
    return str(name).replace("torch.", "") if name else None


def _text_info(folder: Path, *, required: bool) -> dict:
    """Chat template and special tokens, read by the same Tokenizer that generation uses."""
    if not required:
        return {"chat_template": None, "chat_templates": {}, "chat_template_origin": None,
                "bos_token": None, "eos_token": None, "eos_token_ids": [], "eos_tokens": []}
    from .tokenizer import Tokenizer

    tok = Tokenizer.from_dir(folder)
    templates = dict(tok.chat_templates)
    default = tok.chat_template
    return {
        "chat_template": default,
        "chat_templates": {k: v for k, v in templates.items() if v != default or k != "default"},
        "chat_template_origin": _relative_origin(tok.chat_template_origin, folder),
        "bos_token": tok.bos_token,
        "eos_token": tok.eos_token,
        "eos_token_ids": list(tok.eos_token_ids),
        "eos_tokens": [tok.id_to_token(i) for i in tok.eos_token_ids],
    }


def _digest(hashes: dict[str, str]) -> str:
    """One hash for the entry's content: sha256 of its `sha256sum`-style listing."""
    listing = "".join(f"{hashes[k]}  {k}\n" for k in sorted(hashes))
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _version() -> str:
    from . import __version__

    return __version__


# ---------------------------------------------------------------------------------------------
# Writing: temp folders, atomic publish, stale cleanup
# ---------------------------------------------------------------------------------------------


def _is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:  # Windows cannot open directories; its renames are durable enough
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _copy_hashed(src: Path, dst: Path) -> str:
    """Copies src to a new file dst, fsynced; returns the sha256 of what was copied."""
    h = hashlib.sha256()
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fi, open(dst, "xb") as fo:
        while True:
            chunk = fi.read(_CHUNK)
            if not chunk:
                break
            h.update(chunk)
            fo.write(chunk)
        fo.flush()
        os.fsync(fo.fileno())
    return h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


def _write_json_atomic(path: Path, obj: Any) -> None:
    """Writes JSON next to `path` under a temporary name, fsyncs, then renames over `path`."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    data = (json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n").encode("utf-8")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """Serializes publish/remove/cleanup between processes (renames over the same name race)."""
    root = home()
    root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: renames onto an existing folder fail there anyway
        yield
        return
    with open(root / ".lock", "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _tmp_dir(op: str) -> Path:
    tmp = home() / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / f"{op}~{_HOST}~{os.getpid()}~{secrets.token_hex(4)}"
    path.mkdir()
    return path


def _clean_stale() -> None:
    """Removes what dead processes left in tmp/; an entry that a crash had moved aside while
    replacing it (and not yet replaced) is put back."""
    tmp = home() / "tmp"
    if not tmp.is_dir():
        return
    with _lock():
        for d in list(tmp.iterdir()):
            parts = d.name.split("~")
            if len(parts) == 4 and parts[2].isdigit():
                op, host, pid = parts[0], parts[1], int(parts[2])
                if host == _HOST and _pid_alive(pid):
                    continue
                if host != _HOST:
                    try:
                        if time.time() - d.stat().st_mtime < _FOREIGN_TMP_AGE_S:
                            continue
                    except OSError:
                        continue
                if op == "replaced" and _restore(d):
                    continue
            shutil.rmtree(d, ignore_errors=True)


def _restore(aside: Path) -> bool:
    try:
        m = _read_manifest(aside)
        target = _entry_dir(m["name"], m["tag"])
    except (LlmosError, KeyError, TypeError):
        return False
    if target.exists():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(aside, target)
    return True


def _disk_full_error(e: OSError, what: str) -> DiskFullError:
    try:
        free = shutil.disk_usage(home()).free
        free_text = f"{free / 1e6:.1f} MB free"
    except OSError:
        free_text = "free space unknown"
    where = f" ({e.filename})" if getattr(e, "filename", None) else ""
    return DiskFullError(
        f"no space left on the disk holding {home()} while {what}{where}; nothing was changed (the partial "
        f"entry was removed). {free_text}: free up space or point LLMOS_HOME at a larger disk",
        file=getattr(e, "filename", None))


class _Build:
    """An entry under construction in tmp/. It becomes visible only through `publish`; leaving
    the `with` block any other way (error, Ctrl-C, full disk) deletes it."""

    def __init__(self, op: str, what: str):
        self.op = op
        self.what = what
        self.dir: Path | None = None
        self.hashes: dict[str, str] = {}

    def __enter__(self) -> "_Build":
        try:
            _clean_stale()
            self.dir = _tmp_dir(self.op)
        except OSError as e:
            self.__exit__(type(e), e, None)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.dir is not None and self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)
        if exc is None or isinstance(exc, LlmosError) or not isinstance(exc, OSError):
            return False
        if _is_disk_full(exc):
            raise _disk_full_error(exc, self.what) from exc
        # Permissions, a read-only disk...: say what failed instead of a traceback.
        where = f": {exc.filename}" if exc.filename else ""
        raise ModelFileError(f"{self.what}: {exc.strerror or exc}{where}; nothing was changed in {home()}",
                             file=exc.filename) from exc

    def check_space(self, needed: int) -> None:
        try:
            free = shutil.disk_usage(self.dir).free
        except OSError:
            return
        if needed > free:
            raise DiskFullError(
                f"{self.what}: needs {needed / 1e6:.1f} MB but the disk holding {home()} has {free / 1e6:.1f} MB "
                "free; nothing was written. Free up space or point LLMOS_HOME at a larger disk")

    def copy(self, src: Path, rel: str) -> None:
        self.hashes[rel] = _copy_hashed(src, self.dir / rel)

    def move(self, src: Path, rel: str, sha256: str) -> None:
        dst = self.dir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
        self.hashes[rel] = sha256

    def hash_present(self) -> None:
        """Records every file already in the folder (written by a delegate such as quantize)."""
        for p in sorted(self.dir.rglob("*")):
            if p.is_file():
                rel = p.relative_to(self.dir).as_posix()
                if rel not in self.hashes:
                    self.hashes[rel] = sha256_file(p)

    def publish(self, name: str, tag: str, source: dict, lineage: list[dict],
                overrides: dict | None = None) -> Entry:
        files = sorted(self.hashes)
        info = _describe(self.dir, files, self.hashes)
        if overrides:
            info.update(overrides)
        manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "name": name, "tag": tag,
                    "created": _now(), "llmos_version": _version(), "source": source}
        manifest.update(info)
        manifest["lineage"] = lineage
        _write_json_atomic(self.dir / MANIFEST, manifest)
        for rel in files:  # fsync of each file was done when written; the folders need it too
            _fsync_dir((self.dir / rel).parent)
        _fsync_dir(self.dir)
        target = _entry_dir(name, tag)
        with _lock():
            target.parent.mkdir(parents=True, exist_ok=True)
            aside = None
            if target.exists():
                # A folder cannot be renamed over a non-empty one: move the old entry aside
                # first. A crash between the two renames is repaired by _clean_stale.
                aside = home() / "tmp" / f"replaced~{_HOST}~{os.getpid()}~{secrets.token_hex(4)}"
                os.rename(target, aside)
            try:
                os.rename(self.dir, target)
            except BaseException:
                if aside is not None:
                    os.rename(aside, target)
                raise
            _fsync_dir(target.parent)
            if aside is not None:
                shutil.rmtree(aside, ignore_errors=True)
        self.dir = None
        return Entry(name, tag, str(target), manifest)


# ---------------------------------------------------------------------------------------------
# Verbs
# ---------------------------------------------------------------------------------------------


def _lineage_of(folder: Path) -> list[dict]:
    if (folder / MANIFEST).is_file():
        try:
            return list(_read_manifest(folder).get("lineage") or [])
        except LlmosError:
            return []
    return []


def import_model(path: str | os.PathLike, name: str | None = None) -> Entry:
    """Copies a model folder (safetensors checkpoint or ONNX decoder) or a FILE.onnx with the
    files beside it into the registry as ``name`` (default: the folder's name, tag 'latest').
    An existing entry of that name is replaced; until the new one is complete the old one
    stays."""
    src = Path(os.path.expanduser(os.fspath(path)))
    if not src.exists():
        raise ModelFileError(f"{src}: no such file or folder", file=str(src))
    folder = src if src.is_dir() else src.parent
    files = _model_files(src)
    if name is None:
        base = folder.resolve().name if src.is_dir() or src.stem.lower() in ("model", "decoder_model") else src.stem
        ref_name, tag = _slug(base), DEFAULT_TAG
    else:
        ref_name, tag = parse_ref(name)
    with _Build("import", f"importing {src}") as b:
        b.check_space(sum((folder / f).stat().st_size for f in files))
        for rel in files:
            b.copy(folder / rel, rel)
        when = _now()
        lineage = _lineage_of(folder) + [{"op": "import", "from": str(src.resolve()), "at": when}]
        return b.publish(ref_name, tag, {"kind": "import", "path": str(src.resolve())}, lineage)


def _split_repo(repo_id: str, revision: str | None) -> tuple[str, str | None]:
    if not isinstance(repo_id, str) or not repo_id:
        raise InvalidInputError(f"repository: expected ORG/NAME[@REVISION], got {repo_id!r}", field="repo_id")
    repo, sep, rev = repo_id.partition("@")
    if sep:
        if not rev:
            raise InvalidInputError(f"{repo_id}: empty revision after '@'", field="revision")
        if revision is not None and revision != rev:
            raise InvalidInputError(f"{repo_id}: revision given twice ('{rev}' and '{revision}')", field="revision")
        revision = rev
    if not re.fullmatch(r"([\w.-]+/)?[\w.-]+", repo) or ".." in repo:
        raise InvalidInputError(f"repository {repo!r}: expected ORG/NAME (letters, digits, '-', '_', '.')",
                                field="repo_id")
    return repo, revision


def pull_target(repo_id: str, revision: str | None = None, name: str | None = None) -> tuple[str, str]:
    """(name, tag) that `pull` with these arguments writes."""
    repo, revision = _split_repo(repo_id, revision)
    if name is not None:
        return parse_ref(name)
    return _slug(repo.rsplit("/", 1)[-1]), (_slug(revision, _TAG_RE) if revision else DEFAULT_TAG)


def pull(repo_id: str, revision: str | None = None, name: str | None = None, *, progress: bool = True) -> Entry:
    """Downloads a model from the Hugging Face Hub (``ORG/NAME`` or ``ORG/NAME@REV``; HF_ENDPOINT
    is honoured) into the registry as ``name`` (default: the repository name, tagged with the
    revision or 'latest'). An interrupted pull resumes where it stopped when run again; every
    file is checked against the Hub's checksums before the entry is created."""
    from . import hub

    repo, revision = _split_repo(repo_id, revision)
    ref_name, tag = pull_target(repo_id, revision, name)
    snap = hub.resolve_snapshot(repo, revision)
    current = _entry_dir(ref_name, tag)
    if (current / MANIFEST).is_file():
        try:
            m = _read_manifest(current)
            if (m.get("source", {}).get("commit") == snap.commit and m.get("source", {}).get("repo_id") == repo
                    and all((current / f).is_file() and (current / f).stat().st_size == e.get("size")
                            for f, e in m["files"].items())):
                return Entry(ref_name, tag, str(current), m)
        except LlmosError:
            pass

    downloads = home() / "downloads"
    staging = downloads / repo.replace("/", "--")
    with _Build("pull", f"pulling {repo}") as b:
        remote = set(snap.files)
        side = sorted(f for f in remote if is_side_file(f))
        weights_any = [f for f in remote if "/" not in f and f.endswith(".safetensors")]
        if not weights_any:
            pickles = [f for f in remote if f.endswith((".bin", ".pt", ".pth"))]
            hint = (" (it has PyTorch pickle weights only, which llmos does not load, for safety)" if pickles
                    else " (`llmos import` takes an ONNX folder you already have)")
            raise ModelFileError(f"{repo}@{snap.commit[:12]}: the repository has no .safetensors weights at its top "
                                 f"level{hint}", file=repo)
        staging.mkdir(parents=True, exist_ok=True)

        def still_needed(paths: list[str]) -> int:
            have = [staging / p for p in paths]
            return sum(snap.files[p].size for p in paths) - sum(h.stat().st_size for h in have if h.is_file())

        b.check_space(still_needed(side))
        side_hashes = hub.fetch(snap, side, staging, progress=progress)
        # The index (fetched with the side files) says which .safetensors files are the weights.
        index = read_json(str(staging / INDEX_FILE)) if INDEX_FILE in side else None
        weights = weight_files(remote, index, where=f"{repo}: ")
        b.check_space(still_needed(weights))
        weight_hashes = hub.fetch(snap, weights, staging, progress=progress)
        hashes = {**side_hashes, **weight_hashes}
        for rel in sorted(hashes):
            b.move(staging / rel, rel, hashes[rel])
        source = {"kind": "hub", "repo_id": repo, "revision": revision, "commit": snap.commit,
                  "endpoint": snap.endpoint}
        lineage = [{"op": "pull", "from": f"hf://{repo}@{snap.commit}", "endpoint": snap.endpoint, "at": _now()}]
        entry = b.publish(ref_name, tag, source, lineage)
    shutil.rmtree(staging, ignore_errors=True)
    return entry


def remove(name: str) -> Entry:
    """Deletes a registry entry (only entries: a folder outside the registry is never deleted)."""
    entry = _entry_for(name)
    if entry.name is None:
        raise InvalidInputError(f"{entry.path}: not a registry entry; `rm` only removes models in {home()}",
                                field="name")
    target = Path(entry.path)
    with _lock():
        # Renamed out of models/ first so that a crash mid-delete never leaves a half entry.
        trash = _tmp_dir("removed")
        os.rename(target, trash / "entry")
        with contextlib.suppress(OSError):
            target.parent.rmdir()  # the name's folder, once its last tag is gone
    shutil.rmtree(trash, ignore_errors=True)
    return entry


def verify(name_or_path) -> VerifyReport:
    """Re-reads every file: sizes and sha256 against the manifest, files missing or added, and
    the structure of the safetensors files and JSON side files. A folder outside the registry
    (no manifest) gets the structural checks only."""
    folder = Path(resolve(name_or_path))
    entry_ref = name_or_path if isinstance(name_or_path, str) else str(folder)
    report = VerifyReport(ref=str(entry_ref), path=str(folder))
    manifest = None
    if (folder / MANIFEST).is_file():
        try:
            manifest = _read_manifest(folder)
        except LlmosError as e:
            report.problems.append(f"{MANIFEST}: {e}")
            return report
        if manifest.get("name"):
            report.ref = f"{manifest['name']}:{manifest.get('tag', DEFAULT_TAG)}"
    else:
        report.has_manifest = False
    if manifest is not None:
        files = manifest["files"]
        for rel in sorted(files):
            expected = files[rel]
            p = folder / rel
            report.checked += 1
            if not p.is_file():
                report.problems.append(f"{rel}: missing")
                continue
            size = p.stat().st_size
            if size != expected.get("size"):
                report.problems.append(f"{rel}: size {size} bytes, manifest says {expected.get('size')}")
                continue
            if expected.get("sha256") and sha256_file(p) != expected["sha256"]:
                report.problems.append(f"{rel}: sha256 does not match the manifest (file changed or corrupt)")
        present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        for rel in sorted(present - set(files) - {MANIFEST}):
            report.problems.append(f"{rel}: not in the manifest (added after the entry was made)")
        names = [f for f in files if (folder / f).is_file()]
    else:
        try:
            names = _model_files(folder)
        except LlmosError as e:
            report.problems.append(str(e))
            return report
        report.checked = len(names)
    _check_structure(folder, names, report)
    return report


def _check_structure(folder: Path, names: list[str], report: VerifyReport) -> None:
    from . import _core

    for rel in names:
        p = folder / rel
        try:
            if rel.endswith(".safetensors"):
                _core.safetensors_read_header(str(p))
            elif rel.endswith(".json"):
                with open(p, "rb") as f:
                    json.loads(f.read().decode("utf-8"))
        except LlmosError as e:
            report.problems.append(f"{rel}: {e}")
        except (ValueError, UnicodeDecodeError) as e:
            report.problems.append(f"{rel}: not valid JSON ({e})")
        except OSError as e:
            report.problems.append(f"{rel}: cannot read ({e.strerror})")


def _feature(attr: str, what: str, *modules: str) -> Callable:
    """The llmos function behind a verb whose implementation lives elsewhere in the package."""
    import importlib

    import llmos

    fn = getattr(llmos, attr, None)
    for mod in modules:
        if fn is not None:
            break
        try:
            fn = getattr(importlib.import_module(mod), attr, None)
        except ImportError:
            fn = None
    if fn is None:
        raise NotAvailableError(f"{what} is not available in this version of llmos yet (llmos.{attr} is missing)",
                                field=attr)
    return fn


def quantize(name_or_path, to: str = "int8", group: int = 32, name: str | None = None) -> Entry:
    """Writes a quantized copy of a model as a new entry (the original stays), through
    ``llmos.quantize(path, out_dir, quant=...)``. Default name: same name, tag e.g. 'int4'."""
    if to not in ("int8", "int4"):
        raise InvalidInputError(f"--to: expected int8 or int4, got {to!r}", field="to")
    if isinstance(group, bool) or not isinstance(group, int) or group not in _QUANT_GROUPS:
        raise InvalidInputError(f"--group: expected one of {', '.join(map(str, _QUANT_GROUPS))}, got {group!r}",
                                field="group")
    quant = to if group == 32 else f"{to}-g{group}"
    parent = _entry_for(name_or_path)
    run = _feature("quantize", "quantization")
    if name is not None:
        ref_name, tag = parse_ref(name)
    elif parent.name is not None:
        ref_name, tag = parent.name, quant if parent.tag == DEFAULT_TAG else _slug(f"{parent.tag}-{quant}", _TAG_RE)
    else:
        ref_name, tag = _slug(Path(parent.path).resolve().name), quant
    src = Path(parent.path)
    with _Build("quantize", f"quantizing {parent.ref}") as b:
        run(str(src), str(b.dir), quant=quant)
        # The tokenizer, chat template and licence come along unchanged when the quantizer
        # wrote only weights and config.
        for rel in _model_files(src):
            if is_side_file(rel) and rel != INDEX_FILE and not (b.dir / rel).exists():
                b.copy(src / rel, rel)
        b.hash_present()
        b.hashes.pop(MANIFEST, None)
        with contextlib.suppress(FileNotFoundError):
            (b.dir / MANIFEST).unlink()
        step = {"op": "quantize", "from": parent.ref, "from_digest": parent.digest, "quant": quant,
                "scheme": to, "group": group, "llmos_version": _version(), "at": _now()}
        source = {"kind": "quantize", "from": parent.ref, "from_digest": parent.digest}
        return b.publish(ref_name, tag, source, parent.lineage + [step],
                         overrides={"quantization": {"method": "llmos", "quant": quant, "scheme": to,
                                                     "group": group}})


def export_onnx(name_or_path, out_dir: str | os.PathLike, **options):
    """Exports a model as an ONNX decoder folder through ``llmos.export_onnx``."""
    run = _feature("export_onnx", "ONNX export", "llmos.onnx")
    return run(resolve(name_or_path), os.fspath(out_dir), **options)
