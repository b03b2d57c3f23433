"""Rotary position embedding parameters, computed once per model from config.json.

Mirrors the rope types of transformers (default, linear, dynamic, llama3, yarn, longrope)
and both spellings of the config: `rope_parameters` (transformers 5) and
`rope_scaling` + `rope_theta` (older checkpoints). The per-position cos/sin tables are built
in C++; dynamic NTK and longrope switch frequencies per forward there, as transformers does.
Arithmetic is float32 where transformers computes in float32, so frequencies agree to the bit
or within an ulp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from llmos.io.config import ConfigReader
from llmos.errors import UnsupportedModelError

SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn", "longrope")


@dataclass
class Rope:
    rotary_dim: int
    inv_freq: np.ndarray                     # [rotary_dim / 2] float32
    inv_freq_long: np.ndarray | None = None  # longrope: used once the sequence exceeds long_after
    long_after: int = 0
    attention_scaling: float = 1.0
    dynamic: bool = False
    dynamic_base: float = 10000.0
    dynamic_factor: float = 1.0
    dynamic_max_positions: int = 0
    rope_type: str = "default"
    params: dict = field(default_factory=dict)


def rope_parameters(cfg: ConfigReader) -> dict:
    """The rope settings as one dict (rope_type, rope_theta, factor...), whichever spelling."""
    params = cfg.raw("rope_parameters")
    if params is None:
        params = dict(cfg.raw("rope_scaling") or {})
    elif not isinstance(params, dict):
        raise cfg.error("rope_parameters", f"expected an object, got {params!r}")
    else:
        params = dict(params)
    if not isinstance(params, dict):
        raise cfg.error("rope_scaling", f"expected an object, got {params!r}")
    params.setdefault("rope_theta", cfg.raw("rope_theta", 10000.0))
    if "partial_rotary_factor" not in params and cfg.has("partial_rotary_factor"):
        params["partial_rotary_factor"] = cfg.raw("partial_rotary_factor")
    params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
    return params


def _default_inv_freq(base: float, dim: int) -> np.ndarray:
    exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    return (np.float32(1.0) / np.power(np.float32(base), exponent)).astype(np.float32)


def build_rope(cfg: ConfigReader, head_dim: int, max_positions: int) -> Rope:
    p = rope_parameters(cfg)
    rope_type = p["rope_type"]
    where = "rope_parameters" if cfg.has("rope_parameters") else "rope_scaling"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedModelError(
            f"{cfg.path}: field '{where}': rope type '{rope_type}' is not supported "
            f"(supported: {', '.join(SUPPORTED_ROPE_TYPES)})",
            file=cfg.path,
            field=where,
        )

    def num(key, default=None):
        v = p.get(key, default)
        if v is None:
            raise cfg.error(f"{where}.{key}", f"required for rope type '{rope_type}'")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise cfg.error(f"{where}.{key}", f"expected a number, got {v!r}")
        return float(v)

    base = num("rope_theta")
    partial = num("partial_rotary_factor", 1.0)
    dim = int(head_dim * partial)
    if dim % 2 or not 0 < dim <= head_dim:
        raise cfg.error(f"{where}.partial_rotary_factor", f"gives a rotary dimension of {dim} for head_dim {head_dim}")
    inv = _default_inv_freq(base, dim)
    rope = Rope(rotary_dim=dim, inv_freq=inv, rope_type=rope_type, params=p)

    if rope_type == "linear":
        rope.inv_freq = (inv / np.float32(num("factor"))).astype(np.float32)
    elif rope_type == "dynamic":
        rope.dynamic = True
        rope.dynamic_base = base
        rope.dynamic_factor = num("factor")
        rope.dynamic_max_positions = max_positions
    elif rope_type == "llama3":
        factor, low, high = num("factor"), num("low_freq_factor"), num("high_freq_factor")
        old_ctx = num("original_max_position_embeddings")
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        wavelen = np.float32(2 * math.pi) / inv
        scaled = np.where(wavelen > low_wavelen, inv / np.float32(factor), inv).astype(np.float32)
        smooth = ((old_ctx / wavelen - low) / (high - low)).astype(np.float32)
        smoothed = ((1 - smooth) * scaled / np.float32(factor) + smooth * scaled).astype(np.float32)
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        rope.inv_freq = np.where(medium, smoothed, scaled).astype(np.float32)
    elif rope_type == "yarn":
        original = num("original_max_position_embeddings", cfg.raw("original_max_position_embeddings"))
        factor = p.get("factor")
        factor = max_positions / original if factor is None else num("factor")
        attention_factor = p.get("attention_factor")
        mscale, mscale_all_dim = p.get("mscale"), p.get("mscale_all_dim")

        def get_mscale(scale, m=1.0):
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        if attention_factor is None:
            if mscale and mscale_all_dim:
                attention_factor = get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)
            else:
                attention_factor = get_mscale(factor)
        beta_fast = p.get("beta_fast") or 32
        beta_slow = p.get("beta_slow") or 1

        def correction_dim(rotations):
            return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

        lo, hi = correction_dim(beta_fast), correction_dim(beta_slow)
        if p.get("truncate", True):
            lo, hi = math.floor(lo), math.ceil(hi)
        lo, hi = max(lo, 0), min(hi, dim - 1)
        if lo == hi:
            hi += 0.001
        pos_freqs = np.power(np.float32(base), np.arange(0, dim, 2).astype(np.float32) / np.float32(dim))
        extrapolation = np.float32(1.0) / pos_freqs
        interpolation = np.float32(1.0) / (np.float32(factor) * pos_freqs)
        ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - lo) / (hi - lo), 0, 1).astype(np.float32)
        extra_factor = 1 - ramp
        rope.inv_freq = (interpolation * (1 - extra_factor) + extrapolation * extra_factor).astype(np.float32)
        rope.attention_scaling = float(attention_factor)
    elif rope_type == "longrope":
        original = p.get("original_max_position_embeddings", cfg.raw("original_max_position_embeddings"))
        if original is None:
            raise cfg.error(f"{where}.original_max_position_embeddings", "required for rope type 'longrope'")
        original = int(original)
        short, long = p.get("short_factor"), p.get("long_factor")
        for name, fac in (("short_factor", short), ("long_factor", long)):
            if not isinstance(fac, list) or len(fac) != dim // 2:
                raise cfg.error(f"{where}.{name}", f"expected a list of {dim // 2} numbers")
        factor = p.get("factor")
        factor = max_positions / original if factor is None else float(factor)
        attention_factor = p.get("attention_factor")
        if attention_factor is None:
            attention_factor = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
        shape = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
        pows = np.power(np.float32(base), shape)
        rope.inv_freq = (np.float32(1.0) / (np.asarray(short, np.float32) * pows)).astype(np.float32)
        rope.inv_freq_long = (np.float32(1.0) / (np.asarray(long, np.float32) * pows)).astype(np.float32)
        rope.long_after = original
        rope.attention_scaling = float(attention_factor)
    return rope
