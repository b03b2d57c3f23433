"""The CPU kernel levels (cpp/core/cpu_features.h), lowest first, as pytest parameters.

A level this CPU cannot run stays in the parameter list as a SKIPPED case that names the level
and the CPU's best, so a run on a narrower CPU says what it did not test instead of quietly
testing less."""

import pytest

from llmos import _core

LEVELS = ("scalar", "avx2", "avx512", "avx512_vnni", "avx512_bf16", "amx")
BEST = _core.cpu_best_isa()
# A CPU outside this list (another architecture) runs only the scalar kernels of it.
RUNNABLE = LEVELS[: LEVELS.index(BEST) + 1] if BEST in LEVELS else ("scalar",)


def level_params(*, scalar=True):
    """Every level as a parameter, those above this CPU's best marked skip with the reason."""
    return [pytest.param(level, marks=pytest.mark.skipif(
                level not in RUNNABLE, reason=f"kernel level {level} NOT tested: this CPU's best is {BEST}"))
            for level in LEVELS if scalar or level != "scalar"]


# The levels whose int8 prefill GEMM takes 7-bit activation codes (KernelTable::qgemm_acts7_types,
# cpp/kernels/qgemm_avx2.cc): int8 products there round activations twice as coarsely as
# elsewhere, so tests that hold int8 logits to a reference take a wider bound at these levels.
INT8_ACTS7_LEVELS = ("avx2", "avx512")


def int8_acts7_active() -> bool:
    """Whether this process's kernels (LLMOS_CPU_ISA or the CPU's best) are such a level."""
    return _core.cpu_isa() in INT8_ACTS7_LEVELS
