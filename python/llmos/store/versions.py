"""The versions of one registry entry and the pointer that says which is current.

Layout of an entry (``models/<name>/<tag>/``)::

    versions/<id>/     one complete version: the model's files + llmos-manifest.json
    current            the id of the version that the name means now (a small text file)

A version folder is complete before it gets its place under versions/, and `current` is
replaced by one rename, so a reader sees the old version or the new one, never a mix. A
reader resolves the name once and keeps that folder; while it reads (`pinned`) it holds a
shared lock on the version's manifest, and a version that is no longer current is deleted
(`collect`) only when nobody holds that lock.

Entries written before versions existed keep their files directly in ``<tag>/``; they are
read as they are, and the next write of the name turns them into this layout.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from pathlib import Path
from typing import Iterator

from llmos.io.files import atomic_file, fsync_dir
from llmos.store.manifest import MANIFEST

VERSIONS = "versions"
CURRENT = "current"
_ID_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]{0,63}")
# How often a reader re-resolves when the version it picked was retired under it.
_PIN_ATTEMPTS = 20

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; an open file cannot be deleted there anyway
    fcntl = None


def new_id() -> str:
    """A fresh version id: sortable by creation time, unique across processes."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(4)


def current_id(tag_dir: Path) -> str | None:
    """The id `current` names, or None (no pointer, or one that is not an id)."""
    try:
        text = (tag_dir / CURRENT).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if _ID_RE.fullmatch(text) else None


_LOOKUP_ATTEMPTS = 16


def current_folder(tag_dir: Path) -> Path | None:
    """The folder holding the entry's current version: versions/<id>, or the entry folder itself
    for the layout written before versions existed. None when the entry has no complete version."""
    for _ in range(_LOOKUP_ATTEMPTS):
        vid = current_id(tag_dir)
        if vid is None:
            break
        if (tag_dir / VERSIONS / vid / MANIFEST).is_file():
            return tag_dir / VERSIONS / vid
        # A writer switched `current` and retired the version just read, between the two reads:
        # the pointer names another version now, so look again rather than report no entry.
        if current_id(tag_dir) == vid:
            break
    if (tag_dir / MANIFEST).is_file():
        return tag_dir
    return None


def entry_of(folder: Path, models: Path) -> tuple[str, str] | None:
    """(name, tag) when `folder` (a real path) is a version of a registry entry, else None."""
    try:
        parts = folder.relative_to(models).parts
    except ValueError:
        return None
    if len(parts) == 2 or (len(parts) == 4 and parts[2] == VERSIONS):
        return parts[0], parts[1]
    return None


def switch(tag_dir: Path, vid: str) -> None:
    """Makes versions/<vid> the entry's current version, in one rename."""
    with atomic_file(tag_dir / CURRENT) as f:
        f.write(vid.encode("ascii") + b"\n")
    fsync_dir(tag_dir)


@contextlib.contextmanager
def _try_exclusive(manifest: Path) -> Iterator[bool]:
    """True while nobody reads the version whose manifest this is (and nobody can start to)."""
    if fcntl is None:
        yield True
        return
    try:
        f = open(manifest, "rb")
    except FileNotFoundError:
        yield True
        return
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True


def collect(tag_dir: Path, trash: Path) -> None:
    """Moves what no reader needs any more into `trash` (a folder to delete afterwards): the
    versions that are not current, the files of the old flat layout once a version is current,
    and the whole entry folder when nothing in it is complete. The caller holds the registry lock."""
    vid = current_id(tag_dir)
    current = tag_dir / VERSIONS / vid if vid is not None else None
    if current is not None and not (current / MANIFEST).is_file():
        current = None
    versions = tag_dir / VERSIONS
    if versions.is_dir():
        for v in versions.iterdir():
            if v == current:
                continue
            with _try_exclusive(v / MANIFEST) as free:
                if free:
                    trash.mkdir(parents=True, exist_ok=True)
                    os.rename(v, trash / f"version-{secrets.token_hex(4)}")
        with contextlib.suppress(OSError):
            versions.rmdir()
    if current is not None and (tag_dir / MANIFEST).exists():
        # The flat layout's files, left from before this entry had versions.
        with _try_exclusive(tag_dir / MANIFEST) as free:
            if free:
                flat = trash / f"flat-{secrets.token_hex(4)}"
                flat.mkdir(parents=True, exist_ok=True)
                for p in tag_dir.iterdir():
                    if p.name not in (VERSIONS, CURRENT) and not p.name.startswith("."):
                        os.rename(p, flat / p.name)
    if current is None and (tag_dir / CURRENT).exists() and not (tag_dir / MANIFEST).is_file():
        with contextlib.suppress(OSError):
            os.unlink(tag_dir / CURRENT)  # points at a version that no longer exists
    if current is None and not (tag_dir / MANIFEST).is_file():
        for p in list(tag_dir.iterdir()) if tag_dir.is_dir() else []:
            if p.name.startswith("." + CURRENT + "."):  # an atomic_file left by a crash
                with contextlib.suppress(OSError):
                    p.unlink()
        with contextlib.suppress(OSError):
            tag_dir.rmdir()


@contextlib.contextmanager
def pinned(resolve_once) -> Iterator[str]:
    """Runs ``resolve_once()`` (a name -> folder lookup) and keeps the folder it returns from
    being deleted until the block ends. When the version it picked is retired and deleted
    between the lookup and the lock, looks again: the caller always gets a whole version."""
    if fcntl is None:
        yield resolve_once()
        return
    for _ in range(_PIN_ATTEMPTS):
        folder = resolve_once()
        manifest = Path(folder) / MANIFEST
        try:
            f = open(manifest, "rb")
        except FileNotFoundError:
            if os.path.isdir(folder) and not _is_version(Path(folder)):
                yield folder  # a plain model folder: nothing to pin
                return
            continue
        with f:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH)
            try:
                same = os.stat(manifest).st_ino == os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                continue
            yield folder
            return
    yield resolve_once()


def _is_version(folder: Path) -> bool:
    return folder.parent.name == VERSIONS
