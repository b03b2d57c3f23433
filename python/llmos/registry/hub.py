"""Downloading model files from the Hugging Face Hub, through huggingface_hub.

`resolve_snapshot` pins a revision to a commit and lists its files with the Hub's checksums;
`fetch` downloads chosen files of that commit into a folder and checks every byte against
those checksums. huggingface_hub does the HTTP: redirects, auth tokens, Xet storage, retries
that resume a file with a Range request when the connection drops, and progress bars. Files
completed in the folder are kept, so a pull that stopped fetches only what is missing when run
again. HF_ENDPOINT (and HF_HUB_CACHE) are read at call time, not at import time.
"""

from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from llmos.io.files import hash_file
from llmos.errors import DownloadError, IntegrityError, InvalidInputError, LlmosError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    blob_id: str             # git object id of the file (of its LFS pointer when `sha256` is set)
    sha256: str | None       # LFS files: sha256 of the content


@dataclass(frozen=True)
class Snapshot:
    repo_id: str
    revision: str | None
    commit: str
    endpoint: str
    files: dict[str, RemoteFile] = field(default_factory=dict)


def endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _api():
    from huggingface_hub import HfApi

    from llmos.version import __version__

    return HfApi(endpoint=endpoint(), library_name="llmos", library_version=__version__)


def _translate(e: BaseException, repo_id: str, revision: str | None) -> LlmosError | None:
    """The llmos error for a huggingface_hub/httpx failure (None: not a download failure)."""
    from huggingface_hub import errors as hf

    where = f"{repo_id}" + (f"@{revision}" if revision else "")
    ep = endpoint()
    if isinstance(e, hf.GatedRepoError):
        return DownloadError(f"{where}: the repository is gated on {ep}; accept its terms on the website and log "
                             "in (`hf auth login` or HF_TOKEN)", field="repo_id")
    if isinstance(e, hf.RepositoryNotFoundError):
        return DownloadError(f"{where}: no such repository on {ep} (or it is private: log in with `hf auth login` "
                             "or set HF_TOKEN)", field="repo_id")
    if isinstance(e, hf.RevisionNotFoundError):
        return DownloadError(f"{where}: the repository has no revision '{revision}' (a branch, tag or commit)",
                             field="revision")
    remote_missing = getattr(hf, "RemoteEntryNotFoundError", None)  # huggingface_hub >= 1.0
    if remote_missing is not None and isinstance(e, remote_missing):
        return DownloadError(f"{where}: a file listed by {ep} could not be downloaded ({_first_line(e)}); run the "
                             "same pull again to resume", field="repo_id")
    if isinstance(e, hf.OfflineModeIsEnabled):
        return DownloadError(f"{where}: HF_HUB_OFFLINE is set, so nothing can be downloaded; unset it to pull",
                             field="repo_id")
    if isinstance(e, hf.HfHubHTTPError):
        return DownloadError(f"{where}: {ep} answered with an error ({_first_line(e)}); run the same pull again to "
                             "resume", field="repo_id")
    if isinstance(e, hf.LocalEntryNotFoundError):
        return DownloadError(f"{where}: cannot reach {ep} ({_first_line(e.__cause__ or e)}); check the network or "
                             "HF_ENDPOINT, then run the same pull again to resume", field="repo_id")
    try:
        import httpx2 as httpx
    except ImportError:  # older huggingface_hub releases use httpx or requests
        try:
            import httpx
        except ImportError:
            httpx = None
    if httpx is not None and isinstance(e, httpx.HTTPError):
        return DownloadError(f"{where}: network error talking to {ep} ({_first_line(e)}); run the same pull again "
                             "to resume", field="repo_id")
    if isinstance(e, ValueError) and type(e).__name__ == "HFValidationError":
        return InvalidInputError(f"{where}: not a valid repository id ({_first_line(e)})", field="repo_id")
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def resolve_snapshot(repo_id: str, revision: str | None = None) -> Snapshot:
    """The commit that `revision` (default: the main branch) points to, and its files."""
    from huggingface_hub.hf_api import RepoFile  # the top-level name came with huggingface_hub 1.x

    api = _api()
    try:
        info = api.model_info(repo_id, revision=revision)
        commit = info.sha
        if not commit:
            raise DownloadError(f"{repo_id}: {endpoint()} did not say which commit '{revision or 'main'}' is",
                                field="revision")
        files = {}
        for f in api.list_repo_tree(repo_id, revision=commit, recursive=True):
            if isinstance(f, RepoFile):
                files[f.path] = RemoteFile(f.path, int(f.size), f.blob_id, f.lfs.sha256 if f.lfs else None)
    except LlmosError:
        raise
    except Exception as e:
        err = _translate(e, repo_id, revision)
        if err is None:
            raise
        raise err from e
    return Snapshot(repo_id, revision, commit, endpoint(), files)


def _digests(path: Path) -> tuple[str, str, int]:
    """(sha256, git blob sha1, size) of a file, in one pass."""
    size = path.stat().st_size
    sha = hashlib.sha256()
    git = hashlib.sha1(b"blob %d\0" % size)
    hash_file(path, sha, git)
    return sha.hexdigest(), git.hexdigest(), size


def _forget(local_dir: Path, rel: str) -> None:
    """Deletes a downloaded file and huggingface_hub's record of it, so it is fetched again."""
    for p in (local_dir / rel, local_dir / ".cache" / "huggingface" / "download" / f"{rel}.metadata"):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def fetch(snap: Snapshot, paths: list[str], local_dir: str | os.PathLike, *, progress: bool = True) -> dict[str, str]:
    """Downloads `paths` of the snapshot's commit into `local_dir` and checks each file against
    the Hub's checksum (sha256 for LFS files, the git blob id otherwise). Returns their sha256.
    A file that fails the check is deleted (the next fetch downloads it again) and raises
    IntegrityError."""
    from huggingface_hub import snapshot_download

    if not paths:
        return {}
    missing = [p for p in paths if p not in snap.files]
    if missing:
        raise DownloadError(f"{snap.repo_id}@{snap.commit[:12]}: no file {missing[0]}", file=missing[0])
    local_dir = Path(local_dir)
    kwargs = {}
    if not progress:
        kwargs["tqdm_class"] = _silent_tqdm()
    try:
        snapshot_download(
            snap.repo_id,
            revision=snap.commit,  # a commit id: no second look-up, and every file from the same commit
            local_dir=str(local_dir),
            cache_dir=os.environ.get("HF_HUB_CACHE") or None,
            allow_patterns=[glob.escape(p) for p in paths],
            endpoint=snap.endpoint,
            library_name="llmos",
            **kwargs,
        )
    except LlmosError:
        raise
    except Exception as e:
        err = _translate(e, snap.repo_id, snap.revision)
        if err is None:
            if isinstance(e, OSError) and "Consistency check failed" in str(e):
                err = DownloadError(f"{snap.repo_id}: {_first_line(e)} Run the same pull again to resume.",
                                    field="repo_id")
            else:
                raise
        raise err from e
    out = {}
    for rel in paths:
        remote = snap.files[rel]
        p = local_dir / rel
        if not p.is_file():
            raise DownloadError(f"{snap.repo_id}: {rel} was not downloaded; run the same pull again", file=rel)
        sha, git, size = _digests(p)
        ok = size == remote.size and (sha == remote.sha256 if remote.sha256 else git == remote.blob_id)
        if not ok:
            _forget(local_dir, rel)
            expected = f"sha256 {remote.sha256}" if remote.sha256 else f"git blob {remote.blob_id}"
            got = f"sha256 {sha}" if remote.sha256 else f"git blob {git}"
            raise IntegrityError(
                f"{snap.repo_id}@{snap.commit[:12]}: {rel} arrived corrupt ({size} bytes, {got}; the Hub lists "
                f"{remote.size} bytes, {expected}); it was deleted, run the same pull again", file=rel)
        out[rel] = sha
    return out


def _silent_tqdm():
    from tqdm.auto import tqdm

    class Silent(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Silent
