"""`llmos serve --ray`: deploy llmos.ray.deployment on a Ray cluster and hold it until SIGTERM or
Ctrl-C. Without an address, a Ray of this machine's own is started on loopback (no dashboard)
and stopped at the end; with one (`auto`, `ray://HOST:10001`, `HOST:6379`), the cluster's
Serve gets the application, which is deleted at the end (the cluster and its other apps stay)."""

from __future__ import annotations

import signal
import threading
import time

from llmos.serve.run import check_bind

APP_NAME = "llmos"


def serve_on_ray(application, *, host: str = "127.0.0.1", port: int = 8000, address: str | None = None,
                 api_keys: list[str] | None = None, num_cpus: float | None = None,
                 on_ready=None) -> int:
    """Runs `application` (from llmos.ray.deployment) behind Serve's HTTP proxy on host:port;
    returns the exit code once stopped. on_ready(seconds) is called when every replica is up."""
    import ray
    from ray import serve

    check_bind(host, api_keys)
    stop = threading.Event()
    local = address is None
    started = time.monotonic()
    previous = {}
    try:
        if local:
            # This machine only: loopback, no dashboard, no usage report.
            ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", num_cpus=num_cpus,
                     configure_logging=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
        # After ray.init, which installs handlers of its own that would end the process at once.
        previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
        serve.start(http_options={"host": host, "port": port})
        serve.run(application, name=APP_NAME, route_prefix="/")
        if on_ready is not None:
            on_ready(time.monotonic() - started)
        while not stop.wait(0.5):
            pass
        return 0
    finally:
        try:
            if local:
                serve.shutdown()
            elif ray.is_initialized():
                serve.delete(APP_NAME)
        finally:
            if ray.is_initialized():
                ray.shutdown()
            for s, handler in previous.items():
                signal.signal(s, handler)
