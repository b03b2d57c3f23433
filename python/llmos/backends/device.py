"""`device=` of `llmos.load`: which processor runs the model.

"cpu", "cuda" (GPU 0), "cuda:N", or "auto" (the default): the GPU when the backend can use one,
else the CPU. CUDA is a device of the core backend, not a backend of its own (docs/architecture.md,
"The backend seam"): `_core` is built with or without the CUDA kernels (`_core.cuda_built()`) and
counts the GPUs the driver shows (`_core.cuda_device_count()`, 0 without a driver). A checkpoint
loads on the host, then `_core.Model.to_device` copies its weights to the GPU, where every forward
runs from then on (cpp/model/decoder_cuda.h says which architectures do; the others stay on the
CPU under "auto" and are refused under "cuda"). ONNX models follow `device` through
onnxruntime's execution providers (backends/onnx/backend.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llmos import _core
from llmos.errors import DeviceUnavailableError, InvalidInputError

# --device of the CLI commands that load a model
DEVICE_HELP = "where to run: auto (default: the GPU when the model can use one, else the CPU), cpu, cuda or cuda:N"
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


def core_device(device: Device, what: str) -> Device:
    """Where the core backend should run the model `what` for `device`: "cpu" for "cpu"; for
    "auto" the first GPU when the core can use one (a CUDA build, a driver, a GPU), else the CPU;
    "cuda[:N]" that GPU, or DeviceUnavailableError saying why it cannot be used. Whether the
    model's architecture runs on the GPU is known after its weights load (`place`)."""
    if device.kind == "cpu":
        return Device("cpu")
    reason = _core.cuda_unavailable_reason(device.index)  # "" when the core could use that GPU
    if device.kind == "auto":
        return Device("cpu") if reason else Device("cuda", 0)
    if reason:
        raise DeviceUnavailableError(f"device: {what} cannot run on {device}: {reason}", field="device")
    return device


def place(core: "_core.Model", device: Device, requested: Device, what: str) -> str:
    """Moves the loaded core model onto `device` (from core_device) and returns where it runs
    ("cpu" or "cuda:N"). A model whose architecture the GPU path does not run yet stays on the
    CPU when the GPU was only chosen by "auto", and is refused with the reason when "cuda" was
    asked for."""
    if device.kind != "cuda":
        return "cpu"
    why = _core.Model.cuda_unsupported(core)
    if why:
        if requested.kind == "auto":
            return "cpu"
        raise DeviceUnavailableError(f"device: {what} cannot run on {device}: {why}", field="device")
    core.to_device(device.index)
    return str(device)
