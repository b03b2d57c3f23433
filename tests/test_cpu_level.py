"""The kernel level the core picks for this CPU is the one /proc/cpuinfo says it can run.

Computed independently of the core's CPUID reading: Linux lists a feature in /proc/cpuinfo only
when the CPU has it and the kernel saves its register state (it drops the AVX-512 flags when
XSAVE does not cover the ZMM registers), which is what the core checks through XGETBV. The one
thing cpuinfo cannot say is AMX permission: Linux hands the tile state to a process only on
request (arch_prctl ARCH_REQ_XCOMP_PERM), which a kernel before 5.16 or a seccomp filter refuses.
So on a CPU listing AMX the expected level is amx if that request succeeds here and avx512_bf16
if it is refused, and the test says which.
"""

import ctypes
import os
import platform

import pytest

from isa_levels import LEVELS
from llmos import _core

# Each level's features on top of the one before (cpp/core/cpu_features.h), as cpuinfo names them.
NEEDS = {
    "avx2": {"avx2", "fma", "f16c"},
    "avx512": {"avx512f", "avx512bw", "avx512vl", "avx512dq"},
    "avx512_vnni": {"avx512_vnni"},
    "avx512_bf16": {"avx512_bf16"},
    "amx": {"amx_tile", "amx_int8", "amx_bf16"},
}


def cpuinfo_flags():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def amx_permitted():
    sys_arch_prctl, arch_req_xcomp_perm, xfeature_xtiledata = 158, 0x1023, 18
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.syscall(sys_arch_prctl, arch_req_xcomp_perm, xfeature_xtiledata) == 0


def expected_level(flags):
    best = "scalar"
    for level in LEVELS[1:]:
        if not NEEDS[level] <= flags:
            break
        if level == "amx" and not amx_permitted():
            print("AMX listed in /proc/cpuinfo but the OS refused this process the tile state")
            break
        best = level
    return best


@pytest.mark.skipif(platform.machine() != "x86_64" or not os.path.exists("/proc/cpuinfo"),
                    reason="level NOT checked: needs x86-64 Linux (/proc/cpuinfo)")
def test_the_chosen_level_is_the_best_cpuinfo_allows():
    assert _core.cpu_best_isa() == expected_level(cpuinfo_flags())

