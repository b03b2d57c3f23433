"""Shared fixtures for the llmos test suite.

Fixtures
--------
``checkpoint``        (session) factory: ``checkpoint(kind, dtype="float32", *, sharded=False,
                      **overrides) -> Path``.  Builds lazily with :mod:`checkpoints` into a session
                      temp dir and caches by arguments; treat the folder as read-only (copy it with
                      ``tmp_checkpoint`` to damage it).
``tmp_checkpoint``    (function) factory: ``tmp_checkpoint(kind, dtype="float32", **kw) -> Path``, a
                      private copy of the cached checkpoint in ``tmp_path`` that the test may edit.
``reference_model``   (session) factory: ``reference_model(path, dtype=torch.float32)`` -> the
                      transformers model loaded from ``path`` in eval mode with eager attention
                      (cached per path/dtype).
``llmos``             (session) the ``llmos`` module (an import failure is an error, never a skip).
``load_llmos``        (session) factory: ``load_llmos(path, dtype=None) -> llmos.Model``, cached per
                      (path, dtype); loads with ``threads=LLMOS_TEST_THREADS`` (default 1).

Plain helper: ``reference_model_uncached(path, dtype=None)`` (what ``reference_model`` caches).
Checkpoint builders live in :mod:`checkpoints` (importable: tests/ is put on ``sys.path`` here).
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parent
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

# The compiled core is imported at collection, outside any test's output capture: an import
# error then stops the run at once, and an editable install's rebuild hook (which spawns
# cmake with the real stdout) never runs under capsys.
import llmos._core as _core_at_collection  # noqa: E402,F401

LLMOS_TEST_THREADS = int(os.environ.get("LLMOS_TEST_THREADS", "1"))

# LLMOS_TEST_REFERENCE_PYTHON names another interpreter that has the reference stack (torch,
# transformers), for a run on an environment without it (.ci/min-versions: the oldest supported
# numpy, tokenizers, huggingface_hub...). Then the tests marked `reference` are skipped, each
# with its reason in the summary, and checkpoints are built by that interpreter. Unset, the
# reference stack must be importable here.
REFERENCE_PYTHON = os.environ.get("LLMOS_TEST_REFERENCE_PYTHON") or None

# The test extra's packages are imported here, at collection, so a missing install step fails
# the run at once instead of skipping the tests that need them. torch stays single-threaded.
import onnx  # noqa: E402,F401
import onnxruntime  # noqa: E402,F401

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if REFERENCE_PYTHON is None:
    import torch  # noqa: E402

    torch.set_num_threads(int(os.environ.get("LLMOS_TEST_TORCH_THREADS", "1")))

    import transformers  # noqa: E402

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

# Markers, set here by file name rather than by decorators in each file. `kernels`: the result
# depends on the kernels the core dispatches to, so .ci/run repeats these under each forced
# LLMOS_CPU_ISA. `reference`: needs torch or transformers (the pinned reference stack); every
# test using the reference_model fixture is one too.
KERNEL_MODULES = {
    "test_kernels.py", "test_quant.py", "test_quant_awq_gptq.py", "test_weight_arrays.py", "test_threads.py",
    "test_reference_agreement.py", "test_reference_variants.py", "test_decoding.py", "test_logits_processors.py",
    "test_onnx_export.py", "test_onnx_import.py", "test_default_model.py", "test_kv_cache.py",
    "test_qmatmul_batch.py",
}
REFERENCE_MODULES = {
    "test_reference_agreement.py", "test_reference_variants.py", "test_decoding.py", "test_logits_processors.py",
    "test_quant_awq_gptq.py", "test_onnx_import.py", "test_train.py", "test_tokenizer.py", "test_chat_template.py",
    "test_text_stream.py",
}
REFERENCE_TESTS = {  # file::function, for files whose other tests need only llmos
    # these damage a checkpoint through safetensors.torch
    "test_model_errors.py::test_tensor_missing", "test_model_errors.py::test_lm_head_missing_in_untied_model",
    "test_model_errors.py::test_tensor_wrong_shape", "test_model_errors.py::test_tensor_unusable_dtype",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = item.path.name
        if name in KERNEL_MODULES:
            item.add_marker(pytest.mark.kernels)
        if (name in REFERENCE_MODULES or f"{name}::{getattr(item, 'originalname', item.name)}" in REFERENCE_TESTS
                or "reference_model" in getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.reference)
        if REFERENCE_PYTHON is not None and item.get_closest_marker("reference"):
            item.add_marker(pytest.mark.skip(
                reason="needs the reference stack (torch, transformers): LLMOS_TEST_REFERENCE_PYTHON is set"))


def reference_model_uncached(path, dtype=None):
    """The transformers model for checkpoint ``path``, float32 by default, eval, eager attention."""
    import torch
    from transformers import AutoModelForCausalLM

    if dtype is None:
        dtype = torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=dtype, attn_implementation="eager"
        )
    return model.eval()


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    import checkpoints

    root = tmp_path_factory.mktemp("checkpoints")
    cache: dict = {}

    def get(kind: str, dtype: str = "float32", *, sharded: bool = False, **overrides) -> Path:
        key = (kind, dtype, sharded, tuple(sorted((k, repr(v)) for k, v in overrides.items())))
        if key not in cache:
            name = f"{kind}-{dtype}" + ("-sharded" if sharded else "") + (f"-{len(cache)}" if overrides else "")
            out = root / name
            builder = "build_sharded_checkpoint" if sharded else "build_checkpoint"
            if REFERENCE_PYTHON is None:
                getattr(checkpoints, builder)(kind, out, dtype, **overrides)
            else:
                _build_elsewhere(builder, (kind, str(out), dtype), overrides)
            cache[key] = out
        return cache[key]

    return get


def _build_elsewhere(builder: str, args: tuple, kwargs: dict) -> None:
    """checkpoints.<builder>(*args, **kwargs) run by REFERENCE_PYTHON (the arguments are literals)."""
    import subprocess

    code = ("import ast, sys; sys.path.insert(0, sys.argv[1]); import checkpoints; "
            "getattr(checkpoints, sys.argv[2])(*ast.literal_eval(sys.argv[3]), **ast.literal_eval(sys.argv[4]))")
    subprocess.run([REFERENCE_PYTHON, "-c", code, str(_TESTS), builder, repr(args), repr(kwargs)],
                   check=True, timeout=600)


@pytest.fixture
def tmp_checkpoint(checkpoint, tmp_path):
    n = [0]

    def get(kind: str, dtype: str = "float32", **kw) -> Path:
        n[0] += 1
        dst = tmp_path / f"ckpt{n[0]}-{kind}"
        shutil.copytree(checkpoint(kind, dtype, **kw), dst)
        return dst

    return get


@pytest.fixture(scope="session")
def reference_model():
    cache: dict = {}

    def get(path, dtype=None):
        key = (str(path), str(dtype))
        if key not in cache:
            cache[key] = reference_model_uncached(path, dtype)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def llmos():
    # No skip when the package is missing: a suite that silently skips would pass in CI
    # with nothing tested.
    import llmos as mod

    return mod


@pytest.fixture(scope="session")
def load_llmos(llmos):
    cache: dict = {}

    def get(path, dtype=None):
        key = (str(path), dtype)
        if key not in cache:
            cache[key] = llmos.load(str(path), dtype=dtype, threads=LLMOS_TEST_THREADS)
        return cache[key]

    return get
