"""`device=` of `llmos.load`: which processor runs the model.

"cpu", "cuda" (GPU 0), "cuda:N", or "auto" (the default): the GPU when the backend can use one,
else the CPU. CUDA is a device of the core backend, not a backend of its own (docs/architecture.md,
"The backend seam"): `_core` is built with or without the CUDA kernels (`_core.cuda_built()`) and
counts the GPUs the driver shows (`_core.cuda_device_count()`, 0 without a driver). The core's
forward pass does not run on the GPU yet, so checkpoints resolve "auto" to the CPU and refuse
"cuda" with the reason; ONNX models follow `device` through onnxruntime's execution providers
(backends/onnx/backend.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llmos import _core
from llmos.errors import DeviceUnavailableError, InvalidInputError

# --device of the CLI commands that load a model
DEVICE_HELP = ("where to run: auto (default: the GPU when the model can use one, else the CPU), cpu, cuda or "
               "cuda:N; checkpoints run on the CPU in this release")
ACCEPTED = '"auto", "cpu", "cuda" or "cuda:N" (N a GPU index from 0)'
_PATTERN = re.compile(r"(auto|cpu|cuda)(?::(\d{1,4}))?")


@dataclass(frozen=True)
class Device:
    kind: str       # "auto", "cpu" or "cuda"
    index: int = 0  # the GPU, for "cuda"

    def __str__(self) -> str:
        return f"cuda:{self.index}" if self.kind == "cuda" else self.kind


def parse_device(device) -> Device:
    """The Device a `device=` argument names; InvalidInputError naming `device` for anything else."""
    if device is None:
        return Device("auto")
    if not isinstance(device, str):
        raise InvalidInputError(f"device: expected {ACCEPTED}, got {device!r}", field="device")
    m = _PATTERN.fullmatch(device)
    if m is None or (m.group(2) is not None and m.group(1) != "cuda"):
        raise InvalidInputError(f"device: expected {ACCEPTED}, got {device!r}", field="device")
    return Device(m.group(1), int(m.group(2) or 0))


# The one thing a CUDA build with a GPU still lacks; said in every refusal of device="cuda" for a checkpoint.
CORE_FORWARD_MISSING = ("the core's forward pass on the GPU is not available in this release (the CUDA kernels "
                        "are built and tested, the decoder does not run on them yet); use device=\"cpu\" or "
                        "\"auto\", or an ONNX export of the model with onnxruntime-gpu (pip install 'llmos[gpu]')")


def core_device(device: Device, what: str) -> Device:
    """Where the core backend runs the model `what` for `device`: the CPU for "auto" and "cpu";
    "cuda" is refused with DeviceUnavailableError saying why (first the device itself, then the
    missing GPU forward pass)."""
    if device.kind != "cuda":
        return Device("cpu")
    reason = _core.cuda_unavailable_reason(device.index)  # "" when the core could use that GPU
    if reason:
        raise DeviceUnavailableError(f"device: {what} cannot run on {device}: {reason}", field="device")
    raise DeviceUnavailableError(f"device: {what} cannot run on {device}: {CORE_FORWARD_MISSING}", field="device")
