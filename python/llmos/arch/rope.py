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
        scaling = cfg.raw("rope_scaling", {})
        if not isinstance(scaling, dict):
            raise cfg.error("rope_scaling", f"expected an object or null, got {scaling!r}")
        params = dict(scaling)
    elif not isinstance(params, dict):
        raise cfg.error("rope_parameters", f"expected an object, got {params!r}")
    else:
        params = dict(params)
    params.setdefault("rope_theta", cfg.raw("rope_theta", 10000.0))
    if "partial_rotary_factor" not in params and cfg.has("partial_rotary_factor"):
        params["partial_rotary_factor"] = cfg.raw("partial_rotary_factor")
    params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
    return params


def _default_inv_freq(base: float, dim: int) -> np.ndarray:
    exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    return (np.float32(1.0) / np.power(np.float32(base), exponent)).astype(np.float32)


# The frequencies are float32, as in transformers: a parameter beyond its range would turn
# them into infinities and every logit into NaN.
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _field(cfg: ConfigReader, where: str, key: str) -> str:
    """The config field a rope parameter was read from, for errors: `where`.key, or the
    top-level key of the older spelling (rope_theta, partial_rotary_factor...) it came from."""
    block = cfg.raw(where)
    if not (isinstance(block, dict) and key in block) and cfg.has(key):
        return key
    return f"{where}.{key}"


def _rope_number(cfg: ConfigReader, params: dict, where: str, key: str, default=None, *,
                 above: float | None = None) -> float:
    """A required finite number from the rope parameters; `above`: it must be greater."""
    v = params.get(key, default)
    if v is None:
        raise cfg.error(f"{where}.{key}", f"required for rope type '{params['rope_type']}'")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not abs(v) <= _FLOAT32_MAX:
        raise cfg.error(_field(cfg, where, key), f"expected a finite number, got {v!r}")
    if above is not None and not v > above:
        raise cfg.error(_field(cfg, where, key), f"expected a number > {above:g}, got {v!r}")
    return float(v)


@dataclass(frozen=True)
class _RopeInputs:
    """What every rope type starts from: the merged parameters and the unscaled frequencies."""

    cfg: ConfigReader
    params: dict
    where: str            # the config field the parameters came from, for error messages
    base: float           # rope_theta
    dim: int              # rotary dimension
    max_positions: int
    inv_freq: np.ndarray  # [dim / 2] float32, the default rope's frequencies

    def num(self, key: str, default=None, *, above: float | None = None) -> float:
        return _rope_number(self.cfg, self.params, self.where, key, default, above=above)

    def original_positions(self) -> int:
        """original_max_position_embeddings, from the rope parameters or the config's top level."""
        key = "original_max_position_embeddings"
        v = self.params.get(key, self.cfg.raw(key))
        if v is None:
            raise self.cfg.error(f"{self.where}.{key}", f"required for rope type '{self.params['rope_type']}'")
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 < v < 2**63:
            raise self.cfg.error(_field(self.cfg, self.where, key), f"expected an integer > 1, got {v!r}")
        return v

    def rope(self, **fields) -> Rope:
        return Rope(rotary_dim=self.dim, rope_type=self.params["rope_type"], params=self.params,
                    **{"inv_freq": self.inv_freq, **fields})


def _default_rope(r: _RopeInputs) -> Rope:
    return r.rope()


def _linear_rope(r: _RopeInputs) -> Rope:
    return r.rope(inv_freq=(r.inv_freq / np.float32(r.num("factor", above=0))).astype(np.float32))


def _dynamic_rope(r: _RopeInputs) -> Rope:
    # The frequencies depend on the sequence length; the core recomputes them per forward.
    return r.rope(dynamic=True, dynamic_base=r.base, dynamic_factor=r.num("factor", above=0),
                  dynamic_max_positions=r.max_positions)


def _llama3_rope(r: _RopeInputs) -> Rope:
    inv = r.inv_freq
    factor, low = r.num("factor", above=0), r.num("low_freq_factor", above=0)
    high = r.num("high_freq_factor", above=low)  # the smoothing divides by high - low
    old_ctx = r.num("original_max_position_embeddings", above=0)
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    wavelen = np.float32(2 * math.pi) / inv
    scaled = np.where(wavelen > low_wavelen, inv / np.float32(factor), inv).astype(np.float32)
    smooth = ((old_ctx / wavelen - low) / (high - low)).astype(np.float32)
    smoothed = ((1 - smooth) * scaled / np.float32(factor) + smooth * scaled).astype(np.float32)
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return r.rope(inv_freq=np.where(medium, smoothed, scaled).astype(np.float32))


def _yarn_rope(r: _RopeInputs) -> Rope:
    p, dim, base = r.params, r.dim, r.base
    original = r.original_positions()
    factor = p.get("factor")
    factor = r.max_positions / original if factor is None else r.num("factor", above=0)
    attention_factor = None if p.get("attention_factor") is None else r.num("attention_factor", above=0)
    mscale = None if p.get("mscale") is None else r.num("mscale")
    mscale_all_dim = None if p.get("mscale_all_dim") is None else r.num("mscale_all_dim")
    if base <= 1:  # the correction range divides by log(base)
        raise r.cfg.error(_field(r.cfg, r.where, "rope_theta"), f"expected a number > 1 for rope type 'yarn', got {base:g}")

    def get_mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)
        else:
            attention_factor = get_mscale(factor)
    # transformers reads these with `or`: 0 and null both take the default.
    beta_fast = r.num("beta_fast", above=0) if p.get("beta_fast") else 32
    beta_slow = r.num("beta_slow", above=0) if p.get("beta_slow") else 1
    truncate = p.get("truncate", True)
    if not isinstance(truncate, bool):
        raise r.cfg.error(f"{r.where}.truncate", f"expected true or false, got {truncate!r}")

    def correction_dim(rotations):
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    lo, hi = correction_dim(beta_fast), correction_dim(beta_slow)
    if truncate:
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, dim - 1)
    if lo == hi:
        hi += 0.001
    pos_freqs = np.power(np.float32(base), np.arange(0, dim, 2).astype(np.float32) / np.float32(dim))
    extrapolation = np.float32(1.0) / pos_freqs
    interpolation = np.float32(1.0) / (np.float32(factor) * pos_freqs)
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - lo) / (hi - lo), 0, 1).astype(np.float32)
    extra_factor = 1 - ramp
    return r.rope(inv_freq=(interpolation * (1 - extra_factor) + extrapolation * extra_factor).astype(np.float32),
                  attention_scaling=float(attention_factor))


def _longrope(r: _RopeInputs) -> Rope:
    p, dim, where = r.params, r.dim, r.where
    original = r.original_positions()
    factor = p.get("factor")
    factor = r.max_positions / original if factor is None else r.num("factor", above=0)
    short, long = p.get("short_factor"), p.get("long_factor")
    for name, fac in (("short_factor", short), ("long_factor", long)):
        if not isinstance(fac, list) or len(fac) != dim // 2 or not all(
                not isinstance(x, bool) and isinstance(x, (int, float)) and 0 < x <= _FLOAT32_MAX for x in fac):
            raise r.cfg.error(f"{where}.{name}", f"expected a list of {dim // 2} numbers > 0")
    attention_factor = None if p.get("attention_factor") is None else r.num("attention_factor", above=0)
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    shape = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    pows = np.power(np.float32(r.base), shape)
    return r.rope(inv_freq=(np.float32(1.0) / (np.asarray(short, np.float32) * pows)).astype(np.float32),
                  inv_freq_long=(np.float32(1.0) / (np.asarray(long, np.float32) * pows)).astype(np.float32),
                  long_after=original, attention_scaling=float(attention_factor))


# Rope type -> the function that builds it. The order is the one error messages list.
ROPE_TYPES = {
    "default": _default_rope,
    "linear": _linear_rope,
    "dynamic": _dynamic_rope,
    "llama3": _llama3_rope,
    "yarn": _yarn_rope,
    "longrope": _longrope,
}
SUPPORTED_ROPE_TYPES = tuple(ROPE_TYPES)


def build_rope(cfg: ConfigReader, head_dim: int, max_positions: int) -> Rope:
    p = rope_parameters(cfg)
    rope_type = p["rope_type"]
    where = "rope_parameters" if cfg.has("rope_parameters") else "rope_scaling"
    if not isinstance(rope_type, str):
        raise cfg.error(f"{where}.rope_type", f"expected a string, got {rope_type!r}")
    if rope_type not in ROPE_TYPES:
        raise UnsupportedModelError(
            f"{cfg.path}: field '{where}': rope type '{rope_type}' is not supported "
            f"(supported: {', '.join(SUPPORTED_ROPE_TYPES)})",
            file=cfg.path,
            field=where,
        )
    base = _rope_number(cfg, p, where, "rope_theta", above=0)
    partial = _rope_number(cfg, p, where, "partial_rotary_factor", 1.0, above=0)
    if partial > 1:
        raise cfg.error(_field(cfg, where, "partial_rotary_factor"), f"expected a number in (0, 1], got {partial:g}")
    dim = int(head_dim * partial)
    if dim % 2 or not 0 < dim <= head_dim:
        raise cfg.error(_field(cfg, where, "partial_rotary_factor"), f"gives a rotary dimension of {dim} for head_dim {head_dim}")
    # Extreme but finite parameters can still overflow float32 on the way: the result is checked
    # instead (numpy's warnings are not the error a caller should see).
    with np.errstate(all="ignore"):
        rope = ROPE_TYPES[rope_type](_RopeInputs(cfg, p, where, base, dim, max_positions,
                                                 _default_inv_freq(base, dim)))
    tables = [rope.inv_freq] + ([] if rope.inv_freq_long is None else [rope.inv_freq_long])
    if not all(np.isfinite(t).all() for t in tables) or not 0 < rope.attention_scaling <= _FLOAT32_MAX:
        raise cfg.error(where, f"rope type '{rope_type}' with these parameters gives non-finite rotary "
                               "frequencies or scaling")
    return rope
