"""The model registry: models kept by ``name:tag`` under ``LLMOS_HOME`` (default ~/.cache/llmos).

Layout::

    $LLMOS_HOME/models/<name>/<tag>/versions/<id>/   one version: the model's files + llmos-manifest.json
    $LLMOS_HOME/models/<name>/<tag>/current          which version the name means now
    $LLMOS_HOME/downloads/<org>--<repo>/             files of an unfinished pull, kept so that the
                                                     next pull of the same repository resumes
    $LLMOS_HOME/tmp/                                 versions being built

A version is finished (files and manifest written and fsynced) before it gets its place, and
`current` changes by one rename, so a crash, Ctrl-C or a full disk leaves the old version or
the new one, never a mix; a reader keeps the version it resolved (store/versions.py). Whatever
a dead process left in tmp/ is removed the next time the registry is used.

Every function that takes a model also takes a folder path (see `resolve`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from llmos import onnx as onnx_ops  # onnx-free until export_onnx is called
from llmos.adapters.lora import apply_adapter
from llmos.errors import ChatTemplateError, InvalidInputError, LlmosError, ModelFileError
from llmos.extras import require
from llmos.io.config import read_json
from llmos.io.finite import nonfinite_tensors
from llmos.io.gguf import GgufFile, is_gguf
from llmos.io.files import sha256_file
from llmos.paths import home
from llmos.registry import hub
from llmos.runtime.load import base_and_adapter, load as load_model
from llmos.runtime.quantize import quantize as quantize_checkpoint
from llmos.store.build import Build, clean_stale, lock, refuse_existing, tmp_dir
from llmos.store.files import INDEX_FILE, is_side_file, model_files, now, weight_files
from llmos.store.manifest import MANIFEST, Entry, read_manifest
from llmos.store.names import DEFAULT_TAG, TAG_RE, check_new_name, entry_dir, looks_like_path, parse_ref, slug
from llmos.store.resolve import entry_for, iter_entries, resolve, resolved
from llmos.store.versions import current_folder, entry_of
from llmos.text.tokenizer import Tokenizer
from llmos.version import __version__

_QUANT_GROUPS = (32, 64, 128)


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


def list_models() -> list[Entry]:
    """Every entry, sorted by name then tag. An entry whose manifest is unreadable is listed
    with ``manifest['problem']`` set (``verify`` reports it too)."""
    clean_stale()
    return list(iter_entries())


def show(name_or_path) -> Entry:
    """The entry (manifest: source, family, dtype/quantization, files and checksums, chat
    template, EOS tokens, lineage). A plain folder is described without checksums."""
    return entry_for(name_or_path)


def chat_template(name_or_path) -> str:
    """The chat template recorded for the model (ChatTemplateError when it has none)."""

    entry = entry_for(name_or_path)
    if not entry.chat_template:
        raise ChatTemplateError(f"{entry.ref}: the model has no chat template (tokenizer_config.json "
                                "'chat_template' or chat_template.jinja)", file=entry.path, field="chat_template")
    return entry.chat_template


def tokenize(name_or_path, text: str) -> list[tuple[int, str, str]]:
    """How the model's tokenizer splits `text`: (id, vocabulary token, decoded text) per token."""

    with resolved(name_or_path) as folder:
        tok = Tokenizer.from_dir(folder)
    ids = tok.encode(text, add_special_tokens=False)
    return [(i, tok.id_to_token(i) or "", tok.decode([i], skip_special_tokens=False)) for i in ids]


def load(name_or_path, **options):
    """llmos.load for a registry name or a folder."""
    return load_model(name_or_path, **options)


def _lineage_of(folder: Path) -> list[dict]:
    if (folder / MANIFEST).is_file():
        try:
            return list(read_manifest(folder).get("lineage") or [])
        except LlmosError:
            return []
    return []


def import_model(path: str | os.PathLike, name: str | None = None, *, force: bool = False,
                 progress: Callable[[int, int], None] | None = None, _origin: Path | None = None) -> Entry:
    """Copies a model folder (safetensors checkpoint or ONNX decoder) or a FILE.onnx with the
    files beside it into the registry as ``name`` (default: the folder's name, tag 'latest').
    An existing entry of that name is refused unless ``force``; then it is replaced, and until
    the new version is complete the old one stays. progress: called with (bytes copied, bytes
    to copy)."""
    src = Path(os.path.expanduser(os.fspath(path)))
    if not src.exists():
        raise ModelFileError(f"{src}: no such file or folder", file=str(src))
    if src.is_file() and is_gguf(src):
        return _import_gguf(src, name, force=force, progress=progress)
    folder = src if src.is_dir() else src.parent
    files = model_files(src)
    if name is None:
        base = folder.resolve().name if src.is_dir() or src.stem.lower() in ("model", "decoder_model") else src.stem
        ref_name, tag = slug(base), DEFAULT_TAG
    else:
        ref_name, tag = parse_ref(name)
    check_new_name(ref_name)
    if not force:
        refuse_existing(ref_name, tag)  # before copying gigabytes; publish checks again
    with Build("import", f"importing {src}") as b:
        total = sum((folder / f).stat().st_size for f in files)
        b.check_space(total)
        copied = [0]

        def on_bytes(n: int) -> None:
            copied[0] += n
            progress(copied[0], total)

        for rel in files:
            b.copy(folder / rel, rel, on_bytes if progress is not None else None)
        when = now()
        origin = str((_origin or src).resolve())
        lineage = _lineage_of(folder) + [{"op": "import", "from": origin, "at": when}]
        return b.publish(ref_name, tag, {"kind": "import", "path": origin}, lineage, replace=force)


def _import_gguf(src: Path, name: str | None, *, force: bool,
                 progress: Callable[[int, int], None] | None) -> Entry:
    """A GGUF file enters the registry as an llmos checkpoint: pre-quantized with the file's own
    blocks mapped onto llmos's, or re-quantized (llmos/runtime/gguf_blocks.py), or float for an
    F32/F16 file."""
    import tempfile

    from llmos.backends.base import check_threads
    from llmos.runtime.gguf_blocks import write_checkpoint

    gguf = GgufFile(src)
    with tempfile.TemporaryDirectory(prefix="llmos-gguf-") as tmp:
        if gguf.suggested_quant() is not None:
            folder = write_checkpoint(gguf, Path(tmp) / "quant", threads=check_threads(None))
        else:
            folder = gguf.write_folder(Path(tmp) / "float")
        return import_model(folder, name=name or slug(src.stem), force=force, progress=progress, _origin=src)


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
        ref_name, tag = parse_ref(name)
        return check_new_name(ref_name), tag
    return slug(repo.rsplit("/", 1)[-1]), (slug(revision, TAG_RE) if revision else DEFAULT_TAG)


def pull(repo_id: str, revision: str | None = None, name: str | None = None, *, progress: bool = True) -> Entry:
    """Downloads a model from the Hugging Face Hub (``ORG/NAME`` or ``ORG/NAME@REV``; HF_ENDPOINT
    is honoured) into the registry as ``name`` (default: the repository name, tagged with the
    revision or 'latest'). An interrupted pull resumes where it stopped when run again; every
    file is checked against the Hub's checksums before the entry is created."""

    repo, revision = _split_repo(repo_id, revision)
    ref_name, tag = pull_target(repo_id, revision, name)
    snap = hub.resolve_snapshot(repo, revision)
    current = current_folder(entry_dir(ref_name, tag))
    if current is not None:
        try:
            m = read_manifest(current)
            if (m.get("source", {}).get("commit") == snap.commit and m.get("source", {}).get("repo_id") == repo
                    and all((current / f).is_file() and (current / f).stat().st_size == e.get("size")
                            for f, e in m["files"].items())):
                return Entry(ref_name, tag, str(current), m)
        except LlmosError:
            pass

    downloads = home() / "downloads"
    staging = downloads / repo.replace("/", "--")
    with Build("pull", f"pulling {repo}") as b:
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
        lineage = [{"op": "pull", "from": f"hf://{repo}@{snap.commit}", "endpoint": snap.endpoint, "at": now()}]
        entry = b.publish(ref_name, tag, source, lineage, replace=True)  # a pull updates its entry
    shutil.rmtree(staging, ignore_errors=True)
    return entry


def remove(name: str) -> Entry:
    """Deletes a registry entry, given by name. A path is refused, even one that leads to an
    entry (a link the user made, say): `rm` never deletes what a path names."""
    if isinstance(name, os.PathLike) or (isinstance(name, str) and looks_like_path(name)):
        raise InvalidInputError(_path_not_name(os.fspath(name)), field="name")
    ref_name, tag = parse_ref(name)
    tag_dir = entry_dir(ref_name, tag)
    if not tag_dir.is_dir():
        if os.path.isdir(name):
            raise InvalidInputError(f"{name}: not a registry entry; `rm` only removes models in {home()}",
                                    field="name")
        resolve(name)  # ModelNotFoundError with the closest names (or an entry put back by recovery)
    with lock():
        folder = current_folder(tag_dir)
        try:
            manifest = read_manifest(folder) if folder is not None else {"files": {}}
        except LlmosError as e:  # a broken entry can still be removed
            manifest = {"problem": str(e), "files": {}}
        # Renamed out of models/ first so that a crash mid-delete never leaves a half entry.
        trash = tmp_dir("removed")
        os.rename(tag_dir, trash / "entry")
        with contextlib.suppress(OSError):
            tag_dir.parent.rmdir()  # the name's folder, once its last tag is gone
    shutil.rmtree(trash, ignore_errors=True)
    return Entry(ref_name, tag, str(folder or tag_dir), manifest)


def _path_not_name(text: str) -> str:
    real = Path(os.path.expanduser(text)).resolve()
    hit = entry_of(real, (home() / "models").resolve())
    if hit is None and real.parent.name == "versions":
        hit = entry_of(real.parent.parent, (home() / "models").resolve())
    if hit is not None:
        return (f"{text}: `rm` takes a registry name, not a path; this path leads to the entry '{hit[0]}:{hit[1]}' "
                f"(remove the entry with `llmos rm {hit[0]}:{hit[1]}`, or the path itself with your file manager)")
    return f"{text}: not a registry entry; `rm` takes a registry name and only removes models in {home()}"


def verify(name_or_path, *, progress: Callable[[int, int], None] | None = None) -> VerifyReport:
    """Re-reads every file: sizes and sha256 against the manifest, files missing or added, and
    the structure of the safetensors files and JSON side files. A folder outside the registry
    (no manifest) gets the structural checks only. progress: called with (checks done, checks)
    after each file's checksum and each file's structure check."""
    with resolved(name_or_path) as path:
        return _verify(name_or_path, Path(path), progress or (lambda done, total: None))


def _verify(name_or_path, folder: Path, progress: Callable[[int, int], None]) -> VerifyReport:
    entry_ref = name_or_path if isinstance(name_or_path, str) else str(folder)
    report = VerifyReport(ref=str(entry_ref), path=str(folder))
    manifest = None
    if (folder / MANIFEST).is_file():
        try:
            manifest = read_manifest(folder)
        except LlmosError as e:
            report.problems.append(f"{MANIFEST}: {e}")
            return report
        if manifest.get("name"):
            report.ref = f"{manifest['name']}:{manifest.get('tag', DEFAULT_TAG)}"
    else:
        report.has_manifest = False
    if manifest is not None:
        files = manifest["files"]
        total = 2 * len(files)  # a checksum, then a structure check, per file (present)
        for rel in sorted(files):
            progress(report.checked, total)
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
        done, total = len(files), len(files) + len(names)
    else:
        try:
            names = model_files(folder)
        except LlmosError as e:
            report.problems.append(str(e))
            return report
        report.checked = len(names)
        done, total = 0, len(names)
    progress(done, total)
    _check_structure(folder, names, report, lambda i: progress(done + i, total))
    return report


def _check_structure(folder: Path, names: list[str], report: VerifyReport, progress: Callable[[int], None]) -> None:

    for i, rel in enumerate(names, 1):
        p = folder / rel
        try:
            if rel.endswith(".safetensors"):
                for tensor, count in nonfinite_tensors(str(p)):
                    report.problems.append(f"{rel}: tensor '{tensor}' holds {count} NaN or infinite values "
                                           "(the model would fail with NumericalError)")
            elif rel.endswith(".json"):
                with open(p, "rb") as f:
                    json.loads(f.read().decode("utf-8"))
        except LlmosError as e:
            report.problems.append(f"{rel}: {e}")
        except (ValueError, UnicodeDecodeError) as e:
            report.problems.append(f"{rel}: not valid JSON ({e})")
        except OSError as e:
            report.problems.append(f"{rel}: cannot read ({e.strerror})")
        progress(i)


def quantize(name_or_path, to: str = "int8", group: int = 32, name: str | None = None, *,
             force: bool = False, adapter: str | None = None,
             progress: Callable[[int, int], None] | None = None) -> Entry:
    """Writes a quantized copy of a model as a new entry (the original stays), through
    ``llmos.quantize(path, out_dir, quant=...)``. Default name: same name, tag e.g. 'int4'.
    An existing entry of the new name (the model's own, too) is replaced only with ``force``.
    adapter: a LoRA adapter folder merged in first; `name_or_path` may be the adapter folder
    itself (its base is the one it names). progress: as llmos.quantize reports it."""
    if to not in ("int8", "int4"):
        raise InvalidInputError(f"--to: expected int8 or int4, got {to!r}", field="to")
    if isinstance(group, bool) or not isinstance(group, int) or group not in _QUANT_GROUPS:
        raise InvalidInputError(f"--group: expected one of {', '.join(map(str, _QUANT_GROUPS))}, got {group!r}",
                                field="group")
    quant = to if group == 32 else f"{to}-g{group}"
    with resolved(name_or_path) as folder:  # the source version stays while it is read
        with base_and_adapter(folder, adapter) as (base, adapter):
            return _quantize(base, to, group, quant, name, force, adapter, progress)


def _quantize(folder: str, to: str, group: int, quant: str, name: str | None, force: bool,
              adapter: str | None, progress: Callable[[int, int], None] | None) -> Entry:
    parent = entry_for(folder)
    if name is not None:
        ref_name, tag = parse_ref(name)
        check_new_name(ref_name)
    elif adapter is not None:  # not the base's name: its int8 tag would then hide the adapter
        ref_name, tag = slug(Path(adapter).resolve().name), quant
    elif parent.name is not None:
        ref_name, tag = parent.name, quant if parent.tag == DEFAULT_TAG else slug(f"{parent.tag}-{quant}", TAG_RE)
    else:
        ref_name, tag = slug(Path(parent.path).resolve().name), quant
    if not force:
        refuse_existing(ref_name, tag)
    src = Path(parent.path)
    with Build("quantize", f"quantizing {parent.ref}") as b:
        quantize_checkpoint(str(src), str(b.dir), quant=quant, adapter=adapter, progress=progress)
        # The tokenizer, chat template and licence come along unchanged when the quantizer
        # wrote only weights and config.
        for rel in model_files(src):
            if is_side_file(rel) and rel != INDEX_FILE and not (b.dir / rel).exists():
                b.copy(src / rel, rel)
        b.hash_present()
        b.hashes.pop(MANIFEST, None)
        with contextlib.suppress(FileNotFoundError):
            (b.dir / MANIFEST).unlink()
        step = {"op": "quantize", "from": parent.ref, "from_digest": parent.digest, "quant": quant,
                "scheme": to, "group": group, "llmos_version": __version__, "at": now()}
        if adapter is not None:
            step["adapter"] = os.path.abspath(adapter)
        source = {"kind": "quantize", "from": parent.ref, "from_digest": parent.digest}
        return b.publish(ref_name, tag, source, parent.lineage + [step],
                         overrides={"quantization": {"method": "llmos", "quant": quant, "scheme": to,
                                                     "group": group}}, replace=force)


def export_onnx(name_or_path, out_dir: str | os.PathLike, *, adapter: str | None = None, **options):
    """Exports a model as an ONNX decoder folder through ``llmos.export_onnx``. adapter: a LoRA
    adapter folder merged in first (in torch: the train extra); `name_or_path` may be the
    adapter folder itself."""
    with resolved(name_or_path) as folder:  # the source version stays while it is read
        with base_and_adapter(folder, adapter) as (base, adapter):
            if adapter is None:
                return onnx_ops.export_onnx(base, os.fspath(out_dir), **options)
            require("train", "exporting a model with a LoRA adapter (the adapter is merged in torch)")
            with Build("merge", f"merging {adapter} into {base}") as b:  # scratch space, never published
                merged = apply_adapter(base, os.fspath(adapter), str(b.dir / "merged"))
                return onnx_ops.export_onnx(merged, os.fspath(out_dir), **options)
