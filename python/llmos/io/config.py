"""Reading config.json: typed field access whose errors name the file and the field."""

from __future__ import annotations

import json
import math
import os
from typing import Any

from llmos.errors import ConfigError, ModelFileError

_MISSING = object()


def read_json(path: str, *, required: bool = True) -> dict | None:
    """Loads a JSON object from `path`; a missing optional file gives None."""
    if not os.path.exists(path):
        if required:
            raise ModelFileError(f"{path}: file not found", file=path)
        return None
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})", file=path) from None
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read ({e.strerror})", file=path) from None
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

    def int(self, key: str, default: Any = _MISSING, *, minimum: int | None = 1) -> int:
        value = self.data.get(key)
        if value is None:
            if default is _MISSING:
                raise self.error(key, "required but missing")
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise self.error(key, f"expected an integer >= {minimum}, got {value}")
        return value

    def float(self, key: str, default: Any = _MISSING, *, positive: bool = False) -> float:
        value = self.data.get(key)
        if value is None:
            if default is _MISSING:
                raise self.error(key, "required but missing")
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.error(key, f"expected a finite number, got {value!r}")
        if positive and value <= 0:
            raise self.error(key, f"expected a number > 0, got {value}")
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
