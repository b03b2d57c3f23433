"""`llmos serve --ray` on a Ray cluster that this file starts on loopback and stops (2 CPUs, a
token of its own): two replicas of the bundled model (1 thread and half a CPU each) answer the
official `openai` client, both of them; a replica killed in the middle of a load is replaced, and
every request of that load ends completed or rejected (429/503) — a request the proxy failed
because its replica died is retried by the client, and counted — none lost, none hanging (every
wait is bounded), none answered twice.

Without ray these tests skip, saying so; with LLMOS_REQUIRE_RAY=1 (set by .ci/run) they fail."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from child_env import child_env
from serve_server import BUNDLED, free_port

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, prometheus-client) is in the test extra")
openai = pytest.importorskip("openai", reason="the test extra installs the openai client")

try:
    import ray  # noqa: F401
except ImportError as e:
    if os.environ.get("LLMOS_REQUIRE_RAY") == "1":
        raise RuntimeError(f"ray is not importable ({e}); LLMOS_REQUIRE_RAY=1 says the Ray tests must run here") from e
    pytest.skip(f"ray is not importable ({e}): the Ray Serve tests need pip install \"llmos[ray]\"",
                allow_module_level=True)

START_TIMEOUT = 90.0  # cluster start, or deployment of two replicas, on a loaded 2-core machine
REQUEST_TIMEOUT = 60.0
HEADER = "x-llmos-replica"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head node on 127.0.0.1 with 2 CPUs; yields (address, env for its clients)."""
    temp = tmp_path_factory.mktemp("ray")
    port = free_port()
    env = child_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), LLMOS_PROGRESS="0",
                    RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    # --block: the cluster lives as long as this process; SIGTERM to it stops this cluster only
    # (`ray stop` would stop every cluster on the machine).
    head = subprocess.Popen(
        ["ray", "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2",
         "--include-dashboard", "false", "--disable-usage-stats", "--object-store-memory", str(100 * 2**20),
         "--temp-dir", str(temp)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    log = []
    reader = threading.Thread(target=lambda: log.extend(head.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not any("Ray runtime started" in line for line in log):
            assert head.poll() is None, "ray start failed:\n" + "".join(log)
            assert time.monotonic() < deadline, "ray start: not up in time:\n" + "".join(log)
            time.sleep(0.2)
        yield f"127.0.0.1:{port}", env
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(10)
        reader.join(10)
        head.stdout.close()


@pytest.fixture(scope="module")
def served(cluster):
    """`llmos serve default --ray --replicas 2` on the cluster; yields (base URL, address, env)."""
    address, env = cluster
    port = free_port()
    started = time.monotonic()
    server = subprocess.Popen(
        [sys.executable, "-m", "llmos", "serve", BUNDLED, "--ray", "--replicas", "2", "--threads", "1", "--num-cpus",
         "0.5", "--max-concurrency", "4", "--max-queue", "4", "--address", address, "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = []
    reader = threading.Thread(target=lambda: log.extend(server.stderr), daemon=True)
    reader.start()
    try:
        while not any("serving on Ray" in line for line in log):
            assert server.poll() is None, "llmos serve --ray exited:\n" + "".join(log)
            assert time.monotonic() - started < START_TIMEOUT, "llmos serve --ray: not ready in time:\n" + "".join(log)
            time.sleep(0.2)
        print(f"llmos serve --ray, 2 replicas: ready in {time.monotonic() - started:.1f} s", file=sys.stderr)
        yield f"http://127.0.0.1:{port}", address, env
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0, "".join(log)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
        reader.join(10)
        server.stderr.close()


def _client(base: str):
    return openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=REQUEST_TIMEOUT)


def _complete(client, prompt: str, max_tokens: int = 8):
    raw = client.completions.with_raw_response.create(model=BUNDLED, prompt=prompt, max_tokens=max_tokens)
    return raw.parse(), raw.headers[HEADER]


def _replica_killer(address: str, env: dict, replica: str) -> subprocess.Popen:
    """A process that finds the replica's actor by its name, as Ray Serve's fault-tolerance guide
    does, says "ready", and kills it when a line arrives on its stdin (connecting to Ray takes
    seconds on a loaded machine: done before the load starts)."""
    code = (
        "import sys, ray\n"
        f"ray.init(address={address!r}, log_to_driver=False)\n"
        f"names = [a for a in ray.util.list_named_actors(all_namespaces=True) if a['name'].endswith('#' + {replica!r})]\n"
        "assert len(names) == 1, names\n"
        "actor = ray.get_actor(names[0]['name'], namespace=names[0]['namespace'])\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        "ray.kill(actor, no_restart=True)\n"
        "print('killed', flush=True)\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _read_line(process: subprocess.Popen, timeout: float = START_TIMEOUT) -> str:
    """The process's next stdout line, or "" after `timeout` seconds (a hung process fails the test)."""
    lines = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return lines[0].strip() if lines else ""


def test_both_replicas_answer_the_openai_client(served):
    base, _, _ = served
    client = _client(base)
    seen = set()
    deadline = time.monotonic() + START_TIMEOUT
    while len(seen) < 2:
        assert time.monotonic() < deadline, f"only replica(s) {seen} answered"
        result, replica = _complete(client, "It is a truth universally acknowledged")
        assert result.choices[0].text and result.usage.completion_tokens >= 1
        seen.add(replica)
    # The server's own validation and limits, unchanged: a bad request is a 400 in the API's shape.
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="no-such-model", prompt="x", max_tokens=4)
    assert e.value.status_code == 400 and "not served here" in str(e.value)


def test_a_killed_replica_loses_no_request_and_is_replaced(served):
    base, address, env = served
    client = _client(base)
    _, victim = _complete(client, "Warm up")
    killer_process = _replica_killer(address, env, victim)
    try:
        assert _read_line(killer_process) == "ready", "the killer found no replica to kill"
        _load_and_kill(client, killer_process, victim)
    finally:
        if killer_process.poll() is None:
            killer_process.kill()
        killer_process.communicate(timeout=REQUEST_TIMEOUT)
    # Replaced: two live replicas answer again, neither of them the killed one.
    seen = set()
    deadline = time.monotonic() + START_TIMEOUT
    while len(seen - {victim}) < 2:
        assert time.monotonic() < deadline, f"replicas after the kill: {seen}"
        try:
            seen.add(httpx.get(base + "/health", timeout=REQUEST_TIMEOUT).headers.get(HEADER))
        except httpx.TransportError:
            pass
        time.sleep(0.1)


def _load_and_kill(client, killer_process, victim: str) -> None:
    # Six clients send request after request (each runs a while: 24 tokens) from before the kill
    # until each has sent 3 after it, so requests are in flight on the victim when it dies.
    outcomes: dict[int, list[str]] = {}
    completion_ids = []
    killed, killing = threading.Event(), threading.Event()
    done = []
    lock = threading.Lock()
    ids = iter(range(10**6))

    def one(i: int) -> None:
        outcomes[i] = []
        for _attempt in range(4):
            try:
                result, replica = _complete(client, f"Request {i}: Mr. Darcy said", max_tokens=24)
            except openai.APIStatusError as e:
                status = e.status_code
                if status in (429, 503):
                    outcomes[i].append(f"rejected {status}")
                    return
                # A request its replica died under: the proxy's 500; the client retries it.
                assert status == 500 and killing.is_set(), f"request {i}: {status} {e}"
                outcomes[i].append("retried 500")
                continue
            except openai.APIConnectionError as e:  # a reset connection is no answer: retried, and counted
                assert killing.is_set(), f"request {i}: {e!r}"
                outcomes[i].append("retried connection")
                continue
            outcomes[i].append("completed")
            with lock:
                completion_ids.append(result.id)
                done.append(replica)
            return

    def client_loop() -> None:
        after = 0
        deadline = time.monotonic() + 3 * REQUEST_TIMEOUT
        while after < 3 and time.monotonic() < deadline:
            after += killed.is_set()
            with lock:
                i = next(ids)
            one(i)

    def kill_when_loaded() -> None:
        deadline = time.monotonic() + REQUEST_TIMEOUT
        while len(done) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        timings["loaded"] = time.monotonic() - t0
        killing.set()  # the replica may die before the killer's process returns
        killer_process.stdin.write("kill\n")
        killer_process.stdin.flush()
        assert _read_line(killer_process) == "killed", "the replica was not killed"
        timings["killed"] = time.monotonic() - t0
        killed.set()

    timings, t0 = {}, time.monotonic()
    killer = threading.Thread(target=kill_when_loaded)
    killer.start()
    with ThreadPoolExecutor(6) as pool:
        for future in [pool.submit(client_loop) for _ in range(6)]:
            future.result()
    killer.join(REQUEST_TIMEOUT)
    assert killed.is_set(), "the replica was never killed"
    final = {i: o[-1] if o else "lost" for i, o in outcomes.items()}
    assert all(f == "completed" or f.startswith("rejected") for f in final.values()), final
    assert len(completion_ids) == len(set(completion_ids)) == sum(f == "completed" for f in final.values())
    assert sum(f == "completed" for f in final.values()) >= len(final) // 2, final
    timings["load over"] = time.monotonic() - t0
    print("seconds:", {k: round(v, 1) for k, v in timings.items()}, "outcomes:", {k: sum(1 for o in outcomes.values() for x in o if x == k)
                        for k in {x for o in outcomes.values() for x in o}}, file=sys.stderr)


def test_ray_flags_need_ray():
    out = subprocess.run([sys.executable, "-m", "llmos", "serve", BUNDLED, "--replicas", "2"], env=child_env(),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "--replicas is for --ray" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("flags, message", [(["--port", "0"], "--port 0: --ray needs a fixed port"),
                                            (["--replicas", "2", "--autoscale", "1:2"], "not both"),
                                            (["--autoscale", "3:1"], "invalid MIN:MAX value")])
def test_bad_ray_flags_are_refused_before_ray_starts(flags, message):
    out = subprocess.run([sys.executable, "-m", "llmos", "serve", BUNDLED, "--ray", *flags], env=child_env(),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and message in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_a_missing_ray_names_the_extra():
    code = ("import sys; sys.modules['ray'] = None; sys.argv = ['llmos', 'serve', 'default', '--ray']; "
            "from llmos.cli import main; sys.exit(main())")
    out = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "pip install 'llmos[ray]'" in out.stderr and "Traceback" not in out.stderr
