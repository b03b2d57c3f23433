"""Same names on both sides of the binding: the Python dataclasses that describe a model and the
core structs they are copied into list the same fields, and to_core carries every value over."""

from dataclasses import fields

import numpy as np
import pytest

from llmos import _core
from llmos.io.config import ConfigReader
from llmos.arch.families import ACTIVATIONS, NORMS, PYTHON_ONLY, Architecture, family_for
from llmos.arch.rope import Rope


def bound_fields(cls) -> set[str]:
    return {name for name, v in vars(cls).items() if isinstance(v, property)}


@pytest.mark.parametrize("py_cls", [Architecture, Rope])
def test_dataclass_fields_are_the_bound_fields(py_cls):
    core_cls = getattr(_core, py_cls.__name__)
    python_only = PYTHON_ONLY.get(py_cls.__name__, set())
    ours = {f.name for f in fields(py_cls)}
    assert python_only <= ours
    assert ours - python_only == bound_fields(core_cls)


def _architectures():
    import checkpoints

    for kind in checkpoints.KINDS:
        cfg = checkpoints.make_config(kind).to_dict()
        yield kind, family_for(ConfigReader(cfg, "config.json")).architecture(ConfigReader(cfg, "config.json"))


def _expected(name, value):
    if name == "norm":
        return NORMS[value]
    if name == "activation":
        return ACTIVATIONS[value]
    if isinstance(value, np.ndarray):
        return pytest.approx(value.tolist())
    return pytest.approx(value) if isinstance(value, float) else value


def _check_copy(py_obj, core_obj, where):
    for f in fields(py_obj):
        if f.name in PYTHON_ONLY.get(type(py_obj).__name__, ()):
            continue
        value, got = getattr(py_obj, f.name), getattr(core_obj, f.name)
        if value is None:
            continue
        if isinstance(got, (_core.Rope, _core.Architecture)):
            _check_copy(value, got, f"{where}.{f.name}")
            continue
        if f.name in ("norm", "activation"):
            got = got.name
        assert got == _expected(f.name, value), f"{where}.{f.name}"


def test_to_core_copies_every_field_of_every_test_family():
    for kind, arch in _architectures():
        core = arch.to_core(_core)
        core.validate()
        _check_copy(arch, core, kind)
