"""Reading config.json: typed field access whose errors name the file and the field."""

from __future__ import annotations

import json
import math
import os
import stat
import struct
from typing import Any

from llmos import limits
from llmos.errors import ConfigError, LlmosError, ModelFileError

_MISSING = object()
_INT64 = 2**63
_FLOAT32_MAX = 3.4028234663852886e38


def _finite(value) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def read_side_file(path: str, *, limit: str = "max_config_bytes", error: type[LlmosError] = ConfigError) -> bytes:
    """The bytes of a small file that is read whole (a JSON side file of a checkpoint).

    Only a regular file is read: the file is opened without blocking (a FIFO would otherwise
    wait for a writer forever) and checked on the open descriptor, so a swap after a check
    cannot slip past it. More than ``llmos.limits.<limit>`` bytes is refused with `error`.
    A missing file is FileNotFoundError, for the caller to word.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except OSError as e:
        raise ModelFileError(f"{path}: cannot open ({e.strerror})", file=path) from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ModelFileError(f"{path}: not a regular file (a FIFO, device or folder is not read)", file=path)
        bound = getattr(limits.current(), limit)
        # The size on disk can change after fstat: read at most one byte past the bound.
        data = f.read(bound + 1) if st.st_size <= bound else b""
        if st.st_size > bound or len(data) > bound:
            raise error(f"{path}: {max(st.st_size, len(data))} bytes is over the limit of {bound} for this file "
                        f"(llmos.limits.{limit}; raise it with llmos.limits.configure({limit}=...) or "
                        f"LLMOS_LIMIT_{limit.upper()})", file=path, field=limit)
    return data


def read_json(path: str, *, required: bool = True, limit: str = "max_config_bytes") -> dict | None:
    """Loads a JSON object from `path` (at most ``llmos.limits.<limit>`` bytes); a missing
    optional file gives None."""
    try:
        raw = read_side_file(path, limit=limit)
    except FileNotFoundError:
        if required:
            raise ModelFileError(f"{path}: file not found", file=path) from None
        return None
    except OSError as e:
        if isinstance(e, LlmosError):
            raise
        raise ModelFileError(f"{path}: cannot read ({e.strerror})", file=path) from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})", file=path) from None
    except RecursionError:
        raise ConfigError(f"{path}: JSON nested too deeply to parse", file=path) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object at the top level", file=path)
    return data


class ConfigReader:
    """Typed access to a config dict; every error names the file and the field."""

    def __init__(self, data: dict, path: str):
        self.data = data
        self.path = path

    def error(self, field: str, what: str) -> ConfigError:
        return ConfigError(f"{self.path}: field '{field}': {what}", file=self.path, field=field)

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def raw(self, key: str, default: Any = None) -> Any:
        value = self.data.get(key)
        return default if value is None else value

    def int(self, key: str, default: Any = _MISSING, *, minimum: int | None = 1, limit: str | None = None) -> int:
        """limit: a field of llmos.limits.Limits that bounds the value from above."""
        value = self.data.get(key)
        if value is None:
            if default is _MISSING:
                raise self.error(key, "required but missing")
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise self.error(key, f"expected an integer >= {minimum}, got {value}")
        if not -_INT64 <= value < _INT64:
            raise self.error(key, f"{value} does not fit a 64-bit integer")
        if limit is not None and value > getattr(limits.current(), limit):
            raise self.error(key, f"{value} is over the limit of {getattr(limits.current(), limit)} "
                                  f"(llmos.limits.{limit}; raise it with llmos.limits.configure({limit}=...) "
                                  f"or LLMOS_LIMIT_{limit.upper()})")
        return value

    def float(self, key: str, default: Any = _MISSING, *, positive: bool = False) -> float:
        value = self.data.get(key)
        if value is None:
            if default is _MISSING:
                raise self.error(key, "required but missing")
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
            raise self.error(key, f"expected a finite number, got {value!r}")
        # The core computes in float32: a larger number would become infinity there.
        if abs(value) > _FLOAT32_MAX:
            raise self.error(key, f"{value} is beyond the float32 range (±{_FLOAT32_MAX:.4g})")
        if positive and not struct.unpack("f", struct.pack("f", value))[0] > 0:  # > 0 in float32 too
            raise self.error(key, f"expected a number > 0 (in float32), got {value}")
        return float(value)

    def bool(self, key: str, default: bool) -> bool:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {value!r}")
        return value

    def str(self, key: str, default: Any = _MISSING) -> str:
        value = self.data.get(key)
        if value is None:
            if default is _MISSING:
                raise self.error(key, "required but missing")
            return default
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {value!r}")
        return value
