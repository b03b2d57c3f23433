"""Finding NaN and infinity in a .safetensors file's float tensors (for `llmos verify`).

A checkpoint with non-finite weights loads fine and then fails at its first token
(errors.NumericalError); this names the tensors at fault without loading the model. The
file is mapped, not read into memory, and each tensor is scanned in slices of bounded size.
Non-finite values are found from the exponent bits (all ones), so float16 and bfloat16 need
no conversion and no floating-point warnings arise.
"""

from __future__ import annotations

import struct

import numpy as np

from llmos import _core

# safetensors dtype -> (integer type of the same width, mask of the exponent bits)
_EXPONENT = {
    "F16": (np.uint16, 0x7C00),
    "BF16": (np.uint16, 0x7F80),
    "F32": (np.uint32, 0x7F800000),
    "F64": (np.uint64, 0x7FF0000000000000),
}
_SLICE = 1 << 24  # elements per scanned slice


def nonfinite_tensors(path: str) -> list[tuple[str, int]]:
    """[(tensor name, number of NaN or infinite values)] of the file's float tensors that have
    any, in header order. Raises SafetensorsError / ModelFileError for a malformed or unreadable file."""
    tensors, _ = _core.safetensors_read_header(path)  # validates the header and every data range
    floats = [t for t in tensors if t["dtype"] in _EXPONENT and t["data_offsets"][1] > t["data_offsets"][0]]
    if not floats:
        return []
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
    data = np.memmap(path, dtype=np.uint8, mode="r")
    out = []
    for t in floats:
        itype, mask = _EXPONENT[t["dtype"]]
        begin, end = (8 + header_len + o for o in t["data_offsets"])
        values = data[begin:end].view(itype)
        bad = 0
        for i in range(0, values.size, _SLICE):
            bad += int(np.count_nonzero((values[i:i + _SLICE] & itype(mask)) == itype(mask)))
        if bad:
            out.append((t["name"], bad))
    return out
