"""`llmos pull` against a local server that speaks the Hugging Face Hub's HTTP API.

The server (127.0.0.1, started per test) implements what huggingface_hub 2.x calls for a
snapshot download: ``GET /api/models/{repo}/revision/{rev}`` (model info: the commit),
``GET /api/models/{repo}/tree/{rev}`` (file list with git blob ids and LFS sha256), and
``HEAD``/``GET /{repo}/resolve/{rev}/{file}`` with ``X-Repo-Commit``, ``ETag``
(``X-Linked-Etag``/``X-Linked-Size`` for LFS files), ``Content-Length`` and ``Range``
support. It can drop a connection mid-file, serve corrupted bytes, or miss a file, and it
records every request so tests can see what was (re)downloaded. As a hostile server it can
also never answer, ask for a long Retry-After, paginate forever, trickle a file out, or list
files with unsafe names, bad sizes or a body that is not JSON.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest

REPO = "test-org/tiny-llama"
COMMIT = hashlib.sha1(b"tiny-llama commit 1").hexdigest()


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.repos = repos
        self.refs = {"main": COMMIT, "v1": COMMIT}
        self.drop_once: set[str] = set()      # files whose first full GET stops halfway
        self.corrupt: set[str] = set()        # files served with one byte flipped
        self.missing: set[str] = set()        # files listed but answering 404
        self.requests: list[tuple[str, str, str | None]] = []
        # Hostile behaviours, each bounded by `stopped` so the server always shuts down.
        self.hang: set[str] = set()           # "revision" / "tree" / "resolve": never answer
        self.retry_after: str | None = None   # model info answers 429 with this Retry-After
        self.endless_pages = False            # every listing page links to a next one
        self.trickle: dict[str, float] = {}   # file -> seconds between single bytes
        self.tree_items: list | None = None   # extra entries in the listing
        self.tree_body: bytes | None = None   # the listing's raw body instead
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_HEAD(self):
                hub._handle(self, head=True)

            def do_GET(self):
                hub._handle(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def gets(self, file: str) -> list[str | None]:
        """The Range header of every GET of `file` (None: a full download)."""
        return [r for m, p, r in self.requests if m == "GET" and p.endswith(f"/resolve/{COMMIT}/{file}")]

    # ---- request handling -------------------------------------------------------------

    @staticmethod
    def _is_lfs(path: str) -> bool:
        return path.endswith(".safetensors")

    def _send(self, h, status, body=b"", headers=None, head=False):
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head and body:
            h.wfile.write(body)

    def _error(self, h, status, code, message, head):
        body = json.dumps({"error": message}).encode()
        self._send(h, status, body, {"Content-Type": "application/json", "X-Error-Code": code,
                                     "X-Error-Message": message}, head)

    def _json(self, h, obj, head):
        self._send(h, 200, json.dumps(obj).encode(), {"Content-Type": "application/json"}, head)

    def _handle(self, h, head):
        url = urlsplit(h.path)
        path = unquote(url.path)
        with self._lock:
            self.requests.append(("HEAD" if head else "GET", path, h.headers.get("Range")))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) == 4:  # model info without a revision: main
            parts += ["revision", "main"]
        kind = parts[4] if parts[:2] == ["api", "models"] and len(parts) >= 6 else (
            "resolve" if len(parts) >= 5 and parts[2] == "resolve" else None)
        if kind in self.hang:
            self.stopped.wait(30)  # a server that never answers (until the test ends)
            return
        if kind == "revision" and self.retry_after is not None:
            return self._send(h, 429, b"slow down", {"Retry-After": self.retry_after}, head)
        if kind == "tree" and (self.tree_body is not None or self.endless_pages):
            page = int(url.query.rsplit("page=", 1)[-1]) if "page=" in url.query else 0
            body = self.tree_body if self.tree_body is not None else b"[]"
            headers = {"Content-Type": "application/json"}
            if self.endless_pages:
                headers["Link"] = f'<{self.url}{url.path}?recursive=true&page={page + 1}>; rel="next"'
            return self._send(h, 200, body, headers, head)
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
            repo, kind, rev = "/".join(parts[2:4]), parts[4], parts[5]
            files = self.repos.get(repo)
            if files is None:
                return self._error(h, 404, "RepoNotFound", f"Repository {repo} not found", head)
            commit = self.refs.get(rev, rev if rev == COMMIT else None)
            if commit is None:
                return self._error(h, 404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
            if kind == "revision":
                return self._json(h, {"id": repo, "modelId": repo, "sha": commit, "private": False,
                                      "siblings": [{"rfilename": p} for p in sorted(files)]}, head)
            tree = []
            for p in sorted(files):
                data = files[p]
                item = {"type": "file", "path": p, "size": len(data), "oid": _git_oid(data)}
                if self._is_lfs(p):
                    item["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                tree.append(item)
            return self._json(h, tree + list(self.tree_items or []), head)
        if len(parts) >= 5 and parts[2] == "resolve":
            repo, rev, file = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            files = self.repos.get(repo)
            if files is None:
                return self._error(h, 404, "RepoNotFound", f"Repository {repo} not found", head)
            commit = self.refs.get(rev, rev if rev == COMMIT else None)
            if commit is None:
                return self._error(h, 404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
            if file not in files or file in self.missing:
                return self._error(h, 404, "EntryNotFound", f"{file} does not exist", head)
            return self._serve_file(h, file, files[file], commit, head)
        return self._error(h, 404, "NotFound", f"no route for {path}", head)

    def _serve_file(self, h, file, data, commit, head):
        total = len(data)
        headers = {"X-Repo-Commit": commit, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if self._is_lfs(file):
            sha = hashlib.sha256(data).hexdigest()
            headers.update({"ETag": f'"{sha}"', "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(total)})
        else:
            headers["ETag"] = f'"{_git_oid(data)}"'
        if file in self.corrupt:
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        start = 0
        rng = h.headers.get("Range")
        if rng and not head:
            start = int(rng.split("=", 1)[1].split("-", 1)[0])
            headers["Content-Range"] = f"bytes {start}-{total - 1}/{total}"
        body = data[start:]
        if head:
            h.send_response(200)
            for k, v in headers.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(total))
            h.end_headers()
            return
        if file in self.trickle:
            h.send_response(200)
            for k, v in headers.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(total))
            h.end_headers()
            for i in range(total):
                if self.stopped.wait(self.trickle[file]):
                    break
                try:
                    h.wfile.write(body[i:i + 1])
                    h.wfile.flush()
                except OSError:
                    break
            h.close_connection = True
            return
        if file in self.drop_once and not rng:
            self.drop_once.discard(file)
            h.send_response(200)
            for k, v in headers.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(total))
            h.end_headers()
            h.wfile.write(body[: total // 2])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        self._send(h, 206 if rng else 200, body, headers)


def _repo_files(folder: Path) -> dict[str, bytes]:
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    files["README.md"] = b"# tiny-llama\nA random-weight test model.\n"
    files["pytorch_model.bin"] = b"pickle weights must never be downloaded"
    files["onnx/model.onnx"] = b"not wanted either"
    return files


@pytest.fixture
def hub_env(monkeypatch, tmp_path):
    """Points huggingface_hub and the registry at temp folders; the conftest sets
    HF_HUB_OFFLINE=1 for the suite, which pull must override here."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_TOKEN", "hf_test_token_not_real")
    monkeypatch.setenv("LLMOS_HOME", str(tmp_path / "llmos-home"))
    return tmp_path / "llmos-home"


@pytest.fixture
def fake_hub(checkpoint, hub_env, monkeypatch):
    with FakeHub({REPO: _repo_files(checkpoint("llama"))}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        yield hub


@pytest.fixture
def registry(llmos):
    from llmos import registry

    return registry


def _no_half_entries(home: Path) -> None:
    models = home / "models"
    assert not models.exists() or not any(models.rglob("*")), sorted(models.rglob("*"))
    tmp = home / "tmp"
    assert not tmp.exists() or not any(tmp.iterdir()), sorted(tmp.iterdir())


def test_pull_matches_source_logits(fake_hub, registry, checkpoint, load_llmos, llmos, hub_env):
    source = checkpoint("llama")
    entry = registry.pull(REPO, progress=False)
    assert entry.ref == "tiny-llama:latest"
    assert entry.source["commit"] == COMMIT and entry.source["repo_id"] == REPO
    assert entry.source["endpoint"] == fake_hub.url
    assert entry.lineage[-1]["op"] == "pull" and entry.lineage[-1]["from"] == f"hf://{REPO}@{COMMIT}"
    files = set(entry.files)
    assert "README.md" in files and "model.safetensors" in files and "tokenizer.json" in files
    assert "pytorch_model.bin" not in files and not any(f.startswith("onnx/") for f in files)
    for f in files:
        if (source / f).is_file():
            assert entry.files[f]["sha256"] == hashlib.sha256((source / f).read_bytes()).hexdigest(), f
    assert not fake_hub.gets("pytorch_model.bin")

    ids = list(range(5, 40))
    pulled = llmos.load(registry.resolve("tiny-llama"), threads=1)
    np.testing.assert_array_equal(pulled.logits(ids), load_llmos(source).logits(ids))
    assert registry.verify("tiny-llama").ok
    assert not (hub_env / "downloads" / "test-org--tiny-llama").exists()

    # Pulling the same commit again downloads nothing.
    before = len([r for r in fake_hub.requests if r[0] == "GET" and "/resolve/" in r[1]])
    assert registry.pull(REPO, progress=False).digest == entry.digest
    assert len([r for r in fake_hub.requests if r[0] == "GET" and "/resolve/" in r[1]]) == before


def test_pull_revision_and_name(fake_hub, registry):
    entry = registry.pull(f"{REPO}@v1", progress=False)
    assert entry.ref == "tiny-llama:v1" and entry.source["revision"] == "v1"
    named = registry.pull(REPO, revision="main", name="mine:dev", progress=False)
    assert named.ref == "mine:dev" and named.source["commit"] == COMMIT
    assert {e.ref for e in registry.list_models()} == {"tiny-llama:v1", "mine:dev"}


def test_dropped_connection_resumes_with_range(fake_hub, registry, monkeypatch):
    from huggingface_hub import constants

    # huggingface_hub counts what it received in chunks of DOWNLOAD_CHUNK_SIZE (10 MB); the
    # test file is smaller than that, so use small chunks to see a resume inside the file.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 16 * 1024)
    fake_hub.drop_once.add("model.safetensors")
    entry = registry.pull(REPO, progress=False)
    ranges = fake_hub.gets("model.safetensors")
    assert ranges[0] is None and len(ranges) == 2, ranges
    size = len(fake_hub.repos[REPO]["model.safetensors"])
    start = int(ranges[1].removeprefix("bytes=").removesuffix("-"))
    assert 0 < start <= size // 2  # the retry asked only for what was missing
    assert registry.verify(entry.ref).ok


def test_corrupt_download_is_rejected_then_refetched(fake_hub, registry, hub_env, llmos):
    fake_hub.corrupt.add("model.safetensors")
    with pytest.raises(llmos.errors.IntegrityError, match="model.safetensors arrived corrupt"):
        registry.pull(REPO, progress=False)
    _no_half_entries(hub_env)
    staging = hub_env / "downloads" / "test-org--tiny-llama"
    assert (staging / "tokenizer.json").is_file()  # good files are kept for the next pull
    assert not (staging / "model.safetensors").exists()  # the bad one is not

    fake_hub.corrupt.clear()
    n_tokenizer = len(fake_hub.gets("tokenizer.json"))
    entry = registry.pull(REPO, progress=False)
    assert len(fake_hub.gets("tokenizer.json")) == n_tokenizer  # resumed: only what was missing
    assert len(fake_hub.gets("model.safetensors")) == 2
    assert registry.verify(entry.ref).ok


def test_failed_pull_leaves_no_entry_and_resumes(checkpoint, hub_env, monkeypatch, registry, llmos):
    sharded = checkpoint("llama", sharded=True)
    files = _repo_files(sharded)
    shards = sorted(f for f in files if f.endswith(".safetensors"))
    files["consolidated.safetensors"] = b"duplicate weights that the index does not name"
    with FakeHub({REPO: files}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        hub.missing.add(shards[1])
        with pytest.raises(llmos.errors.DownloadError, match="run the same pull again"):
            registry.pull(REPO, progress=False)
        _no_half_entries(hub_env)

        hub.missing.clear()
        entry = registry.pull(REPO, progress=False)
        assert len(hub.gets(shards[0])) == 1  # completed before the failure: kept
        assert sorted(f for f in entry.files if f.endswith(".safetensors")) == shards
        assert not hub.gets("consolidated.safetensors")
    ids = [3, 1, 4, 1, 5, 9, 2, 6]
    a = llmos.load(entry.path, threads=1).logits(ids)
    b = llmos.load(str(sharded), threads=1).logits(ids)
    np.testing.assert_array_equal(a, b)


def test_verify_reports_corruption_after_pull(fake_hub, registry):
    entry = registry.pull(REPO, progress=False)
    weights = Path(entry.path) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01
    weights.write_bytes(bytes(data))
    report = registry.verify("tiny-llama")
    assert not report.ok
    assert any("model.safetensors" in p and "sha256" in p for p in report.problems), report.problems


def test_unknown_repo_and_revision(fake_hub, registry, llmos, hub_env):
    with pytest.raises(llmos.errors.DownloadError, match="no such repository"):
        registry.pull("test-org/nope", progress=False)
    with pytest.raises(llmos.errors.DownloadError, match="no revision 'v9'"):
        registry.pull(f"{REPO}@v9", progress=False)
    with pytest.raises(llmos.errors.InvalidInputError):
        registry.pull("not a repo!", progress=False)
    _no_half_entries(hub_env)


def test_offline_mode_is_a_clear_error(fake_hub, registry, llmos, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(llmos.errors.DownloadError, match="HF_HUB_OFFLINE"):
        registry.pull(REPO, progress=False)


def test_disk_full_during_download(fake_hub, registry, llmos, hub_env, monkeypatch):
    import errno

    from llmos.registry import hub

    def write_then_disk_full(f, data):
        f.write(data[:100])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hub, "_write_chunk", write_then_disk_full)
    with pytest.raises(llmos.errors.DiskFullError, match="no space left"):
        registry.pull(REPO, progress=False)
    _no_half_entries(hub_env)


def test_pull_verb(fake_hub, capsys, llmos):
    import argparse

    from llmos.cli.registry import add_registry_commands

    parser = argparse.ArgumentParser(prog="llmos")
    add_registry_commands(parser.add_subparsers(dest="command", required=True))
    for expected in (f"pulled {REPO}@{COMMIT[:12]} as tiny-llama:latest", "tiny-llama:latest is up to date"):
        args = parser.parse_args(["pull", REPO, "--quiet"])
        assert args.run(args) == 0
        assert expected in capsys.readouterr().out


def test_pull_verb_draws_its_bars_by_the_cli_rule(fake_hub, capsys, llmos, monkeypatch):
    """A byte bar per file on stderr with LLMOS_PROGRESS=1 (as on a terminal); none with
    LLMOS_PROGRESS=0, as for every other long verb (cli/progress.py)."""
    import argparse

    from llmos.cli.registry import add_registry_commands

    parser = argparse.ArgumentParser(prog="llmos")
    add_registry_commands(parser.add_subparsers(dest="command", required=True))
    monkeypatch.setenv("LLMOS_PROGRESS", "0")
    args = parser.parse_args(["pull", REPO])
    assert args.run(args) == 0
    out = capsys.readouterr()
    assert "pulled " in out.out and out.err == ""
    monkeypatch.setenv("LLMOS_PROGRESS", "1")
    args = parser.parse_args(["pull", REPO, "--name", "again"])
    assert args.run(args) == 0
    out = capsys.readouterr()
    frames = [f for f in out.err.replace("\r", "\n").split("\n") if f.startswith("model.safetensors:")]
    assert frames and "B/s" in frames[-1] + "".join(frames), out.err
    assert "model.safetensors:" not in out.out


# ---- a hostile hub: every wait is bounded, every bad answer is an llmos error ---------------------


@pytest.fixture
def small_limits(llmos, monkeypatch):
    """Hub limits small enough that each hostile case ends in about a second, and an alarm that
    fails the test instead of hanging the suite if a bound does not hold."""
    import signal

    from llmos import limits

    monkeypatch.setattr(limits, "LIMITS", limits.LIMITS)  # configure() below is undone after the test
    limits.configure(hub_timeout_s=0.5, hub_max_retries=2, hub_max_retry_after_s=5, hub_max_pages=4,
                     hub_min_rate_bytes_s=1000, hub_rate_window_s=0.6)

    def hung(*_):
        raise TimeoutError("llmos pull did not return within 20 s")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    yield limits
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _pull_fails(registry, llmos, match: str, hub_env, max_s: float = 5.0):
    t0 = time.monotonic()
    with pytest.raises(llmos.errors.DownloadError, match=match) as info:
        registry.pull(REPO, progress=False)
    assert time.monotonic() - t0 < max_s
    _no_half_entries(hub_env)
    return info.value


@pytest.mark.parametrize("kind", ["revision", "tree", "resolve"])
def test_a_server_that_never_answers_times_out(fake_hub, registry, llmos, hub_env, small_limits, kind):
    fake_hub.hang.add(kind)
    _pull_fails(registry, llmos, r"no answer within 0.5 s .*hub_timeout_s", hub_env)


def test_a_long_retry_after_is_refused_not_slept(fake_hub, registry, llmos, hub_env, small_limits):
    fake_hub.retry_after = "100000"
    e = _pull_fails(registry, llmos, r"wait 100000 s .*Retry-After.*hub_max_retry_after_s", hub_env, max_s=2)
    assert e.field == "hub_max_retry_after_s"
    fake_hub.retry_after = "0"  # a short one is honoured, then the tries run out
    _pull_fails(registry, llmos, r"failed 2 time\(s\), last: HTTP 429", hub_env, max_s=3)


def test_endless_pagination_stops_at_the_page_limit(fake_hub, registry, llmos, hub_env, small_limits):
    fake_hub.endless_pages = True
    _pull_fails(registry, llmos, r"past 4 pages .*hub_max_pages", hub_env)
    assert len([r for r in fake_hub.requests if "/tree/" in r[1]]) == 4


def test_a_trickle_is_abandoned_below_the_minimum_rate(fake_hub, registry, llmos, hub_env, small_limits):
    fake_hub.trickle["model.safetensors"] = 0.1  # 10 bytes/s; the limit is 1000
    e = _pull_fails(registry, llmos, r"model.safetensors: .* slower than the minimum of 1000 bytes/s", hub_env)
    assert e.field == "hub_min_rate_bytes_s"


@pytest.mark.parametrize("item, match, field", [
    ({"type": "file", "path": "..\\..\\x.safetensors", "size": 4, "oid": "0" * 40}, "not a relative path", "path"),
    ({"type": "file", "path": "../x.safetensors", "size": 4, "oid": "0" * 40}, "not a relative path", "path"),
    ({"type": "file", "path": "/etc/x.safetensors", "size": 4, "oid": "0" * 40}, "not a relative path", "path"),
    ({"type": "file", "path": "a.safetensors", "size": "abc", "oid": "0" * 40}, "size 'abc'", "size"),
    ({"type": "file", "path": "a.safetensors", "size": 4, "oid": "nothex"}, "object id", "oid"),
    ({"type": "file", "path": "a.safetensors", "size": 4, "oid": "0" * 40, "lfs": {"oid": 5}}, "LFS sha256",
     "lfs.oid"),
    ("just a string", "not an object", "tree"),
])
def test_bad_listings_are_download_errors(fake_hub, registry, llmos, hub_env, small_limits, item, match, field):
    fake_hub.tree_items = [item]
    e = _pull_fails(registry, llmos, match, hub_env)
    assert e.field == field
    assert not any(p.name == "x.safetensors" for p in hub_env.parent.rglob("*"))


@pytest.mark.parametrize("body", [b"<html>not json</html>", b'{"a": 1}', b"[1, 2"])
def test_a_listing_that_is_not_a_json_list(fake_hub, registry, llmos, hub_env, small_limits, body):
    fake_hub.tree_body = body
    _pull_fails(registry, llmos, "not JSON|not a JSON list", hub_env)


def test_pull_verb_against_a_hung_server_exits_with_the_error(fake_hub, hub_env, tmp_path):
    """`llmos pull` as a user runs it, with the limits set from the environment."""
    import os
    import subprocess
    import sys

    fake_hub.hang.add("tree")
    env = {**os.environ, "LLMOS_LIMIT_HUB_TIMEOUT_S": "0.5", "LLMOS_LIMIT_HUB_MAX_RETRIES": "1",
           "HF_HUB_OFFLINE": "0"}
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "llmos", "pull", REPO, "--quiet"], capture_output=True, text=True,
                       timeout=60, env=env)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "no answer within 0.5 s" in r.stderr and "Traceback" not in r.stderr
    assert time.monotonic() - t0 < 30
    _no_half_entries(hub_env)
