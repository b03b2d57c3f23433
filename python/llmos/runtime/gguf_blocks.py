"""A quantized GGUF file as an llmos pre-quantized checkpoint (the format llmos.quantize writes,
runtime/quantize.py): the blocks the model runs with are written straight from the file's.

Per weight role (q|k|v and gate|up are fused along the output rows, as the core fuses them; each
expert's gate|up and down are roles of their own, cut from the file's stacked [expert, rows, cols]
tensors; routers stay float), by the GGML types of its parts; every llmos group is 32 inputs:

  Q4_0 only             int4 (Q4): the same codes u in [0, 15], zero point 8 and float16 scale;
                        only the nibble order changes (GGUF: byte j of a 32-value block holds
                        u[j] | u[j+16] << 4; llmos: byte j of a 64-value chunk u[j] | u[j+32] << 4).
                        Exact.
  Q8_0, or Q8_0 and     int8 (Q8): u = q + 128 with the same scale; a Q4_0 block is the int8
  Q4_0 mixed            block u = u4 + 120. Exact (Q8_0's -128, which llama.cpp never writes, is
                        u = 0, still a code the kernels read).
  Q4_K, or Q4_K and     int4-asym (Q4Asym): Q4_K's 32-value sub-blocks are w = d*sc * q - dmin*m
  Q4_0 mixed            with 4-bit q packed per 64 values exactly as llmos packs them, so the codes
                        are copied and each group gets scale float16(d*sc) and min
                        float16(-dmin*m) (Q4_0: min -8 d, exact). The only error is those two
                        float16 roundings: |dw| <= 2^-12 (15 |d sc| + |dmin m|); measured on
                        random Q4_K blocks, max 0.0012 and mean 0.0001 of the largest |w| of the
                        group (bound asserted by the tests: 0.002 / 0.0002). A role whose
                        products leave float16 is re-quantized as below.
  anything else with a  dequantized by the gguf package and re-quantized to int8 by the core's
  quantized part        quantizer (the blocks llmos.load(quant="int8") makes): Q5_K, Q6_K, and
  (Q5_K, Q6_K, Q8_0     mixes such as Q4_K q/k with a Q6_K v (llama.cpp's Q4_K_M): int8 keeps
  with Q4_K, a float    the 5-6 bit parts' precision, which int4 would not. Error: at most half an
  part...)              int8 step plus the float16 rounding of the scale: |dw| <= (1 + 2^-11) / 254
                        of the largest |w| of the group while its scale is a normal float16
                        (largest |w| >= 127 * 2^-14), and <= max|w| / 254 + 127 * 2^-25 below
                        that. Measured on random Q5_K / Q6_K blocks: max 0.0039, mean 0.0019 of
                        the largest |w| (bounds asserted by the tests: 1.001 / 254 and 0.0021; a
                        uniform rounding error averages a quarter step, 1/508 = 0.00197).
  float parts only      kept in float as the file stores them (F32, F16, BF16).

A role whose input width is not a multiple of 64 (llmos's block chunk) cannot be held by the
blocks: it loads in float, dequantized exactly, as the loader keeps any such matrix float (K-quant
widths are multiples of 256 by construction). llama.cpp's Q/K rope permutation moves
whole rows, so it is undone on the blocks' rows exactly as on floats. The embedding and the LM head
follow the same rules (a Q4_0 embedding stays int4, as the file has it).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmos import _core
from llmos.arch.families import family_for
from llmos.errors import InvalidInputError
from llmos.io.config import ConfigReader
from llmos.quant.names import QuantType

Q8, Q4, Q4ASYM = QuantType.Q8, QuantType.Q4, QuantType.Q4Asym
GROUP = 32
CHUNK = 64  # llmos packs 4-bit codes per 64 values (cpp/quant/qformat.h)
MATRIX_ROLES = ("embed", "lm_head", "qkv.weight", "o.weight", "up.weight", "down.weight")
EXPERT_MATRICES = ("up.weight", "down.weight")  # experts.<e>.<these>; the router stays float
FLOAT_TYPES = ("F32", "F16", "BF16")
TYPE_NAMES = {Q8: "int8", Q4: "int4", Q4ASYM: "int4-asym"}


# ---- one tensor's blocks -----------------------------------------------------------------

def _blocks(raw: np.ndarray, rows: int, cols: int, size: int) -> np.ndarray:
    """The tensor's bytes as [rows, cols / 32, size] blocks (each a float16 scale, then codes)."""
    return np.asarray(raw, np.uint8).reshape(rows, cols // GROUP, size)


def _scales(b: np.ndarray) -> np.ndarray:
    """The float16 scale of each block, as its uint16 bits [rows, cols / 32]."""
    return np.ascontiguousarray(b[..., :2]).view(np.uint16)[..., 0]


def q8_0_to_q8(raw: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Q8_0 blocks (float16 d, 32 int8 q) -> llmos Q8 codes u = q + 128 [rows, cols], scales."""
    b = _blocks(raw, rows, cols, 34)
    return (b[..., 2:] ^ np.uint8(0x80)).reshape(rows, cols), _scales(b)


def _q4_0_codes(b: np.ndarray) -> np.ndarray:
    """Q4_0 blocks [rows, n, 18] -> codes u [rows, n, 32], one per byte."""
    qs = b[..., 2:]
    return np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=-1)


def q4_0_to_q4(raw: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Q4_0 blocks (float16 d, 16 bytes: byte j = u[j] | u[j+16] << 4) -> llmos Q4 bytes
    [rows, cols / 2] (per 64 values, byte j = u[j] | u[j+32] << 4), scales. cols % 64 == 0."""
    b = _blocks(raw, rows, cols, 18)
    u = _q4_0_codes(b).reshape(rows, cols // CHUNK, 2, 32)  # the two blocks of each chunk
    packed = u[:, :, 0, :] | (u[:, :, 1, :] << np.uint8(4))
    return packed.reshape(rows, cols // 2), _scales(b)


def q4_0_to_q8(raw: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Q4_0 blocks as llmos Q8: q = u - 8 is u8 = u + 120 with the same scale (exact)."""
    b = _blocks(raw, rows, cols, 18)
    return (_q4_0_codes(b) + np.uint8(120)).reshape(rows, cols), _scales(b)


def q4_k_to_q4asym(raw: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_K super-blocks (256 values: float16 d and dmin, 12 bytes of 6-bit sub-block scales sc and
    mins m, 128 bytes of codes) -> llmos Q4Asym codes, scales float16(d * sc), mins
    float16(-dmin * m), per 32 values. Q4_K packs each 64 values as llmos does (byte j: u[j] low
    nibble, u[j + 32] high), so the codes are copied as they are. cols % 256 == 0."""
    from gguf.quants import Q4_K

    b = np.asarray(raw, np.uint8).reshape(rows * (cols // 256), 144)
    d = np.ascontiguousarray(b[:, 0:2]).view(np.float16).astype(np.float32)
    dmin = np.ascontiguousarray(b[:, 2:4]).view(np.float16).astype(np.float32)
    sc, m = Q4_K.get_scale_min(np.ascontiguousarray(b[:, 4:16]))
    with np.errstate(over="ignore"):
        scale = (d * sc.astype(np.float32)).astype(np.float16)
        mins = (-(dmin * m.astype(np.float32))).astype(np.float16)
    codes = np.ascontiguousarray(b[:, 16:]).reshape(rows, cols // 2)
    return codes, scale.view(np.uint16).reshape(rows, cols // GROUP), mins.view(np.uint16).reshape(rows, cols // GROUP)


def q4_0_to_q4asym(raw: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_0 blocks as llmos Q4Asym: the Q4 codes and scales, min = -8 d (exact in float16 while finite)."""
    codes, scale = q4_0_to_q4(raw, rows, cols)
    with np.errstate(over="ignore"):
        mins = (scale.view(np.float16).astype(np.float32) * np.float32(-8)).astype(np.float16)
    return codes, scale, mins.view(np.uint16)


# ---- one role ----------------------------------------------------------------------------

@dataclass
class RoleBlocks:
    qtype: QuantType
    codes: np.ndarray        # uint8 [rows, quant_row_bytes]
    scale: np.ndarray        # uint16 (float16 bits) [rows, cols / 32]
    min: np.ndarray | None   # uint16 (float16 bits) [rows, cols / 32], Q4Asym only
    how: str                 # "exact" | "mapped" | "requantized"


def _matrix_shape(t, expert: int | None) -> tuple[int, int] | None:
    """(rows, cols) of a 2-D GGUF tensor, or of one expert of a stacked 3-D one (GGUF shapes are
    [cols, rows(, experts)]); None otherwise."""
    shape = [int(d) for d in t.shape]
    want = 3 if expert is not None and expert >= 0 else 2
    return (shape[1], shape[0]) if len(shape) == want else None


def _raw(t, expert: int | None) -> np.ndarray:
    """The tensor's bytes, or one expert's of a stacked tensor."""
    return t.data if expert is None or expert < 0 else t.data[expert]


# (GGUF type, llmos type) -> the converter of one tensor's blocks, for the block-mapped roles
_CONVERT = {("Q4_0", Q4): q4_0_to_q4, ("Q4_0", Q8): q4_0_to_q8, ("Q8_0", Q8): q8_0_to_q8,
            ("Q4_0", Q4ASYM): q4_0_to_q4asym, ("Q4_K", Q4ASYM): q4_k_to_q4asym}


def _mapped_type(types: set[str], cols: int) -> tuple[QuantType, str] | None:
    """The llmos type the role's blocks map onto, and how exactly; None: re-quantize."""
    if types <= {"Q4_0"}:
        return Q4, "exact"
    if types <= {"Q4_0", "Q8_0"}:
        return Q8, "exact"
    if types <= {"Q4_0", "Q4_K"} and cols % 256 == 0:
        return Q4ASYM, "mapped"
    return None


def role_blocks(g, cfg: dict, parts: list[str], threads: int) -> RoleBlocks | None:
    """The llmos blocks of the role stacked from transformers tensors `parts` (held by the GGUF
    file's tensors: g.sources()), or None when the role stays float (every part float, a part
    that is not a matrix, or a width the blocks cannot hold)."""
    held = [g.sources()[p] for p in parts]
    tensors = [g.tensors[n] for n, _ in held]
    types = [t.tensor_type.name for t in tensors]
    shapes = [_matrix_shape(t, e) for t, (_, e) in zip(tensors, held)]
    if all(ty in FLOAT_TYPES for ty in types) or any(s is None for s in shapes):
        return None
    cols = shapes[0][1]
    if any(s[1] != cols for s in shapes) or cols % CHUNK:
        return None
    mapped = _mapped_type(set(types), cols)
    if mapped is not None:
        qtype, how = mapped
        blocks = []
        for (name, expert), t, ty, (rows, _) in zip(held, tensors, types, shapes):
            arrays = _CONVERT[(ty, qtype)](_raw(t, expert), rows, cols)
            heads = g.rope_heads(name, cfg)
            if heads is not None:  # whole rows move: the blocks follow them
                arrays = tuple(_unpermute(a, heads) for a in arrays)
            blocks.append(arrays)
        codes, scale, *mins = (np.ascontiguousarray(np.concatenate(a)) for a in zip(*blocks))
        mn = mins[0] if mins else None
        # Q4_K's products d * sc and dmin * m can leave float16 (the file's own scales are kept
        # as they are): such a role is re-quantized below instead.
        if how == "exact" or (np.isfinite(scale.view(np.float16)).all() and np.isfinite(mn.view(np.float16)).all()):
            return RoleBlocks(qtype, codes, scale, mn, how)
    w = np.concatenate([g.hf_array(p, cfg) for p in parts])
    codes, scale, _ = _core.quantize_blocks(w, Q8, GROUP, threads)
    return RoleBlocks(Q8, codes, scale, None, "requantized")


def is_matrix_role(role: str) -> bool:
    """Whether the role is a matrix the blocks can hold (an expert's too); norms, biases and the
    router are not."""
    if role in MATRIX_ROLES:
        return True
    head, _, rest = role.partition(".")
    expert, _, matrix = rest.partition(".")
    return head == "experts" and expert.isdigit() and matrix in EXPERT_MATRICES


def _unpermute(a: np.ndarray, heads: int) -> np.ndarray:
    from llmos.io.gguf import unpermute

    return np.ascontiguousarray(unpermute(a, heads))


# ---- the checkpoint ----------------------------------------------------------------------

def write_checkpoint(g, out_dir: str | os.PathLike, threads: int = 1) -> Path:
    """Writes the GGUF file `g` (llmos.io.gguf.GgufFile, with quantized tensors) as an llmos
    pre-quantized checkpoint folder: config, tokenizer, and model.safetensors holding each matrix
    role's blocks (llmos.<role>[.<layer>].codes / .scale) and the float tensors."""
    from safetensors.numpy import save_file

    from llmos.runtime.quantize import FORMAT_VERSION

    if g.suggested_quant() is None:
        raise InvalidInputError(f"{g.path}: has no quantized tensors to keep as blocks (write_folder "
                                "writes a float checkpoint)", field="path")
    out, cfg = g.write_metadata(out_dir)

    reader = ConfigReader(cfg, str(out / "config.json"))
    family = family_for(reader)
    sources = g.sources()  # every tensor named (an unknown one is refused)
    tensors: dict[str, np.ndarray] = {}
    quantized, report, used = [], {}, set()
    for role, layer, parts in family.tensors(family.architecture(reader)):
        names = [name for name, _ in parts]
        if not is_matrix_role(role) or any(n not in sources for n in names):
            continue  # left to the float tensors below (a missing one is named by the loader)
        blocks = role_blocks(g, cfg, names, threads)
        if blocks is None:
            continue
        base = f"llmos.{role}" + (f".{layer}" if layer >= 0 else "")
        tensors[base + ".codes"] = blocks.codes
        tensors[base + ".scale"] = blocks.scale.view(np.float16)
        if blocks.min is not None:
            tensors[base + ".min"] = blocks.min.view(np.float16)
        quantized.append([role, layer, int(blocks.qtype), GROUP])
        kinds = "+".join(sorted({g.tensors[sources[n][0]].tensor_type.name for n in names}))
        report[base] = f"{blocks.how} {kinds} -> {TYPE_NAMES[blocks.qtype]}"
        used.update(names)
    for hf in sources:
        if hf not in used:
            tensors[hf] = g.hf_array(hf, cfg)
    metadata = {
        "format": "pt",
        "llmos_format": FORMAT_VERSION,
        "llmos_quant": g.suggested_quant(),
        "llmos_quantized": json.dumps(quantized),
        "llmos_gguf": json.dumps(report),  # how each role's blocks came from the file
    }
    save_file(tensors, str(out / "model.safetensors"), metadata=metadata)
    return out


def role_report(folder: str | os.PathLike) -> dict[str, str]:
    """{llmos.<role>[.<layer>]: how its blocks came from the GGUF file} of a folder written by
    write_checkpoint ("exact Q4_0 -> int4", "requantized Q6_K -> int8"...)."""
    _, meta = _core.safetensors_read_header(str(Path(folder) / "model.safetensors"))
    return json.loads((meta or {}).get("llmos_gguf", "{}"))
