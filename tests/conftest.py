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

# The test extra's packages are imported here, at collection, so a missing install step fails
# the run at once instead of skipping the tests that need them. torch stays single-threaded.
import onnx  # noqa: E402,F401
import onnxruntime  # noqa: E402,F401
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("LLMOS_TEST_TORCH_THREADS", "1")))

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import transformers  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()


def reference_model_uncached(path, dtype=None):
    """The transformers model for checkpoint ``path``, float32 by default, eval, eager attention."""
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
            if sharded:
                checkpoints.build_sharded_checkpoint(kind, out, dtype, **overrides)
            else:
                checkpoints.build_checkpoint(kind, out, dtype, **overrides)
            cache[key] = out
        return cache[key]

    return get


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
