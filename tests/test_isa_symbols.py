"""The objects compiled with wider -m flags share no code with the baseline (kernels/kernels.h).

The hazard: an inline function or template instance is emitted by every object that uses it
as a weak / COMDAT symbol (nm types W, V, u), and the linker keeps one copy for all callers.
If an AVX-512 object and a baseline object both emit one, a baseline caller may get the
AVX-512 copy and die of an illegal instruction on a CPU without AVX-512. A strong symbol is
no better: baseline code calling it runs wide code unconditionally.

The linked `_core` cannot show this: it is stripped, and its weak copies are already merged
with nothing left to say where each came from. So the check reads the objects of the build
that produced the loaded `_core` (found by content under build/), with nm (through the LTO
plugin for -flto objects): every *_avx2.cc / *_avx512*.cc / *_amx.cc object may define
externally only its llmos::fill_* entry points and names in its own namespace
llmos::simd::<isa>, which only objects with the same flags compile.
"""

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from llmos import _core

ROOT = Path(__file__).resolve().parents[1]
ISAS = ("avx2", "avx512", "avx512vnni", "avx512bf16", "amx")  # file suffixes (CMakeLists.txt)


def _digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _build_dir():
    """The CMake build tree whose _core is the one imported, or None."""
    so = Path(_core.__file__).resolve()
    want = _digest(so)
    override = os.environ.get("LLMOS_BUILD_DIR")
    candidates = [Path(override)] if override else [so.parent, *sorted((ROOT / "build").glob("*"))]
    for d in candidates:
        if (d / "CMakeFiles" / "_core.dir").is_dir() and any(_digest(s) == want for s in d.glob("_core*.so")):
            return d
    return None


def _defined_globals(obj):
    """[(nm type, mangled name, demangled name)] of the external symbols `obj` defines."""
    def run(*flags):
        out = subprocess.run(["nm", "-g", "--defined-only", "-p", *flags, str(obj)], capture_output=True,
                             text=True, check=True).stdout
        return [line.split(" ", 2)[1:] for line in out.splitlines() if line.strip()]
    mangled, demangled = run(), run("-C")
    assert len(mangled) == len(demangled)
    return [(t, m, d) for (t, m), (_, d) in zip(mangled, demangled)]


def _own_namespace(isa):
    # _Z, an optional special-name prefix (vtable, typeinfo, guard variable, TLS), then a
    # nested name (with cv / ref qualifiers) starting llmos::simd::<isa>.
    return re.compile(rf"^_Z(?:T[VTIS]|GV|GR|T[HW])?N[rVKRO]*5llmos4simd{len(isa)}{isa}")


FILL = re.compile(r"^_ZN5llmos\d+fill_\w+E")


def _isa_sources():
    return sorted(p for isa in ISAS for p in (ROOT / "cpp").rglob(f"*_{isa}.cc"))


def test_isa_objects_define_only_their_entry_points():
    if shutil.which("nm") is None:
        pytest.skip("ISA symbols NOT checked: `nm` (binutils) is not installed")
    build = _build_dir()
    if build is None:
        pytest.skip(f"ISA symbols NOT checked: no CMake build tree under {ROOT / 'build'} produced the imported "
                    f"{_core.__file__} (set LLMOS_BUILD_DIR to the one that did)")
    sources = _isa_sources()
    assert sources, "no *_avx2.cc / *_avx512*.cc / *_amx.cc sources found"
    problems = []
    for src in sources:
        isa = src.stem.rsplit("_", 1)[1]
        obj = build / "CMakeFiles" / "_core.dir" / (str(src.relative_to(ROOT)) + ".o")
        assert obj.is_file(), f"{obj} is missing: rebuild {build}"
        symbols = _defined_globals(obj)
        own = _own_namespace(isa)
        entry = [d for t, m, d in symbols if t == "T" and FILL.match(m)]
        # Also proves nm read the real symbol table (a slim LTO object read without the
        # plugin shows only __gnu_lto_slim).
        if not entry:
            problems.append(f"{src.name}: no llmos::fill_* entry point among {[d for _, _, d in symbols]}")
        for t, m, d in symbols:
            if own.match(m) or (t == "T" and FILL.match(m)):
                continue
            problems.append(f"{src.name}: {t} {d}")
    assert not problems, (
        "ISA objects define external symbols outside llmos::simd::<isa> (a baseline object may define the "
        "same name, and the linker would keep one copy for both):\n  " + "\n  ".join(problems))
