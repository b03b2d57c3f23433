"""4-bit block quantization in the layout of onnxruntime's MatMulNBits (com.microsoft).

A weight W [N, K] (output rows, input columns) is cut along K into blocks of `block_size`;
each block keeps one float scale and 4-bit codes packed two per byte, low nibble first.
Symmetric: the implied zero point is 8, and the value of largest magnitude maps to code 0
exactly (scale = that value / -8), the choice onnxruntime's own quantizer makes, so the
codes use the full range on the side that matters most.
"""

from __future__ import annotations

import numpy as np

BITS = 4
DEFAULT_BLOCK_SIZE = 32


def check_block_size(block_size: int) -> None:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 16 or \
            block_size & (block_size - 1):
        from llmos.errors import InvalidInputError

        raise InvalidInputError(f"block_size: expected a power of two >= 16, got {block_size!r}", field="block_size")


def quantize_int4(w: np.ndarray, block_size: int = DEFAULT_BLOCK_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """W [N, K] float -> (codes uint8 [N, K_blocks, block_size / 2], scales float32 [N, K_blocks])."""
    n, k = w.shape
    blocks = -(-k // block_size)
    padded = np.zeros((n, blocks * block_size), np.float32)
    padded[:, :k] = w
    b = padded.reshape(n, blocks, block_size)
    idx = np.abs(b).argmax(axis=2)
    vmax = np.take_along_axis(b, idx[..., None], axis=2)[..., 0]
    scales = (vmax / np.float32(-8.0)).astype(np.float32)
    safe = np.where(scales == 0, np.float32(1.0), scales)
    q = np.clip(np.rint(b / safe[..., None]) + 8, 0, 15).astype(np.uint8)
    packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
    return packed, scales


def dequantize_int4(codes: np.ndarray, scales: np.ndarray, k: int, block_size: int,
                    zero_points: np.ndarray | None = None) -> np.ndarray:
    """The inverse of quantize_int4 (and of any MatMulNBits 4-bit weight): [N, K] float32.

    zero_points: absent (8), packed uint8 4-bit [N * ceil(K_blocks / 2)], or one value per
    block [N, K_blocks] of the scales' type.
    """
    n, blocks = codes.shape[0], codes.shape[1]
    q = np.empty((n, blocks, block_size), np.float32)
    q[..., 0::2] = codes & 0x0F
    q[..., 1::2] = codes >> 4
    scales = np.asarray(scales, np.float32).reshape(n, blocks)
    if zero_points is None:
        zp = np.full((n, blocks), 8.0, np.float32)
    elif zero_points.dtype == np.uint8 and zero_points.size == n * ((blocks + 1) // 2):
        packed = zero_points.reshape(n, (blocks + 1) // 2)
        zp = np.empty((n, 2 * packed.shape[1]), np.float32)
        zp[:, 0::2] = packed & 0x0F
        zp[:, 1::2] = packed >> 4
        zp = zp[:, :blocks]
    else:
        zp = np.asarray(zero_points, np.float32).reshape(n, blocks)
    w = (q - zp[..., None]) * scales[..., None]
    return w.reshape(n, blocks * block_size)[:, :k]


def dequantize_int8(codes: np.ndarray, scales: np.ndarray, k: int, block_size: int,
                    zero_points: np.ndarray | None = None) -> np.ndarray:
    """An 8-bit MatMulNBits weight (codes uint8 [N, K_blocks, block_size]) as [N, K] float32.

    zero_points: absent (128), uint8 one per block, or one value per block of the scales' type.
    """
    n, blocks = codes.shape[0], codes.shape[1]
    q = codes.reshape(n, blocks, block_size).astype(np.float32)
    scales = np.asarray(scales, np.float32).reshape(n, blocks)
    zp = np.full((n, blocks), 128.0, np.float32) if zero_points is None else \
        np.asarray(zero_points, np.float32).reshape(n, blocks)
    w = (q - zp[..., None]) * scales[..., None]
    return w.reshape(n, blocks * block_size)[:, :k]
