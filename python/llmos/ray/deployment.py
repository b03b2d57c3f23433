"""`llmos.ray.deployment(...)`: the ASGI app of `llmos serve` (llmos.serve.app.create_app: the same
routes, API keys, admission, limits and validation) in every replica of a Ray Serve deployment.
Each replica holds one engine per model, which batches that replica's requests; Ray Serve routes
between replicas and, with `autoscale`, adds or removes them as requests queue up.

The app is built on the replica (serve.ingress with a builder function), never pickled: a replica
loads its own models. What the driver knows and the replica must share travels with the
deployment: the driver's working folder (relative checkpoint and app paths), the LLMOS_*
environment (LLMOS_HOME, LLMOS_LIMIT_*) and the limits set with llmos.limits.configure()."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from llmos.errors import InvalidInputError
from llmos.extras import require
from llmos.limits import current as current_limits

# The response header naming the replica that answered: a client (or a test) sees the routing.
REPLICA_HEADER = b"x-llmos-replica"
# Requests in flight per replica that autoscaling aims for. On 2 CPU cores one engine's output
# doubles from 1 to 8 streams and is flat from 8 to 32 (docs/performance.md, serving): past 8,
# another replica helps more than a deeper batch.
TARGET_ONGOING = 8


def deployment(models: list[str] | tuple[str, ...] = (), *, apps: list | tuple = (), replicas: int | None = None,
               autoscale: tuple[int, int] | None = None, target_ongoing: int = TARGET_ONGOING,
               threads: int | None = None, num_cpus: float | None = None, num_gpus: float | None = None,
               api_keys: list[str] | None = None, max_concurrency: int = 64, max_queue: int = 256,
               drain_seconds: float = 30.0, load_options: dict | None = None, engine_options: dict | None = None,
               idle_unload: float | None = None, allow_tools: bool = False, name: str = "llmos"):
    """A Ray Serve Application (give it to ray.serve.run) serving `models` and `apps` as
    `llmos serve` does. Either `replicas` (a fixed count, default 1) or `autoscale=(min, max)`,
    scaled to keep about `target_ongoing` requests in flight per replica. Each replica reserves
    `num_cpus` (default: `threads`, else 1; fractions let two replicas share a core) and loads
    its models with `threads` compute threads."""
    require("ray", "llmos.ray")
    require("serve", "llmos.ray")
    from ray import serve

    models, apps = list(models), [str(a) for a in apps]
    if not models and not apps:
        raise InvalidInputError("llmos.ray.deployment: give at least one model or app", field="models")
    if replicas is not None and autoscale is not None:
        raise InvalidInputError("llmos.ray.deployment: give replicas or autoscale, not both", field="replicas")
    scaling = _scaling(replicas, autoscale, target_ongoing)
    for field, value in (("threads", threads), ("max_concurrency", max_concurrency)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise InvalidInputError(f"llmos.ray.deployment: {field} must be a positive integer, got {value!r}",
                                    field=field)
    if not isinstance(max_queue, int) or isinstance(max_queue, bool) or max_queue < 0:
        raise InvalidInputError(f"llmos.ray.deployment: max_queue must be a non-negative integer, got {max_queue!r}",
                                field="max_queue")
    cpus = num_cpus if num_cpus is not None else float(threads or 1)
    if not isinstance(cpus, (int, float)) or isinstance(cpus, bool) or not cpus > 0:
        raise InvalidInputError(f"llmos.ray.deployment: num_cpus must be a positive number, got {num_cpus!r}",
                                field="num_cpus")
    load_options = {**(load_options or {}), **({"threads": threads} if threads is not None else {})}
    settings = {
        "models": models, "apps": apps, "api_keys": list(api_keys) if api_keys else None,
        "max_concurrency": max_concurrency, "max_queue": max_queue, "load_options": load_options,
        "engine_options": dict(engine_options or {}), "idle_unload": idle_unload, "allow_tools": allow_tools,
        "cwd": os.getcwd(), "limits": dataclasses.asdict(current_limits()),
    }

    def build():  # runs on the replica
        return _replica_app(settings)

    actor_options = {"num_cpus": cpus,
                     "runtime_env": {"env_vars": {k: v for k, v in os.environ.items() if k.startswith("LLMOS_")}}}
    if num_gpus:
        actor_options["num_gpus"] = num_gpus
    # max_ongoing_requests is what one replica's own admission takes (running + queued), so Ray
    # routes no more to it than it would accept; beyond that, requests wait at the proxy.
    ingress = serve.ingress(build)(type("LLMOSReplica", (), {}))
    return serve.deployment(
        ingress, name=name, ray_actor_options=actor_options, max_ongoing_requests=max_concurrency + max_queue,
        graceful_shutdown_timeout_s=drain_seconds, **scaling).bind()


def _scaling(replicas, autoscale, target_ongoing) -> dict:
    if autoscale is None:
        count = 1 if replicas is None else replicas
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise InvalidInputError(f"llmos.ray.deployment: replicas must be a positive integer, got {replicas!r}",
                                    field="replicas")
        return {"num_replicas": count}
    try:
        low, high = (int(v) for v in autoscale)
    except (TypeError, ValueError):
        raise InvalidInputError(f"llmos.ray.deployment: autoscale must be (min, max), got {autoscale!r}",
                                field="autoscale") from None
    if not 0 <= low <= high or high < 1:
        raise InvalidInputError(f"llmos.ray.deployment: autoscale {low}:{high} needs 0 <= min <= max and max >= 1",
                                field="autoscale")
    if not isinstance(target_ongoing, (int, float)) or not target_ongoing > 0:
        raise InvalidInputError(f"llmos.ray.deployment: target_ongoing must be positive, got {target_ongoing!r}",
                                field="target_ongoing")
    return {"autoscaling_config": {"min_replicas": low, "initial_replicas": max(low, 1), "max_replicas": high,
                                   "target_ongoing_requests": target_ongoing}}


def _replica_app(settings: dict):
    """The server's ASGI app, made on the replica, answering with the replica's id in a header."""
    from llmos import limits
    from llmos.runtime.engine import Engine
    from llmos.serve.app import create_app

    if Path(settings["cwd"]).is_dir():  # the same folder where it exists (a local or shared-disk cluster)
        os.chdir(settings["cwd"])
    limits.configure(**settings["limits"])
    app = create_app(settings["models"], engine_factory=Engine, api_keys=settings["api_keys"],
                     max_concurrency=settings["max_concurrency"], max_queue=settings["max_queue"],
                     load_options=settings["load_options"], engine_options=settings["engine_options"],
                     idle_unload=settings["idle_unload"], apps=settings["apps"], allow_tools=settings["allow_tools"])
    return Named(app, _replica_id().encode())


def _replica_id() -> str:
    from ray import serve

    context = serve.get_replica_context()
    replica = getattr(context, "replica_id", None)
    return replica.unique_id if replica is not None else context.replica_tag


class Named:
    """ASGI middleware: every HTTP response carries the replica's id."""

    def __init__(self, app, replica: bytes):
        self.app, self.replica = app, replica

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def named(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (REPLICA_HEADER, self.replica)]}
            await send(message)

        await self.app(scope, receive, named)
