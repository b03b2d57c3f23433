"""Checkpoints quantized with AWQ or GPTQ (`quantization_config` in config.json) load into
llmos's int4 / int8 blocks (cpp/quant/qformat.h) as they are, without a float copy.

Both formats store each Linear [out, in] as integer codes q (4 or 8 bits) with, per output
row and group of `group_size` inputs, a float16 scale s and an integer zero point z:
w = s * (q - z).

  AWQ "gemm"   qweight int32 [in, out/8]: eight 4-bit codes per int32 along the output, in
               the order 0 2 4 6 1 3 5 7 (nibble i holds column 8c + order[i]); qzeros int32
               [in/group, out/8] packed the same way; scales [in/group, out].
  GPTQ         qweight int32 [in*bits/32, out] packed along the input, first code in the low
               bits; qzeros int32 [in/group, out*bits/32] packed along the output the same
               way; scales [in/group, out]; g_idx int32 [in], the group of each input.
               checkpoint_format "gptq" (v1) stores z - 1 (read back as (stored + 1) mod
               2^bits, as AutoGPTQ does), "gptq_v2" stores z.

Mapping, per weight role (q|k|v and gate|up are fused along the output rows, as the core
fuses float weights; every module is repacked per output row first):

  4 bits, every zero 8      Q4:      u = q, d = s.                          exact
  4 bits, other zeros       Q4Asym:  u = q, d = s, m = float16(-s * z).     |dw| <= 2^-11 |s z|
                            (s * z is exact in float32; only its rounding to float16 moves a
                            weight, by at most 15 * 2^-11 s < 1% of a quantization step)
  8 bits (or 4 and 8 mixed  Q8:      u = q - z + 128, d = s.                exact while u is
  in one fused role)                                                        in [0, 255]
  group 32, 64 or 128, or   the largest of 128 / 64 / 32 that divides every source group,
  a multiple of 32 (also    the scale and zero repeated.                    exact
  -1: one group per row)

What the blocks cannot hold is converted with a QuantizationWarning that says so:
  - act-order GPTQ (desc_act, or any g_idx that is not contiguous runs of group_size),
    groups that are not a multiple of 32, 8-bit codes whose q - z + 128 leaves [0, 255]:
    the matrix is dequantized exactly and re-quantized to int8 in groups of 32 inputs
    (|dw| <= half an int8 step: max |w| of the 32 inputs / 254);
  - an input width that is not a multiple of 64: dequantized to float.
A role that mixes quantized and float modules (modules_to_not_convert, GPTQModel's `dynamic`)
loads as float, dequantized exactly. The embedding, the LM head (unless GPTQ quantized it),
norms and biases stay float as the checkpoint stores them.

The blocks reach the core as numpy arrays through the same pre-quantized path as a checkpoint
written by llmos.quantize; nothing is written to disk. The core takes the roles one at a time
and each is freed once copied (Converted.drain), so peak memory stays near the model's own
size plus one role.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from llmos import _core
from llmos.io.checkpoint import find, float_source, resolve
from llmos.io.config import ConfigReader
from llmos.errors import ConfigError, QuantizationWarning, TensorError, UnsupportedModelError
from llmos.quant.names import TYPES, QuantChoice, QuantType

Q8, Q4, Q4ASYM = QuantType.Q8, QuantType.Q4, QuantType.Q4Asym
TYPE_NAMES = {v: k for k, v in TYPES.items()}
AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)  # column 8c + j sits in nibble AWQ_REVERSE_ORDER[j]
MATRIX_ROLES = ("qkv.weight", "o.weight", "up.weight", "down.weight", "lm_head")
# A mixture of experts' per-expert matrices (gate|up stacked, down), as arch/families.py names them.
_EXPERT_ROLE = re.compile(r"experts\.\d+\.(up|down)\.weight")


def _is_matrix(role: str) -> bool:
    return role in MATRIX_ROLES or _EXPERT_ROLE.fullmatch(role) is not None
FALLBACK_GROUP = 32
_FLOAT_DTYPES = ("F16", "BF16", "F32")
_F = "quantization_config"


@dataclass(frozen=True)
class HfQuant:
    """The parts of `quantization_config` that decide how the tensors are read."""

    method: str                    # "awq" | "gptq"
    bits: int
    group: int                     # inputs per group; -1: one group per output row
    format: str                    # "gemm" | "gptq" | "gptq_v2"
    desc_act: bool
    not_convert: tuple[str, ...]   # AWQ modules_to_not_convert (substrings of module names)
    partial: bool                  # GPTQ dynamic / modules_in_block_to_quantize: some modules may be float
    config_path: str

    @property
    def label(self) -> str:
        return "AWQ" if self.method == "awq" else ("GPTQ v2" if self.format == "gptq_v2" else "GPTQ")

    def declares_float(self, module: str) -> bool:
        """Whether the config says this module was left unquantized."""
        return any(key in module for key in self.not_convert)


def read_config(cfg: ConfigReader) -> HfQuant | None:
    """The checkpoint's quantization_config, checked; None when config.json has none."""
    qc = cfg.raw(_F)
    if qc is None:
        return None
    path = cfg.path

    def fail(key: str, what: str, cls=ConfigError):
        name = f"{_F}.{key}" if key else _F
        return cls(f"{path}: field '{name}': {what}", file=path, field=name)

    if not isinstance(qc, dict):
        raise fail("", f"expected an object, got {type(qc).__name__}")
    method = qc.get("quant_method")
    if not isinstance(method, str):
        raise fail("quant_method", f"expected a string (awq or gptq), got {method!r}")
    method = method.lower()
    if method == "mxfp4":
        raise fail("quant_method", "MXFP4 expert weights (how gpt-oss ships) are not supported: llmos has no "
                                   "MXFP4 decoder; dequantize the checkpoint to bfloat16 first (transformers: "
                                   "Mxfp4Config(dequantize=True), then save_pretrained)", UnsupportedModelError)
    if method not in ("awq", "gptq"):
        raise fail("quant_method", f"{method!r} checkpoints are not supported: llmos loads awq and gptq "
                                   "quantized checkpoints, and float ones", UnsupportedModelError)

    def integer(*keys, default):
        for key in keys:
            if key in qc and qc[key] is not None:
                v = qc[key]
                if isinstance(v, bool) or not isinstance(v, int):
                    raise fail(key, f"expected an integer, got {v!r}")
                return key, v
        return keys[0], default

    def boolean(key, default):
        v = qc.get(key, default)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise fail(key, f"expected true or false, got {v!r}")
        return v

    def string(*keys, default):
        for key in keys:  # the first key present wins, as transformers reads them
            if qc.get(key) is not None:
                v = qc[key]
                if not isinstance(v, str):
                    raise fail(key, f"expected a string, got {v!r}")
                return key, v.lower()
        return keys[0], default

    bits_key, bits = integer("bits", "w_bit", default=4)
    group_key, group = integer("group_size", "q_group_size", default=128)
    if group != -1 and group <= 0:
        raise fail(group_key, f"expected -1 (one group per row) or a positive integer, got {group}")
    supported_bits = (4,) if method == "awq" else (4, 8)
    if bits not in supported_bits:
        raise fail(bits_key, f"{bits}-bit {method.upper()} is not supported (supported: "
                             f"{' and '.join(map(str, supported_bits))} bits)", UnsupportedModelError)
    pack_dtype = qc.get("pack_dtype")
    if pack_dtype is not None and str(pack_dtype).replace("torch.", "") != "int32":
        raise fail("pack_dtype", f"{pack_dtype!r} is not supported (codes packed in int32)", UnsupportedModelError)

    not_convert = qc.get("modules_to_not_convert")
    if not_convert is None:
        not_convert = []
    if not isinstance(not_convert, list) or not all(isinstance(m, str) for m in not_convert):
        raise fail("modules_to_not_convert", f"expected a list of module names or null, got {not_convert!r}")

    if method == "awq":
        key, fmt = string("version", "format", default="gemm")
        if fmt != "gemm":
            raise fail(key, f"AWQ version {fmt!r} is not supported: llmos reads the 'gemm' layout "
                            "(AutoAWQ's default); other versions pack their codes differently",
                       UnsupportedModelError)
        if not boolean("zero_point", True):
            raise fail("zero_point", "false is not supported (AWQ gemm checkpoints carry zero points)",
                       UnsupportedModelError)
        return HfQuant("awq", bits, group, fmt, False, tuple(not_convert), False, path)

    key, fmt = string("checkpoint_format", "format", default="gptq")
    if fmt not in ("gptq", "gptq_v2"):
        raise fail(key, f"GPTQ format {fmt!r} is not supported (supported: gptq, gptq_v2)", UnsupportedModelError)
    desc_act = boolean("desc_act", False)
    boolean("sym", True)  # zero points are read from qzeros either way; only the type is checked
    dynamic = qc.get("dynamic")
    if dynamic is not None and not isinstance(dynamic, dict):
        raise fail("dynamic", f"expected an object of module patterns, got {dynamic!r}")
    in_block = qc.get("modules_in_block_to_quantize")
    if in_block is not None and not isinstance(in_block, list):
        raise fail("modules_in_block_to_quantize", f"expected a list, got {in_block!r}")
    partial = bool(dynamic) or bool(in_block)
    return HfQuant("gptq", bits, group, fmt, desc_act, tuple(not_convert), partial, path)


# ---- unpacking ---------------------------------------------------------------------------
# The int32 words are read as their little-endian bytes: byte b of a word holds codes 2b (low
# nibble) and 2b + 1 (high nibble). Repacking works on those bytes, so a 4-bit matrix goes to
# llmos's layout in a few passes over its packed size, never widened to one code per byte.

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble n of an AWQ word holds column 8c + AWQ_ORDER[n]


def _unpack_along_cols(packed: np.ndarray, bits: int, awq_order: bool) -> np.ndarray:
    """int32 [r, c * bits / 32] -> uint8 [r, c]: 32/bits codes per int32 along the columns
    (qzeros; small)."""
    u = packed.view(np.uint32)
    per, mask = 32 // bits, (1 << bits) - 1
    out = np.empty((u.shape[0], u.shape[1], per), np.uint8)
    for i in range(per):
        out[:, :, i] = (u >> np.uint32(bits * i)) & np.uint32(mask)
    if awq_order:
        out = out[:, :, AWQ_REVERSE_ORDER]
    return out.reshape(u.shape[0], -1)


def _awq_to_q4(qweight: np.ndarray) -> np.ndarray:
    """AWQ qweight int32 [in, out/8] (in a multiple of 64) -> llmos Q4 bytes [out, in/2]."""
    cols, words = qweight.shape
    b = np.ascontiguousarray(qweight.T).view(np.uint8).reshape(words, cols // 64, 2, 32, 4)
    out = np.empty((words, 8, cols // 64, 32), np.uint8)
    for n in range(8):  # nibble n of each word: output row 8c + AWQ_ORDER[n]
        lo, hi = b[:, :, 0, :, n // 2], b[:, :, 1, :, n // 2]
        out[:, AWQ_ORDER[n]] = (lo & 0xF) | (hi << 4) if n % 2 == 0 else (lo >> 4) | (hi & 0xF0)
    return out.reshape(words * 8, cols // 2)


def _gptq_to_q4(qweight: np.ndarray) -> np.ndarray:
    """GPTQ 4-bit qweight int32 [in/8, out] (in a multiple of 64) -> llmos Q4 bytes [out, in/2]."""
    words, rows = qweight.shape
    cols = words * 8
    # byte k of row o holds inputs 2k (low) and 2k + 1 (high); per 64 inputs, bytes 0-15 hold
    # the first 32 (llmos's low nibbles) and bytes 16-31 the next 32 (the high nibbles).
    b = np.ascontiguousarray(qweight.T).view(np.uint8).reshape(rows, cols // 64, 2, 16)
    lo, hi = b[:, :, 0, :], b[:, :, 1, :]
    out = np.empty((rows, cols // 64, 16, 2), np.uint8)
    out[..., 0] = (lo & 0xF) | (hi << 4)
    out[..., 1] = (lo >> 4) | (hi & 0xF0)
    return out.reshape(rows, cols // 2)


def _gptq_to_codes(qweight: np.ndarray, bits: int) -> np.ndarray:
    """GPTQ qweight int32 [in * bits / 32, out] -> uint8 codes [out, in]."""
    t = np.ascontiguousarray(qweight.T)
    if bits == 8:
        return t.view(np.uint8)
    b = t.view(np.uint8)
    out = np.empty((b.shape[0], b.shape[1], 2), np.uint8)
    out[..., 0], out[..., 1] = b & 0xF, b >> 4
    return out.reshape(b.shape[0], -1)


def _awq_to_codes(qweight: np.ndarray) -> np.ndarray:
    """AWQ qweight int32 [in, out/8] -> uint8 codes [out, in]."""
    cols, words = qweight.shape
    b = np.ascontiguousarray(qweight.T).view(np.uint8).reshape(words, cols, 4)
    out = np.empty((words, 8, cols), np.uint8)
    for n in range(8):
        byte = b[:, :, n // 2]
        out[:, AWQ_ORDER[n]] = byte & 0xF if n % 2 == 0 else byte >> 4
    return out.reshape(words * 8, cols)


def _quantize_q8(w: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """Round-to-nearest int8 blocks (as cpp/quant quantize_row does for Q8): codes, float16 scales."""
    rows, cols = w.shape
    b = w.reshape(rows, cols // group, group)
    d = (np.abs(b).max(axis=-1) / np.float32(127)).astype(np.float16)
    dq = d.astype(np.float32)
    inv = np.divide(np.float32(1), dq, out=np.zeros_like(dq), where=dq != 0)
    u = np.clip(np.rint(b * inv[..., None]) + 128, 1, 255).astype(np.uint8)
    return u.reshape(rows, cols), d


# ---- one quantized module ----------------------------------------------------------------

@dataclass
class _Module:
    name: str                  # qweight tensor name in the checkpoint (for messages)
    packed: np.ndarray         # the qweight tensor as stored (int32)
    method: str                # "awq" | "gptq": the packing
    cols: int                  # inputs
    z: np.ndarray              # int16 [out, n_groups] zero points
    s: np.ndarray              # float16 [out, n_groups]
    group: int                 # inputs per group
    g_idx: np.ndarray | None   # [in] group of each input, when not contiguous runs of `group`
    bits: int

    @property
    def rows(self) -> int:
        return self.s.shape[0]

    def q4(self) -> np.ndarray:
        """llmos Q4 bytes [out, in/2] (4 bits, in a multiple of 64)."""
        return _awq_to_q4(self.packed) if self.method == "awq" else _gptq_to_q4(self.packed)

    def codes(self) -> np.ndarray:
        """uint8 codes [out, in]."""
        return _awq_to_codes(self.packed) if self.method == "awq" else _gptq_to_codes(self.packed, self.bits)

    def dequantize(self) -> np.ndarray:
        gi = self.g_idx if self.g_idx is not None else np.arange(self.cols) // self.group
        w = self.codes().astype(np.float32)
        w -= self.z[:, gi]
        w *= self.s[:, gi].astype(np.float32)
        return w


class _Reader:
    """Checked access to the quantized tensors of the checkpoint."""

    def __init__(self, hq: HfQuant, locations: dict[str, str], model_dir: str):
        self.hq = hq
        self.locations = locations
        self.model_dir = model_dir
        self._headers: dict[str, dict] = {}

    def find(self, name: str):
        return find(self.locations, name)

    def header(self, file: str, tensor: str) -> tuple[str, list[int]]:
        if file not in self._headers:
            tensors, _ = _core.safetensors_read_header(file)
            self._headers[file] = {t["name"]: (t["dtype"], list(t["shape"])) for t in tensors}
        return self._headers[file][tensor]

    def error(self, file: str, tensor: str, what: str) -> TensorError:
        return TensorError(f"{file}: tensor '{tensor}': {what}", file=file, field=tensor)

    def tensor(self, module: str, suffix: str, dtypes: tuple[str, ...], shape: list[int], what: str,
               layout: str) -> tuple[str, str, np.ndarray] | None:
        """Reads <module><suffix> after checking its dtype and shape; None if absent."""
        found = self.find(module + suffix)
        if found is None:
            return None
        file, tensor = found
        dtype, got = self.header(file, tensor)
        if dtype not in dtypes:
            raise self.error(file, tensor, f"dtype {dtype} does not fit {what}: expected {' or '.join(dtypes)}")
        if got != shape:
            raise self.error(file, tensor, f"shape {got} does not fit {what}: expected {shape} ({layout})")
        arr = _core.safetensors_read_tensor(file, tensor)
        return file, tensor, arr

    def scales(self, module: str, n_groups: int, out: int, what: str) -> np.ndarray:
        _, _, s = self.tensor(module, ".scales", _FLOAT_DTYPES, [n_groups, out], what, "[input groups, outputs]")
        if s.dtype == np.uint16:  # bfloat16 bits
            s = (s.astype(np.uint32) << 16).view(np.float32)
        return np.ascontiguousarray(s.astype(np.float16).T)

    def _header_of(self, module: str, suffix: str):
        found = self.find(module + suffix)
        if found is None:
            if suffix == ".qweight":
                return None
            qfile, _ = self.find(module + ".qweight")
            raise TensorError(f"{qfile}: tensor '{module}{suffix}' is missing: {self.hq.label} stores "
                              f"{module}.qweight together with .qzeros and .scales",
                              file=qfile, field=module + suffix)
        return self.header(*found)

    def module(self, module: str, cols: int, what: str) -> _Module:
        """Unpacks one quantized Linear whose input width must be `cols`."""
        hq = self.hq
        awq = hq.method == "awq"
        shapes = {sfx: self._header_of(module, sfx)[1] for sfx in (".qweight", ".qzeros", ".scales")}
        bits = 4 if awq else hq.bits
        qw_shape = shapes[".qweight"]
        if hq.partial and len(qw_shape) == 2 and (32 * qw_shape[0]) % cols == 0 and 32 * qw_shape[0] // cols in (4, 8):
            bits = 32 * qw_shape[0] // cols  # GPTQModel's `dynamic` may set bits per module
        per = 32 // bits
        group = hq.group if hq.group > 0 else cols
        n_groups = math.ceil(cols / group)
        s_shape = shapes[".scales"]
        if hq.partial and len(s_shape) == 2 and 0 < s_shape[0] != n_groups and cols % s_shape[0] == 0:
            n_groups, group = s_shape[0], cols // s_shape[0]  # and the group size
        # The output width, as at least two of the three tensors give it (else as the scales do):
        # the one that disagrees is the one reported.
        outs = [sh[1] * m if len(sh) == 2 else None
                for sh, m in ((qw_shape, per if awq else 1), (shapes[".qzeros"], per), (s_shape, 1))]
        out = next((o for o in outs if o is not None and outs.count(o) >= 2), outs[2] if outs[2] is not None else 0)
        if out % per:
            out_file, out_name = self.find(module + ".scales")
            raise self.error(out_file, out_name, f"{out} outputs are not a multiple of {per} (the {bits}-bit packing)")
        if awq:
            qw_want, qw_layout = [cols, out // per], "AWQ gemm packs 8 codes per int32 along the outputs"
        else:
            if cols % per:
                qfile, qname = self.find(module + ".qweight")
                raise self.error(qfile, qname, f"{cols} inputs are not a multiple of {per} (the {bits}-bit packing)")
            qw_want = [cols // per, out]
            qw_layout = f"GPTQ packs {per} {bits}-bit codes per int32 along the inputs"
        _, qname, qw = self.tensor(module, ".qweight", ("I32", "U32"), qw_want, what, qw_layout)
        _, _, qz = self.tensor(module, ".qzeros", ("I32", "U32"), [n_groups, out // per], what,
                               f"[input groups, outputs/{per}]")
        s = self.scales(module, n_groups, out, what)
        z = _unpack_along_cols(qz, bits, awq_order=awq).T.astype(np.int16)
        g_idx = None
        if not awq:
            if hq.format == "gptq":  # v1 stores z - 1
                z = (z + 1) & ((1 << bits) - 1)
            g_idx = self.g_idx(module, cols, n_groups, group, what)
        return _Module(qname, qw, hq.method, cols, np.ascontiguousarray(z), s, group, g_idx, bits)

    def g_idx(self, module: str, cols: int, n_groups: int, group: int, what: str) -> np.ndarray | None:
        got = self.tensor(module, ".g_idx", ("I32", "I64", "U32"), [cols], what, "the group of each input")
        if got is None:
            if self.hq.desc_act:
                qfile, _ = self.find(module + ".qweight")
                raise TensorError(f"{qfile}: tensor '{module}.g_idx' is missing: desc_act (act-order) GPTQ "
                                  "needs the group of each input", file=qfile, field=module + ".g_idx")
            return None
        file, tensor, gi = got
        gi = gi.astype(np.int64)
        if gi.size and (gi.min() < 0 or gi.max() >= n_groups):
            raise self.error(file, tensor, f"group indices must lie in [0, {n_groups}), found "
                                           f"[{gi.min()}, {gi.max()}]")
        return None if np.array_equal(gi, np.arange(cols) // group) else gi


# ---- roles -------------------------------------------------------------------------------

def _role_shape(arch, role: str) -> tuple[int, int]:
    hd = arch.head_dim
    expert = _EXPERT_ROLE.fullmatch(role)
    if expert:
        e = arch.expert_intermediate_size
        return (2 * e, arch.hidden_size) if expert.group(1) == "up" else (arch.hidden_size, e)
    # A mixture of experts' own up/down are its shared expert's.
    f = arch.shared_expert_size if arch.num_experts else arch.intermediate_size
    return {
        "qkv.weight": ((arch.num_heads + 2 * arch.num_kv_heads) * hd, arch.hidden_size),
        "o.weight": (arch.hidden_size, arch.num_heads * hd),
        "up.weight": ((2 if arch.gated_mlp else 1) * f, arch.hidden_size),
        "down.weight": (arch.hidden_size, f),
        "lm_head": (arch.vocab_size, arch.hidden_size),
    }[role]


def _blocks(parts: list[_Module], cols: int):
    """(type, group, codes, scale, min) holding the parts exactly, stacked along the rows, or
    the reason they cannot be held (a string)."""
    for p in parts:
        if p.g_idx is not None:
            return "act-order (desc_act): g_idx does not follow contiguous groups"
        if p.group % 32 or cols % p.group:
            return f"group size {p.group} is not a multiple of 32 dividing the {cols} inputs"
    if cols % 64:
        return f"{cols} inputs are not a multiple of 64"
    group = next(g for g in (128, 64, 32) if all(p.group % g == 0 for p in parts))
    if any(p.bits == 8 for p in parts):
        qtype = Q8
    elif all((p.z == 8).all() for p in parts):
        qtype = Q4
    else:
        qtype = Q4ASYM
    codes, scales, mins = [], [], []
    for p in parts:
        rep = p.group // group
        s = np.repeat(p.s, rep, axis=1)
        z = np.repeat(p.z, rep, axis=1)
        if qtype == Q8:
            u = p.codes().astype(np.int16)
            u -= np.repeat(z, group, axis=1)
            u += 128
            if u.min() < 0 or u.max() > 255:
                return "8-bit codes minus zero points leave int8's range"
            codes.append(u.astype(np.uint8))
        else:
            codes.append(p.q4())
        if qtype == Q4ASYM:
            with np.errstate(over="ignore"):
                m = (-(s.astype(np.float32) * z.astype(np.float32))).astype(np.float16)  # s*z exact in float32
            if not np.isfinite(m).all():
                return "scale x zero point overflows float16"
            mins.append(m)
        scales.append(s)
    return (qtype, group, np.concatenate(codes), np.concatenate(scales),
            np.concatenate(mins) if mins else None)


def _choice(used: list[tuple[int, int]]) -> QuantChoice | None:
    names = []
    for qtype, group in used:
        name = TYPE_NAMES[qtype] + ("" if group == 32 else f"-g{group}")
        if name not in names:
            names.append(name)
    if not names:
        return None
    return QuantChoice(name="+".join(names), type=used[0][0], group=used[0][1], head_type=None)


@dataclass
class Converted:
    sources: list          # the core Model's sources, every role of the architecture, in order
    choice: QuantChoice | None

    def drain(self):
        """The sources in order, each forgotten as it is taken: the core copies one role, then
        its arrays are freed, so the converted blocks and the loaded model never both fill memory."""
        self.sources.reverse()
        while self.sources:
            yield self.sources.pop()


def convert(hq: HfQuant, family, arch, locations: dict[str, str], model_dir: str, threads: int = 1) -> Converted:
    """The core sources for an AWQ / GPTQ checkpoint, the converted blocks as numpy arrays.
    Roles are repacked on up to `threads` threads (numpy releases the GIL), at most 4."""
    reader = _Reader(hq, locations, model_dir)
    with ThreadPoolExecutor(max_workers=max(1, min(threads, 4))) as pool:
        try:
            roles = list(family.tensors(arch))
            pending = {}
            for i, (role, layer, parts) in enumerate(roles):
                if _is_matrix(role):
                    what = role if layer < 0 else f"{role} of layer {layer}"
                    plan = _plan(reader, role, layer, parts, what)
                    if plan is not None:
                        pending[i] = pool.submit(_matrix_source, reader, arch, role, layer, plan, what)
            total = len(pending)
            sources, used, fallback, as_float = [], [], [], []
            for i, (role, layer, parts) in enumerate(roles):
                what = role if layer < 0 else f"{role} of layer {layer}"
                if i in pending:
                    source, kind, info = pending.pop(i).result()
                    sources.append(source)
                    if kind == "blocks":
                        used.append(info)
                    elif kind == "fallback":
                        used.append((Q8, FALLBACK_GROUP))
                        fallback.append((what, info))
                    else:
                        as_float.append((what, info))
                    continue
                sources.append(float_source(locations, role, layer, parts, model_dir))
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    _warn(hq, model_dir, total, fallback, as_float)
    return Converted(sources, _choice(used))


def _warn(hq: HfQuant, model_dir: str, total: int, fallback: list, as_float: list) -> None:
    if not fallback and not as_float:
        return
    msg = []
    if fallback:
        reasons = sorted({r for _, r in fallback})
        msg.append(f"{len(fallback)} of {total} {hq.label} matrices ({_some(fallback)}) cannot keep their blocks "
                   f"({'; '.join(reasons)}): they were dequantized and re-quantized to int8 in groups of "
                   f"{FALLBACK_GROUP} inputs, which moves each weight by at most half an int8 step "
                   "(max |w| of its group / 254)")
    if as_float:
        reasons = sorted({r for _, r in as_float})
        msg.append(f"{len(as_float)} of {total} {hq.label} matrices ({_some(as_float)}) load as float, "
                   f"dequantized exactly ({'; '.join(reasons)})")
    warnings.warn(f"{model_dir}: " + "; ".join(msg), QuantizationWarning, stacklevel=4)


def _some(items: list) -> str:
    names = [w for w, _ in items]
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _plan(reader: _Reader, role: str, layer: int, parts, what: str):
    """[(kind "q" | "f", module or tensor name, transpose)] for a matrix role, or None when
    every module of the role is float (it then loads as any float checkpoint's)."""
    hq = reader.hq
    plan = []
    for name, transpose in parts:
        module = name[: -len(".weight")] if name.endswith(".weight") else name
        q = reader.find(module + ".qweight")
        if q is not None and not hq.declares_float(q[1][: -len(".qweight")]):
            plan.append(("q", q[1][: -len(".qweight")], transpose))
        elif layer < 0 or hq.declares_float(module) or (hq.partial and reader.find(name) is not None):
            plan.append(("f", name, transpose))
        else:
            files = sorted({os.path.basename(p) for p in reader.locations.values()})
            declared = ("modules_to_not_convert" if hq.method == "awq"
                        else "dynamic or modules_in_block_to_quantize")
            raise TensorError(
                f"{reader.model_dir}: tensor '{module}.qweight' (needed for {what}) is not in "
                f"{', '.join(files)}: a {hq.label} checkpoint quantizes every linear layer that "
                f"quantization_config does not exclude ({declared})",
                file=reader.model_dir, field=module + ".qweight")
    return plan if any(kind == "q" for kind, _, _ in plan) else None


def _matrix_source(reader: _Reader, arch, role: str, layer: int, plan, what: str):
    """(source, kind, info): the role's blocks ("blocks", (type, group)), its int8
    re-quantization ("fallback", reason) or its float weights ("float", reason)."""
    rows, cols = _role_shape(arch, role)
    loaded = []
    for kind, name, transpose in plan:
        if kind == "q":
            loaded.append(reader.module(name, cols, what))
        else:
            file, tensor = resolve(reader.locations, name, reader.model_dir, what)
            w = _core.safetensors_read_tensor(file, tensor)
            if w.dtype == np.uint16:
                w = (w.astype(np.uint32) << 16).view(np.float32)
            w = np.asarray(w, np.float32)
            if w.ndim != 2 or (w.shape[0] if transpose else w.shape[1]) != cols:
                raise TensorError(f"{file}: tensor '{tensor}': shape {list(w.shape)} does not fit {what}: "
                                  f"expected {cols} inputs", file=file, field=tensor)
            loaded.append(np.ascontiguousarray(w.T) if transpose else w)
    # The label names the arrays in messages, the core's included.
    label = " + ".join(p.name if isinstance(p, _Module) else n for p, (_, n, _) in zip(loaded, plan))
    got_rows = sum(p.rows if isinstance(p, _Module) else p.shape[0] for p in loaded)
    if got_rows != rows:
        first = reader.find(plan[0][1] + (".qweight" if plan[0][0] == "q" else ""))
        file = first[0] if first else reader.model_dir
        raise TensorError(f"{file}: {label} give {got_rows} outputs for {what} of {arch.family}, expected {rows}",
                          file=file, field=label)

    if all(isinstance(p, _Module) for p in loaded):
        blocks = _blocks(loaded, cols)
        if not isinstance(blocks, str):
            qtype, group, codes, scale, mn = blocks
            return (role, layer, [(label, (codes, scale, mn), False)], qtype, group), "blocks", (qtype, group)
        reason = blocks
        w = np.concatenate([p.dequantize() for p in loaded])
        if cols % 64 == 0:
            codes, scale = _quantize_q8(w, FALLBACK_GROUP)
            return (role, layer, [(label, (codes, scale, None), False)], Q8, FALLBACK_GROUP), "fallback", reason
    else:
        reason = "the role mixes quantized and float modules"
        w = np.concatenate([p.dequantize() if isinstance(p, _Module) else p for p in loaded])
    return (role, layer, [(label, w, False)], None, 0), "float", reason
