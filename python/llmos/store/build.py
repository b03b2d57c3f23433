"""Writing the registry: a version is built in tmp/, renamed under its entry's versions/ and
made current by one pointer switch (`Build.publish`, see store/versions.py); a lock serializes
publish / remove / cleanup between processes, and what dead processes left behind is cleaned
up (or put back) the next time the registry is used."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import time
from pathlib import Path
from typing import Callable, Iterator

from llmos.errors import DiskFullError, InvalidInputError, LlmosError, ModelFileError
from llmos.io.files import copy_hashed, fsync_dir, is_disk_full, sha256_file, write_json_atomic
from llmos.paths import home
from llmos.store.files import describe, now
from llmos.store.manifest import MANIFEST, MANIFEST_FORMAT, MANIFEST_VERSION, Entry, read_manifest
from llmos.store.names import NAME_RE, TAG_RE, check_new_name, entry_dir
from llmos.store.versions import VERSIONS, collect, current_folder, new_id, switch
from llmos.version import __version__

HOST = socket.gethostname().replace("~", "-")


_FOREIGN_TMP_AGE_S = 7 * 24 * 3600  # leftovers of another machine sharing LLMOS_HOME


@contextlib.contextmanager
def lock() -> Iterator[None]:
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


def tmp_name(op: str) -> Path:
    """A fresh path in tmp/ (not created) that clean_stale removes once this process is gone."""
    return home() / "tmp" / f"{op}~{HOST}~{os.getpid()}~{secrets.token_hex(4)}"


def tmp_dir(op: str) -> Path:
    path = tmp_name(op)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir()
    return path


def clean_stale() -> bool:
    """Removes what dead processes left in tmp/ and versions that no reader needs any more; an
    entry that an older llmos had moved aside while replacing it (and not yet replaced) is put
    back. True when an entry was put back."""
    root = home()
    restored = False
    if not (root / "tmp").is_dir() and not (root / "models").is_dir():
        return restored
    with lock():
        tmp = root / "tmp"
        for d in list(tmp.iterdir()) if tmp.is_dir() else []:
            parts = d.name.split("~")
            if len(parts) == 4 and parts[2].isdigit():
                op, host, pid = parts[0], parts[1], int(parts[2])
                if host == HOST and _pid_alive(pid):
                    continue
                if host != HOST:
                    try:
                        if time.time() - d.stat().st_mtime < _FOREIGN_TMP_AGE_S:
                            continue
                    except OSError:
                        continue
                if op == "replaced" and _restore(d):
                    restored = True
                    continue
            shutil.rmtree(d, ignore_errors=True)
        trash = None
        for tag_dir in _tag_dirs(root / "models"):
            if (tag_dir / VERSIONS).is_dir() or current_folder(tag_dir) is None:
                trash = trash or tmp_name("collected")
                collect(tag_dir, trash)
        for name_dir in _name_dirs(root / "models"):
            with contextlib.suppress(OSError):
                name_dir.rmdir()  # a name whose last tag is gone
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
    return restored


def _name_dirs(models: Path) -> list[Path]:
    if not models.is_dir():
        return []
    return [d for d in models.iterdir() if d.is_dir() and NAME_RE.fullmatch(d.name)]


def _tag_dirs(models: Path) -> list[Path]:
    return [t for n in _name_dirs(models) for t in n.iterdir() if t.is_dir() and TAG_RE.fullmatch(t.name)]


def _restore(aside: Path) -> bool:
    """Puts back an entry that a crash of an older llmos left in tmp/ (its flat layout) when the
    name has no complete version now."""
    try:
        m = read_manifest(aside)
        target = entry_dir(m["name"], m["tag"])
    except (LlmosError, KeyError, TypeError):
        return False
    if current_folder(target) is not None:
        return False
    if target.exists():
        shutil.rmtree(target, ignore_errors=True)  # nothing complete in it (checked above)
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


class Build:
    """An entry under construction in tmp/. It becomes visible only through `publish`; leaving
    the `with` block any other way (error, Ctrl-C, full disk) deletes it."""

    def __init__(self, op: str, what: str):
        self.op = op
        self.what = what
        self.dir: Path | None = None
        self.hashes: dict[str, str] = {}

    def __enter__(self) -> "Build":
        try:
            clean_stale()
            self.dir = tmp_dir(self.op)
        except OSError as e:
            self.__exit__(type(e), e, None)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.dir is not None and self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)
        if exc is None or isinstance(exc, LlmosError) or not isinstance(exc, OSError):
            return False
        if is_disk_full(exc):
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

    def copy(self, src: Path, rel: str, on_bytes: Callable[[int], None] | None = None) -> None:
        self.hashes[rel] = copy_hashed(src, self.dir / rel, on_bytes)

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
                overrides: dict | None = None, *, replace: bool = False) -> Entry:
        """Makes the built folder the current version of ``name:tag``. An existing entry is
        refused unless `replace`; its version stays readable until the new one is current."""
        check_new_name(name)
        files = sorted(self.hashes)
        info = describe(self.dir, files, self.hashes)
        if overrides:
            info.update(overrides)
        manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "name": name, "tag": tag,
                    "created": now(), "llmos_version": __version__, "source": source}
        manifest.update(info)
        manifest["lineage"] = lineage
        write_json_atomic(self.dir / MANIFEST, manifest)
        for rel in files:  # fsync of each file was done when written; the folders need it too
            fsync_dir((self.dir / rel).parent)
        fsync_dir(self.dir)
        tag_dir = entry_dir(name, tag)
        vid = new_id()
        trash = tmp_name("retired")
        try:
            with lock():
                if not replace:
                    refuse_existing(name, tag)
                versions = tag_dir / VERSIONS
                versions.mkdir(parents=True, exist_ok=True)
                os.rename(self.dir, versions / vid)
                self.dir = None
                fsync_dir(versions)
                # A crash before this line leaves a version that is not current: invisible, and
                # collected by the next cleanup. After it, the new version is the entry.
                switch(tag_dir, vid)
                collect(tag_dir, trash)
        finally:
            shutil.rmtree(trash, ignore_errors=True)
        return Entry(name, tag, str(versions / vid), manifest)


def refuse_existing(name: str, tag: str) -> None:
    """InvalidInputError when ``name:tag`` already names a model (writers replace it only when
    asked: force=True, `--force`)."""
    if current_folder(entry_dir(name, tag)) is not None:
        raise InvalidInputError(f"a model named '{name}:{tag}' already exists in {home()}; pass --force "
                                "(force=True) to replace it, or choose another name", field="name")
