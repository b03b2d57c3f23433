"""Same names on both sides of the binding: the Python dataclasses that describe a model and the
core structs they are copied into list the same fields, and to_core carries every value over;
the type stub python/llmos/_core.pyi names exactly what the module binds, with its arguments."""

import ast
import enum
from dataclasses import fields
from pathlib import Path

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


# ---- the type stub -------------------------------------------------------------------------

STUB = Path(_core.__file__).with_name("_core.pyi")


def _stub() -> dict[str, ast.AST]:
    return {n.name: n for n in ast.parse(STUB.read_text(encoding="utf-8")).body
            if isinstance(n, (ast.ClassDef, ast.FunctionDef))}


def _stub_members(cls: ast.ClassDef) -> dict[str, ast.AST]:
    out = {}
    for n in cls.body:
        if isinstance(n, ast.FunctionDef):
            out[n.name] = n
        elif isinstance(n, ast.AnnAssign):
            out[n.target.id] = n
        elif isinstance(n, ast.Assign):
            out.update((t.id, n) for t in n.targets)
    return out


def _core_members(cls) -> set[str]:
    if isinstance(cls, type) and issubclass(cls, enum.Enum):
        return set(cls.__members__)
    return {n for n in vars(cls) if not n.startswith("_")} | {"__init__"}


def _bound_params(fn) -> list[str]:
    """Parameter names from the signature line pybind11 writes first in a docstring."""
    line = fn.__doc__.split("\n")[0]
    inner = line[line.index("(") + 1: line.rindex(") ->")]
    params, depth, cur = [], 0, ""
    for ch in inner:
        depth += ch in "[(" and 1 or (ch in "])" and -1 or 0)
        if ch == "," and depth == 0:
            params.append(cur)
            cur = ""
        else:
            cur += ch
    return [p.split(":")[0].split("=")[0].strip() for p in params + [cur] if p.strip()]


def test_the_stub_names_every_public_name_of_the_module_and_no_other():
    assert set(_stub()) == {n for n in dir(_core) if not n.startswith("_")}


def test_the_stub_names_every_member_of_every_class():
    for name, node in _stub().items():
        if isinstance(node, ast.ClassDef):
            ours = {n for n in _stub_members(node) if not n.startswith("_") or n == "__init__"}
            assert ours == _core_members(getattr(_core, name)), name


def test_the_stub_has_the_bound_parameter_names():
    for name, node in _stub().items():
        if isinstance(node, ast.FunctionDef):
            assert [a.arg for a in node.args.args] == _bound_params(getattr(_core, name)), name
            continue
        cls = getattr(_core, name)
        for member, fn in _stub_members(node).items():
            is_property = isinstance(fn, ast.FunctionDef) and any(
                isinstance(d, ast.Name) and d.id == "property" for d in fn.decorator_list)
            if isinstance(fn, ast.FunctionDef) and not is_property:
                assert [a.arg for a in fn.args.args] == _bound_params(getattr(cls, member)), f"{name}.{member}"


def test_every_stub_entry_has_a_one_line_doc():
    """Classes and functions carry a docstring; attributes the string that follows them."""
    for node in ast.parse(STUB.read_text(encoding="utf-8")).body:
        if not isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            continue
        assert ast.get_docstring(node), node.name
        if isinstance(node, ast.ClassDef):
            body = node.body
            for i, n in enumerate(body):
                if isinstance(n, ast.FunctionDef):
                    assert ast.get_docstring(n), f"{node.name}.{n.name}"
                elif isinstance(n, ast.AnnAssign):
                    doc = body[i + 1] if i + 1 < len(body) else None
                    assert isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant), \
                        f"{node.name}.{n.target.id}"
