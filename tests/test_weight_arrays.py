"""Weights handed to the core as numpy arrays load exactly as the same tensors read from the
checkpoint's files: float parts in every stored dtype (bfloat16 as uint16 bits), transposed
parts, and pre-quantized blocks. Metric: the logits are bit-identical."""

import numpy as np
import pytest

from llmos import _core
from llmos.io.checkpoint import float_source, tensor_locations
from llmos.io.config import ConfigReader, read_json
from llmos.errors import InvalidInputError, TensorError
from llmos.arch.families import family_for

IDS = np.arange(5, 45)


def file_sources(path):
    """(core Architecture, sources naming the checkpoint's files)."""
    cfg = ConfigReader(read_json(str(path / "config.json")), str(path / "config.json"))
    family = family_for(cfg)
    arch = family.architecture(cfg)
    locations = tensor_locations(str(path))
    return arch.to_core(_core), [float_source(locations, role, layer, parts, str(path))
                                 for role, layer, parts in family.tensors(arch)]


def as_arrays(sources):
    """The same sources with every (file, tensor) part replaced by (tensor, its array)."""
    return [(role, layer, [(tensor, _core.safetensors_read_tensor(file, tensor), tr) for file, tensor, tr in parts],
             prequant, group) for role, layer, parts, prequant, group in sources]


@pytest.mark.parametrize("kind,dtype", [("llama", "float32"), ("llama", "bfloat16"), ("qwen2", "float16"),
                                        ("gpt2", "float32"), ("gemma", "float32"), ("phi3", "float32")])
def test_arrays_give_the_logits_of_the_files(kind, dtype, checkpoint):
    arch, sources = file_sources(checkpoint(kind, dtype))
    ref = _core.Model(arch, sources, dtype, 1).logits(IDS)
    np.testing.assert_array_equal(_core.Model(arch, as_arrays(sources), dtype, 1).logits(IDS), ref)


def test_arrays_and_files_mix_and_quantize_at_load(checkpoint):
    arch, sources = file_sources(checkpoint("llama"))
    mixed = [a if i % 2 else s for i, (s, a) in enumerate(zip(sources, as_arrays(sources)))]
    q8 = _core.QuantType.Q8
    ref = _core.Model(arch, sources, "float32", 1, q8, 32, q8).logits(IDS)
    np.testing.assert_array_equal(_core.Model(arch, mixed, "float32", 1, q8, 32, q8).logits(IDS), ref)


def test_a_strided_array_is_read_as_its_values(checkpoint):
    """GPT-2's Conv1D weights given already transposed, as non-contiguous views."""
    arch, sources = file_sources(checkpoint("gpt2"))
    ref = _core.Model(arch, sources, "float32", 1).logits(IDS)
    views = [(role, layer, [(n, np.ascontiguousarray(a.T).T if tr else a, tr) for n, a, tr in parts], q, g)
             for role, layer, parts, q, g in as_arrays(sources)]
    assert any(not a.flags.c_contiguous for _, _, parts, _, _ in views for _, a, _ in parts)
    np.testing.assert_array_equal(_core.Model(arch, views, "float32", 1).logits(IDS), ref)


@pytest.mark.parametrize("quant", [("Q8", "Q8"), ("Q4", "Q6"), ("Q4Asym", "Q8")])
def test_prequantized_blocks_as_arrays(quant, checkpoint):
    """The blocks a quantize-at-load model holds, passed back as arrays, give its logits."""
    arch, sources = file_sources(checkpoint("llama"))
    layers, head = (getattr(_core.QuantType, q) for q in quant)
    quantized = _core.Model(arch, sources, "float32", 1, layers, 32, head)
    blocks = {(role, layer): (qtype, group, codes, scale.view(np.float16), None if mn is None else mn.view(np.float16))
              for role, layer, qtype, group, codes, scale, mn in quantized.quantized_matrices()}
    assert blocks
    prequant = []
    for role, layer, parts, q, g in sources:
        if (role, layer) in blocks:
            qtype, group, *arrays = blocks[(role, layer)]
            prequant.append((role, layer, [(f"{role}.{layer}", tuple(arrays), False)], qtype, group))
        else:
            prequant.append((role, layer, parts, q, g))
    np.testing.assert_array_equal(_core.Model(arch, prequant, "float32", 1).logits(IDS), quantized.logits(IDS))


def test_an_array_of_another_dtype_is_refused(checkpoint):
    arch, sources = file_sources(checkpoint("llama"))
    arrays = as_arrays(sources)
    role, layer, [(name, a, tr)], q, g = arrays[0]
    arrays[0] = (role, layer, [(name, a.astype(np.int32), tr)], q, g)
    with pytest.raises(InvalidInputError, match=name) as e:
        _core.Model(arch, arrays, "float32", 1)
    assert e.value.field == "sources"


def test_an_array_of_another_shape_names_its_tensor(checkpoint):
    arch, sources = file_sources(checkpoint("llama"))
    arrays = as_arrays(sources)
    i = next(i for i, s in enumerate(arrays) if s[0] == "o.weight")
    role, layer, [(name, a, tr)], q, g = arrays[i]
    arrays[i] = (role, layer, [(name, a[:, :-1], tr)], q, g)
    with pytest.raises(TensorError, match="does not fit") as e:
        _core.Model(arch, arrays, "float32", 1)
    assert e.value.field == name and e.value.file is None


def test_missing_blocks_are_named(checkpoint):
    arch, sources = file_sources(checkpoint("llama"))
    i = next(i for i, s in enumerate(sources) if s[0] == "down.weight")
    role, layer, *_ = sources[i]
    cols = arch.intermediate_size
    codes = np.zeros((arch.hidden_size, cols // 2), np.uint8)
    scale = np.ones((arch.hidden_size, cols // 32), np.float16)
    sources[i] = (role, layer, [("down", (codes, scale, None), False)], _core.QuantType.Q4Asym, 32)
    with pytest.raises(TensorError) as e:
        _core.Model(arch, sources, "float32", 1)
    assert e.value.field == "down.min"
    sources[i] = (role, layer, [("down", (codes, scale.view(np.uint16)), False)], _core.QuantType.Q4, 32)
    with pytest.raises(TensorError, match="expected F16") as e:
        _core.Model(arch, sources, "float32", 1)
    assert e.value.field == "down.scale"


def test_sources_are_read_one_at_a_time_and_let_go(checkpoint):
    """A generator of sources: by the time the core asks for the next role, it holds no
    reference to the previous role's arrays (so they are freed as the model fills)."""
    import weakref

    arch, sources = file_sources(checkpoint("llama"))
    ref = _core.Model(arch, sources, "float32", 1).logits(IDS)
    alive_when_next_asked = []

    def stream():
        previous = []
        for file_source in sources:
            alive_when_next_asked.append(sum(r() is not None for r in previous))
            [source] = as_arrays([file_source])
            previous = [weakref.ref(a) for _, a, _ in source[2]]
            yield source
            source = None  # the generator's own reference

    np.testing.assert_array_equal(_core.Model(arch, stream(), "float32", 1).logits(IDS), ref)
    assert len(alive_when_next_asked) == len(sources) and not any(alive_when_next_asked)


def test_an_error_raised_by_the_sources_reaches_the_caller(checkpoint):
    arch, sources = file_sources(checkpoint("llama"))

    def stream():
        yield from sources[:3]
        raise TensorError("made up", field="x")

    with pytest.raises(TensorError, match="made up"):
        _core.Model(arch, stream(), "float32", 1)
