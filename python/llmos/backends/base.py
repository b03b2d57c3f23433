"""The backend seam: what `llmos.Model` needs from whatever runs the network.

A backend owns the weights and the per-token work (forward passes, the decode loop, sampling);
`Model` (llmos.runtime) owns everything per request: prompts, options, chat templates, text,
streaming and stop strings. Two backends exist: the C++ core (`backends.cpu`; CUDA will be a
device of the same core, chosen by where its tensors live) and onnxruntime (`backends.onnx`).
No backend imports `Model`.
"""

from __future__ import annotations

import numbers
import os
from typing import Callable, Optional, Protocol, Sequence

import numpy as np

from llmos import limits
from llmos.errors import InvalidInputError

# on_token(sequence index, token id) -> True to stop that sequence. Called from the decode
# loop's thread, with the GIL taken only for the call.
OnToken = Callable[[int, int], bool]


class Backend(Protocol):
    name: str     # "cpu" (the C++ core) or "onnx"
    device: str   # where it runs: "cpu", or "cuda:N" (backends/device.py)
    dtype: str    # what the weights are stored as: float32, bfloat16, float16
    quant: object  # llmos.quant.names.QuantChoice of the matrices, or None

    @property
    def threads(self) -> int: ...

    @property
    def isa(self) -> str:
        """Where the kernels run: the CPU kernel set (scalar/avx2/avx512/avx512_vnni/avx512_bf16/amx)
        or the onnxruntime provider."""

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """[n, vocab] float32 logits for every position of `ids` (int64), fresh context."""

    def generate(self, prompts: Sequence[Sequence[int]], options, on_token: Optional[OnToken] = None,
                 cancel=None, constraints=None) -> list[dict]:
        """The whole decode loop for a batch: `options` is a `_core.DecodeOptions`; returns one
        dict per sequence (prompt_index, tokens, finish_reason, logprobs, top_logprobs, score).
        cancel: a `_core.CancelToken` (or None), polled at every step; once it is cancelled the
        call raises CancelledError. Ctrl-C on the main thread must end the call as promptly.
        constraints: None, or one `_core.TokenConstraint` (or None) per sequence (prompt-major):
        the sampler allows only the tokens of its mask, and each chosen token is accepted."""


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads share a core's SIMD units)."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        base = f"/sys/devices/system/cpu/cpu{cpu}/topology/"
        try:
            with open(base + "physical_package_id") as f:
                pkg = f.read().strip()
            with open(base + "core_id") as f:
                core = f.read().strip()
            cores.add((pkg, core))
        except OSError:
            cores.add(("cpu", str(cpu)))
    return max(1, len(cores))


def check_threads(threads) -> int:
    """`threads` as given (an integer from 1 to llmos.limits.max_threads), or the physical core
    count (within that limit) for None. Checked here, before the core starts any thread: the
    core refuses more than its own pool limit too, but a Python int beyond C int would reach it
    as a bare TypeError."""
    if threads is None:
        return min(physical_cores(), limits.current().max_threads)
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or threads < 1:
        raise InvalidInputError(f"threads: expected an integer >= 1, got {threads!r}", field="threads")
    limits.check("max_threads", int(threads), what="threads")
    return int(threads)
