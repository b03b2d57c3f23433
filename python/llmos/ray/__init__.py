"""llmos on Ray: the server of `llmos serve` as a Ray Serve application (replicas, autoscaling on
queue depth) for when one machine's engine is not enough. Needs `pip install "llmos[ray]"`."""

from llmos.ray.deployment import deployment

__all__ = ["deployment"]
