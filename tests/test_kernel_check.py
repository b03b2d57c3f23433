"""tests/cpp/kernel_check, the Python-free kernel driver .ci/arm64 runs under qemu, built and run
natively here so the driver itself is tested: at each ISA this CPU has it must find the level
asked for and report no kernel off the scalar reference (its metrics: its header comment)."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from isa_levels import BEST, level_params

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("SKIPPED LOUDLY: no g++ to build tests/cpp/kernel_check")
    out = tmp_path_factory.mktemp("kc") / "kernel_check"
    subprocess.run([str(ROOT / "tests/cpp/build_kernel_check.sh"), str(out)], check=True, timeout=600,
                   capture_output=True)
    return out


@pytest.mark.parametrize("isa", level_params())
def test_the_driver_passes_at_each_level(driver, isa):
    r = subprocess.run([str(driver)], env={**os.environ, "LLMOS_CPU_ISA": isa}, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[0] == f"best isa: {BEST}, active isa: {isa}", r.stdout
    assert r.stdout.rstrip().endswith(", 0 failures"), r.stdout


def test_a_level_of_the_other_architecture_is_refused(driver):
    r = subprocess.run([str(driver)], env={**os.environ, "LLMOS_CPU_ISA": "neon"}, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0
    assert "not an ISA of this CPU's architecture" in r.stderr, r.stderr
