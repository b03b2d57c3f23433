"""Durable file writes and hashing: the one sha256, the one atomic JSON write, fsync of folders.

Every writer of user data (the registry, llmos.quantize, training outputs, LoRA merges) goes
through these, so that nothing a user saved is ever half-written.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

_CHUNK = 1 << 20


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def fsync_dir(path: Path) -> None:
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


def hash_file(path: str | os.PathLike, *hashers) -> None:
    """Feeds the file's bytes to each hashlib object, reading it once in 1 MB chunks."""
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            for h in hashers:
                h.update(chunk)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    hash_file(path, h)
    return h.hexdigest()


def copy_hashed(src: Path, dst: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    """Copies src to a new file dst, fsynced; returns the sha256 of what was copied.
    on_bytes: called with the size of each chunk once it is written (for progress)."""
    h = hashlib.sha256()
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fi, open(dst, "xb") as fo:
        while True:
            chunk = fi.read(_CHUNK)
            if not chunk:
                break
            h.update(chunk)
            fo.write(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
        fo.flush()
        os.fsync(fo.fileno())
    return h.hexdigest()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write that replaces `path` only when the block ends without error:
    written under a temporary name beside it, fsynced, then renamed over it. A crash, Ctrl-C
    or a full disk leaves the previous file whole (and no temporary file behind)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    """Writes JSON to `path` through `atomic_file`."""
    data = (json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n").encode("utf-8")
    with atomic_file(path) as f:
        f.write(data)
