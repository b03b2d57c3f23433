"""Downloading model files from the Hugging Face Hub, with a deadline on every step.

`resolve_snapshot` pins a revision to a commit and lists its files with the Hub's checksums;
`fetch` downloads chosen files of that commit into a folder, resuming with Range requests, and
checks every byte against those checksums. Files completed in the folder are kept (and a
partial file under .incomplete/, named by its checksum), so a pull that stopped fetches only
what is missing when run again.

The server is a stranger: every request has a timeout, a Retry-After longer than the limit is
refused rather than slept on, the file listing is followed for a bounded number of pages, a
transfer slower than the minimum rate is abandoned, and every answer (JSON, file names, sizes,
hashes) is checked before use; each failure is a DownloadError saying which bound or field
(the bounds are llmos.limits' hub_* fields). The HTTP is the standard library's: huggingface_hub
offers no way to set these bounds that holds across its versions (requests before 1.0, httpx
after, and Retry-After honoured without a cap in 1.x), so it is used only for the endpoint, the
login token and the offline switch. HF_ENDPOINT is read at call time, not at import time.
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import json
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from llmos import limits
from llmos.errors import DownloadError, IntegrityError, InvalidInputError
from llmos.io.files import fsync_dir, hash_file

_CHUNK = 1 << 16
_DEFAULT_ENDPOINT = "https://huggingface.co"
_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_LINK_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')
_INCOMPLETE = ".incomplete"
_RETRIED = (429, 500, 502, 503, 504)


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
    value = os.environ.get("HF_ENDPOINT")
    if not value:
        try:
            from huggingface_hub import constants

            value = constants.ENDPOINT
        except ImportError:
            value = _DEFAULT_ENDPOINT
    return value.rstrip("/")


def _offline() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except (ImportError, AttributeError):
        return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _token() -> str | None:
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"]
    try:
        from huggingface_hub import get_token
    except ImportError:
        return None
    try:
        return get_token()
    except Exception:  # a token file that cannot be read: go on without a token
        return None


# ---- one request, bounded ------------------------------------------------------------------------


class _Fail(Exception):
    """A failure worth another try (timeout, dropped connection, 429/5xx)."""

    def __init__(self, text: str, wait: float | None = None):
        super().__init__(text)
        self.wait = wait


def _where(repo_id: str, revision: str | None) -> str:
    return repo_id + (f"@{revision}" if revision else "")


def _retry_after(headers, where: str) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        wait = float(value)
    else:
        try:
            wait = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    cap = limits.current().hub_max_retry_after_s
    if wait > cap:
        raise DownloadError(f"{where}: {endpoint()} asks to wait {wait:.0f} s before trying again (Retry-After), "
                            f"over the limit of {cap:g} s (llmos.limits.hub_max_retry_after_s); try later",
                            field="hub_max_retry_after_s")
    return max(0.0, wait)


def _http_error(e: urllib.error.HTTPError, where: str, revision: str | None, path: str | None) -> DownloadError:
    code = e.headers.get("X-Error-Code", "") if e.headers is not None else ""
    message = (e.headers.get("X-Error-Message", "") if e.headers is not None else "") or e.reason
    ep = endpoint()
    if code == "GatedRepo" or (e.code == 403 and "gated" in str(message).lower()):
        return DownloadError(f"{where}: the repository is gated on {ep}; accept its terms on the website and log "
                             "in (`hf auth login` or HF_TOKEN)", field="repo_id")
    if code == "RevisionNotFound":
        return DownloadError(f"{where}: the repository has no revision '{revision}' (a branch, tag or commit)",
                             field="revision")
    if code == "EntryNotFound" or (path is not None and e.code == 404 and code != "RepoNotFound"):
        return DownloadError(f"{where}: {path} is listed by {ep} but could not be downloaded (HTTP {e.code}); run "
                             "the same pull again to resume", file=path, field="repo_id")
    if code == "RepoNotFound" or e.code in (401, 404):
        return DownloadError(f"{where}: no such repository on {ep} (or it is private: log in with `hf auth login` "
                             "or set HF_TOKEN)", field="repo_id")
    return DownloadError(f"{where}: {ep} answered with an error (HTTP {e.code}: {_first_line(message)}); run the "
                         "same pull again to resume", field="repo_id")


def _first_line(text) -> str:
    lines = str(text).strip().splitlines()
    return lines[0][:200] if lines else ""


class _NoAuthOnRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects to another host (the Hub's file CDN) go without the token."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(newurl).netloc != urllib.parse.urlsplit(req.full_url).netloc:
            new.remove_header("Authorization")
        return new


_OPENER = urllib.request.build_opener(_NoAuthOnRedirect)


def _open(url: str, headers: dict, where: str, revision: str | None, path: str | None = None):
    """The response to GET `url`, after at most hub_max_retries tries; each try waits at most
    hub_timeout_s for the connection and the headers."""
    lim = limits.current()
    from llmos.version import __version__

    req = urllib.request.Request(url, headers={"User-Agent": f"llmos/{__version__}", **headers})
    token = _token()
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    last = ""
    for attempt in range(int(lim.hub_max_retries)):
        wait = None
        try:
            return _OPENER.open(req, timeout=lim.hub_timeout_s)
        except urllib.error.HTTPError as e:
            with e:
                if e.code not in _RETRIED:
                    raise _http_error(e, where, revision, path) from None
                wait = _retry_after(e.headers, where)
                last = f"HTTP {e.code}"
        except (socket.timeout, TimeoutError):
            last = f"no answer within {lim.hub_timeout_s:g} s (llmos.limits.hub_timeout_s)"
        except urllib.error.URLError as e:
            if isinstance(e.reason, (socket.timeout, TimeoutError)):
                last = f"no answer within {lim.hub_timeout_s:g} s (llmos.limits.hub_timeout_s)"
            else:
                last = f"cannot reach it: {e.reason}"
        except (ConnectionError, http.client.HTTPException) as e:
            last = f"network error: {e!r}"
        if attempt + 1 < lim.hub_max_retries:
            time.sleep(wait if wait is not None else min(2.0 ** attempt * 0.5, lim.hub_max_retry_after_s))
    raise DownloadError(f"{where}: {endpoint()} failed {int(lim.hub_max_retries)} time(s), last: {last}; check the "
                        "network or HF_ENDPOINT, then run the same pull again to resume", field="repo_id")


class _Rate:
    """Refuses a transfer that averages under hub_min_rate_bytes_s over each hub_rate_window_s."""

    def __init__(self, what: str):
        lim = limits.current()
        self.what, self.window, self.min_rate = what, lim.hub_rate_window_s, lim.hub_min_rate_bytes_s
        self.start, self.bytes = time.monotonic(), 0

    def add(self, n: int) -> None:
        self.bytes += n
        elapsed = time.monotonic() - self.start
        if elapsed >= self.window:
            if self.bytes / elapsed < self.min_rate:
                raise DownloadError(
                    f"{self.what}: {endpoint()} sent {self.bytes} bytes in {elapsed:.1f} s, slower than the minimum of "
                    f"{self.min_rate:g} bytes/s (llmos.limits.hub_min_rate_bytes_s); run the same pull again to "
                    "resume", field="hub_min_rate_bytes_s")
            self.start, self.bytes = time.monotonic(), 0


def _read_json(url: str, where: str, revision: str | None, what: str):
    """(parsed JSON, response headers) of GET `url`, at most hub_max_json_bytes long."""
    lim = limits.current()
    with _open(url, {"Accept": "application/json"}, where, revision) as resp:
        rate = _Rate(f"{where}: {what}")
        body = bytearray()
        try:
            while True:
                chunk = resp.read1(_CHUNK)
                if not chunk:
                    break
                body += chunk
                if len(body) > lim.hub_max_json_bytes:
                    raise DownloadError(f"{where}: {what} from {endpoint()} is over {lim.hub_max_json_bytes} bytes "
                                        "(llmos.limits.hub_max_json_bytes)", field="hub_max_json_bytes")
                rate.add(len(chunk))
        except (socket.timeout, TimeoutError, ConnectionError, http.client.HTTPException) as e:
            raise DownloadError(f"{where}: {what} from {endpoint()} stopped arriving ({e}); run the same pull again",
                                field="repo_id") from None
        headers = resp.headers
    try:
        return json.loads(bytes(body).decode("utf-8")), headers
    except (UnicodeDecodeError, ValueError):
        raise DownloadError(f"{where}: {what} from {endpoint()} is not JSON (starts {bytes(body[:60])!r})",
                            field=what) from None


# ---- the snapshot: a commit and its files ---------------------------------------------------------


def _safe_path(p, where: str) -> str:
    """A file name from the listing, if it is a plain relative path inside the repository."""
    ok = (isinstance(p, str) and 0 < len(p) <= 1000 and "\\" not in p and not p.startswith("/")
          and not re.search(r"[\x00-\x1f]", p) and all(part not in ("", ".", "..") for part in p.split("/")))
    if not ok:
        raise DownloadError(f"{where}: the file listing names {str(p)[:200]!r}, which is not a relative path inside "
                            "the repository; refusing to download from it", field="path")
    return p


def _remote_file(item: dict, where: str) -> RemoteFile:
    path = _safe_path(item.get("path"), where)
    size, oid, lfs = item.get("size"), item.get("oid"), item.get("lfs")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise DownloadError(f"{where}: the file listing gives {path} the size {size!r}; expected a byte count",
                            file=path, field="size")
    if not isinstance(oid, str) or not _HEX40.fullmatch(oid):
        raise DownloadError(f"{where}: the file listing gives {path} the object id {str(oid)[:80]!r}; expected 40 "
                            "hex digits", file=path, field="oid")
    sha = None
    if lfs is not None:
        sha = lfs.get("oid") if isinstance(lfs, dict) else None
        if not isinstance(sha, str) or not _HEX64.fullmatch(sha):
            raise DownloadError(f"{where}: the file listing gives {path} the LFS sha256 {str(sha)[:80]!r}; expected 64 "
                                "hex digits", file=path, field="lfs.oid")
    return RemoteFile(path, size, oid, sha)


def _list_files(repo_id: str, commit: str, where: str, revision: str | None) -> dict[str, RemoteFile]:
    lim = limits.current()
    base = endpoint()
    url = f"{base}/api/models/{repo_id}/tree/{commit}?recursive=true"
    files: dict[str, RemoteFile] = {}
    for page in range(int(lim.hub_max_pages)):
        items, headers = _read_json(url, where, revision, "tree")
        if not isinstance(items, list):
            raise DownloadError(f"{where}: the file listing from {base} is not a JSON list", field="tree")
        for item in items:
            if not isinstance(item, dict):
                raise DownloadError(f"{where}: the file listing from {base} holds {str(item)[:80]!r}, not an object",
                                    field="tree")
            if item.get("type") == "file":
                f = _remote_file(item, where)
                files[f.path] = f
        if len(files) > lim.hub_max_files:
            raise DownloadError(f"{where}: the repository lists over {lim.hub_max_files} files "
                                "(llmos.limits.hub_max_files)", field="hub_max_files")
        m = _LINK_NEXT.search(headers.get("Link", "") or "")
        if not m:
            return files
        url = urllib.parse.urljoin(url, m.group(1))
        if urllib.parse.urlsplit(url)[:2] != urllib.parse.urlsplit(base)[:2]:
            raise DownloadError(f"{where}: the file listing's next page is on another server ({url[:200]})",
                                field="tree")
    raise DownloadError(f"{where}: the file listing from {base} goes on past {int(lim.hub_max_pages)} pages "
                        "(llmos.limits.hub_max_pages)", field="hub_max_pages")


def resolve_snapshot(repo_id: str, revision: str | None = None) -> Snapshot:
    """The commit that `revision` (default: the main branch) points to, and its files."""
    where = _where(repo_id, revision)
    if _offline():
        raise DownloadError(f"{where}: HF_HUB_OFFLINE is set, so nothing can be downloaded; unset it to pull",
                            field="repo_id")
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", repo_id or "") or ".." in repo_id:
        raise InvalidInputError(f"{repo_id!r}: not a valid repository id", field="repo_id")
    rev = urllib.parse.quote(revision or "main", safe="")
    info, _ = _read_json(f"{endpoint()}/api/models/{repo_id}/revision/{rev}", where, revision, "model info")
    commit = info.get("sha") if isinstance(info, dict) else None
    if not isinstance(commit, str) or not _HEX40.fullmatch(commit):
        raise DownloadError(f"{repo_id}: {endpoint()} did not say which commit '{revision or 'main'}' is (field "
                            f"'sha': {str(commit)[:80]!r})", field="revision")
    return Snapshot(repo_id, revision, commit, endpoint(), _list_files(repo_id, commit, where, revision))


# ---- files ---------------------------------------------------------------------------------------


def _digests(path: Path) -> tuple[str, str, int]:
    """(sha256, git blob sha1, size) of a file, in one pass."""
    size = path.stat().st_size
    sha = hashlib.sha256()
    git = hashlib.sha1(b"blob %d\0" % size)
    hash_file(path, sha, git)
    return sha.hexdigest(), git.hexdigest(), size


def _matches(remote: RemoteFile, sha: str, git: str, size: int) -> bool:
    return size == remote.size and (sha == remote.sha256 if remote.sha256 else git == remote.blob_id)


def _write_chunk(f, data: bytes) -> None:
    f.write(data)


def _progress(total: int, desc: str, enabled: bool):
    """A byte bar, or None when off (a disabled bar of tqdm 4.42 cannot even be reset)."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=0, unit="B", unit_scale=True, desc=desc, leave=False)


def _download(snap: Snapshot, remote: RemoteFile, part: Path, progress: bool) -> None:
    """Completes `part` from the server, resuming where it stops; bounded by the hub_* limits."""
    lim = limits.current()
    where = _where(snap.repo_id, snap.revision)
    url = f"{snap.endpoint}/{snap.repo_id}/resolve/{snap.commit}/{urllib.parse.quote(remote.path)}"
    part.parent.mkdir(parents=True, exist_ok=True)
    bar = _progress(remote.size, remote.path, progress)
    try:
        for attempt in range(int(lim.hub_max_retries)):
            have = part.stat().st_size if part.exists() else 0
            if have > remote.size:
                part.unlink()
                have = 0
            if have == remote.size:
                return
            headers = {"Accept-Encoding": "identity"}
            if have:
                headers["Range"] = f"bytes={have}-"
            resp = _open(url, headers, where, snap.revision, path=remote.path)
            with resp:
                if have and resp.status != 206:  # the server ignored the range: start over
                    have = 0
                with open(part, "r+b" if have else "wb") as f:
                    f.seek(have)
                    f.truncate()
                    rate = _Rate(f"{where}: {remote.path}")
                    if bar is not None:
                        bar.reset(total=remote.size)
                        bar.update(have)
                    try:
                        while have < remote.size:
                            chunk = resp.read1(min(_CHUNK, remote.size - have))
                            if not chunk:
                                break
                            _write_chunk(f, chunk)
                            have += len(chunk)
                            rate.add(len(chunk))
                            if bar is not None:
                                bar.update(len(chunk))
                    except (socket.timeout, TimeoutError, ConnectionError, http.client.HTTPException) as e:
                        if attempt + 1 == lim.hub_max_retries:
                            raise DownloadError(f"{where}: {remote.path} stopped arriving ({e or 'timed out'}); run "
                                                "the same pull again to resume", file=remote.path) from None
                    f.flush()
                    os.fsync(f.fileno())
            if have >= remote.size:
                return
        raise DownloadError(f"{where}: {remote.path} was cut off {int(lim.hub_max_retries)} time(s); run the same "
                            "pull again to resume", file=remote.path, field="hub_max_retries")
    finally:
        if bar is not None:
            bar.close()


def fetch(snap: Snapshot, paths: list[str], local_dir: str | os.PathLike, *, progress: bool = True) -> dict[str, str]:
    """Downloads `paths` of the snapshot's commit into `local_dir` and checks each file against
    the Hub's checksum (sha256 for LFS files, the git blob id otherwise). Returns their sha256.
    A file that fails the check is deleted (the next fetch downloads it again) and raises
    IntegrityError."""
    missing = [p for p in paths if p not in snap.files]
    if missing:
        raise DownloadError(f"{snap.repo_id}@{snap.commit[:12]}: no file {missing[0]}", file=missing[0])
    local_dir = Path(local_dir)
    out = {}
    for rel in paths:
        remote = snap.files[rel]
        target = local_dir / _safe_path(rel, snap.repo_id)
        if target.is_file():
            sha, git, size = _digests(target)
            if _matches(remote, sha, git, size):
                out[rel] = sha
                continue
            target.unlink()
        part = local_dir / _INCOMPLETE / (remote.sha256 or remote.blob_id)
        _download(snap, remote, part, progress)
        sha, git, size = _digests(part)
        if not _matches(remote, sha, git, size):
            part.unlink()
            expected = f"sha256 {remote.sha256}" if remote.sha256 else f"git blob {remote.blob_id}"
            got = f"sha256 {sha}" if remote.sha256 else f"git blob {git}"
            raise IntegrityError(
                f"{snap.repo_id}@{snap.commit[:12]}: {rel} arrived corrupt ({size} bytes, {got}; the Hub lists "
                f"{remote.size} bytes, {expected}); it was deleted, run the same pull again", file=rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, target)
        fsync_dir(target.parent)
        out[rel] = sha
    return out
