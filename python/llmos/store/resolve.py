"""From a name or a path to a model folder: the one lookup every command and `llmos.load` use."""

from __future__ import annotations

import contextlib
import difflib
import os
import re
from pathlib import Path
from typing import Iterator

from llmos.errors import InvalidInputError, LlmosError, ModelFileError, ModelNotFoundError
from llmos.paths import BUNDLED_MODEL_NAME, bundled_model_dir, home
from llmos.store.build import clean_stale
from llmos.store.files import describe, model_files
from llmos.store.manifest import MANIFEST, Entry, read_manifest
from llmos.store.names import DEFAULT_TAG, NAME_RE, TAG_RE, entry_dir, looks_like_path, parse_ref
from llmos.store.versions import CURRENT, current_folder, entry_of, pinned

def resolve(name_or_path: str | os.PathLike) -> str:
    """The folder of a model given by registry name (``name[:tag]``) or by path.

    A path (an os.PathLike, or text containing a separator or starting with '.' or '~') must
    exist; a FILE.onnx resolves to its folder. A bare word is a registry name first and a
    folder in the working directory second. An unknown name raises ModelNotFoundError with
    the closest names.
    """
    if isinstance(name_or_path, os.PathLike) or (isinstance(name_or_path, str) and looks_like_path(name_or_path)):
        path = Path(os.path.expanduser(os.fspath(name_or_path)))
        if path.is_dir():
            if (path / CURRENT).is_file():  # an entry's own folder: its current version
                folder = current_folder(path)
                if folder is not None:
                    return str(folder)
            return str(path)
        if path.is_file() and path.suffix.lower() == ".onnx":
            return str(path.parent)
        text = os.fspath(name_or_path)
        hint = ""
        # ORG/NAME looks like a Hub repository; ./x, ../x, ~/x and /x are plainly paths.
        if (isinstance(name_or_path, str) and not text.startswith((".", "~", "/"))
                and re.fullmatch(r"[\w.-]+/[\w.-]+(@[\w./-]+)?", text)):
            hint = f" (to download it from the Hugging Face Hub: llmos pull {text})"
        what = "a file, not a model folder" if path.exists() else "no such file or folder"
        raise ModelFileError(f"{text}: {what}{hint}", file=text)
    if not isinstance(name_or_path, str):
        raise InvalidInputError(f"model: expected a name or a folder path, got {type(name_or_path).__name__}",
                                field="model")
    try:
        name, tag = parse_ref(name_or_path)
    except InvalidInputError:
        if os.path.isdir(name_or_path):
            return name_or_path
        raise
    if (name, tag) == (BUNDLED_MODEL_NAME, DEFAULT_TAG):
        bundled = bundled_model_dir()
        if not (bundled / "model.safetensors").is_file():
            raise ModelFileError(f"{bundled}: the bundled default model is missing from this installation",
                                 file=str(bundled))
        return str(bundled)
    folder = current_folder(entry_dir(name, tag))
    if folder is not None:
        return str(folder)
    if os.path.isdir(name_or_path):
        return name_or_path
    # A crash of an older llmos can leave the entry moved aside in tmp/: put it back and look again.
    if _recovered():
        folder = current_folder(entry_dir(name, tag))
        if folder is not None:
            return str(folder)
    raise _not_found(name, tag)


def _recovered() -> bool:
    try:
        return clean_stale()
    except OSError:  # a registry this user may read but not write: nothing to recover from here
        return False


@contextlib.contextmanager
def resolved(name_or_path) -> Iterator[str]:
    """`resolve`, with the folder kept from deletion until the block ends: a reader of a
    registry entry reads one whole version even while another process replaces the entry."""
    with pinned(lambda: resolve(name_or_path)) as folder:
        yield folder


def iter_entries() -> Iterator[Entry]:
    """Every entry with a complete version (an unreadable manifest: ``manifest['problem']``)."""
    models = home() / "models"
    if not models.is_dir():
        return
    for name_dir in sorted(models.iterdir()):
        if not name_dir.is_dir() or not NAME_RE.fullmatch(name_dir.name):
            continue
        for tag_dir in sorted(name_dir.iterdir()):
            if not TAG_RE.fullmatch(tag_dir.name):
                continue
            folder = current_folder(tag_dir)
            if folder is None:
                continue
            try:
                manifest = read_manifest(folder)
            except LlmosError as e:
                manifest = {"problem": str(e), "files": {}}
            yield Entry(name_dir.name, tag_dir.name, str(folder), manifest)


def _not_found(name: str, tag: str) -> ModelNotFoundError:
    refs = [e.ref for e in iter_entries()]
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


def entry_for(name_or_path) -> Entry:
    with resolved(name_or_path) as path:
        folder = Path(path)
        hit = entry_of(folder.resolve(), (home() / "models").resolve())
        if hit is not None and (folder / MANIFEST).is_file():
            return Entry(hit[0], hit[1], str(folder), read_manifest(folder))
        if (folder / MANIFEST).is_file():  # an entry folder copied elsewhere still carries its manifest
            return Entry(None, None, str(folder), read_manifest(folder))
        return Entry(None, None, str(folder), describe(folder, model_files(folder), hashes=None))
