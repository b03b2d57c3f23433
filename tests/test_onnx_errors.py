"""Bad ONNX input gives a clear llmos.errors exception naming the file and what is wrong,
never a crash: malformed or unrelated files, missing external data, graphs whose inputs do
not fit the decoder layout, graphs convert_onnx cannot map, bad export arguments."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from llmos.errors import InvalidInputError, LlmosError, ModelFileError, ModelFormatError, UnsupportedModelError

import onnx
TensorProto, helper, numpy_helper = onnx.TensorProto, onnx.helper, onnx.numpy_helper


@pytest.fixture(scope="module")
def good_export(checkpoint, tmp_path_factory, llmos):
    out = tmp_path_factory.mktemp("onnx_good") / "llama"
    llmos.export_onnx(str(checkpoint("llama")), str(out))
    return out


@pytest.fixture
def folder(good_export, tmp_path):
    """A private copy of a good export (tokenizer, config) whose model.onnx a test replaces."""
    dst = tmp_path / "m"
    shutil.copytree(good_export, dst)
    return dst


def _save(model, path):
    onnx.save_model(model, str(path))


def _graph(inputs, outputs, nodes=None, inits=None, opset=17):
    nodes = nodes or [helper.make_node("Identity", [inputs[0].name], [outputs[0].name])]
    g = helper.make_graph(nodes, "g", inputs, outputs, inits or [])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _vi(name, t, shape):
    return helper.make_tensor_value_info(name, t, shape)


def _load(llmos, path):
    return llmos.load(str(path), threads=1)


@pytest.mark.parametrize("content", [b"", b"\x00" * 64, b"not an onnx file at all\n" * 10,
                                     bytes(range(256)) * 8], ids=["empty", "zeros", "text", "binary"])
def test_malformed_file(content, folder, llmos):
    (folder / "model.onnx").write_bytes(content)
    with pytest.raises(ModelFormatError) as e:
        _load(llmos, folder)
    assert "model.onnx" in str(e.value) and "not an ONNX model" in str(e.value)
    assert e.value.file.endswith("model.onnx")


def test_truncated_file(folder, llmos):
    data = (folder / "model.onnx").read_bytes()
    (folder / "model.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelFormatError, match="not an ONNX model"):
        _load(llmos, folder)


def test_unrelated_onnx_model(folder, llmos):
    m = _graph([_vi("x", TensorProto.FLOAT, [2, 3]), _vi("y", TensorProto.FLOAT, [2, 3])],
               [_vi("z", TensorProto.FLOAT, [2, 3])], [helper.make_node("Add", ["x", "y"], ["z"])])
    _save(m, folder / "model.onnx")
    with pytest.raises(ModelFormatError) as e:
        _load(llmos, folder)
    assert "no input 'input_ids'" in str(e.value) and "inputs x, y" in str(e.value)
    assert e.value.field == "input_ids"


def _decoder_io(n_layers=1, *, ids_type=TensorProto.INT64, logits_rank=3, present=True, past_rank=4):
    ins = [_vi("input_ids", ids_type, ["b", "s"]), _vi("attention_mask", TensorProto.INT64, ["b", "t"])]
    outs = [_vi("logits", TensorProto.FLOAT, ["b", "s", 384][:logits_rank])]
    for i in range(n_layers):
        for part in ("key", "value"):
            ins.append(_vi(f"past_key_values.{i}.{part}", TensorProto.FLOAT, ["b", 4, "p", 16][:past_rank]))
            if present:
                outs.append(_vi(f"present.{i}.{part}", TensorProto.FLOAT, ["b", 4, "t", 16]))
    return ins, outs


@pytest.mark.parametrize("case,message,field", [
    ("no_present", "layer 0 has a past key input but no present key output", "present.0.key"),
    ("float_ids", "input_ids is float32", "input_ids"),
    ("logits_rank", "logits is float32 of rank 2", "logits"),
    ("past_rank", "expected float [batch, kv_heads, past_sequence, head_dim]", "past_key_values.0.key"),
    ("extra_input", "unexpected input 'token_type_ids'", "token_type_ids"),
    ("gap", "past layers [0, 2] are not numbered 0..1", None),
])
def test_inputs_that_do_not_fit_the_decoder_layout(case, message, field, folder, llmos):
    kw = {"no_present": dict(present=False), "float_ids": dict(ids_type=TensorProto.FLOAT),
          "logits_rank": dict(logits_rank=2), "past_rank": dict(past_rank=3)}.get(case, {})
    ins, outs = _decoder_io(**kw)
    if case == "extra_input":
        ins.append(_vi("token_type_ids", TensorProto.INT64, ["b", "s"]))
    if case == "gap":
        ins, outs = _decoder_io(3)
        ins = [i for i in ins if not i.name.startswith("past_key_values.1.")]
    nodes = [helper.make_node("Constant", [], [o.name], value=numpy_helper.from_array(np.zeros([1] * len(
        o.type.tensor_type.shape.dim), np.float32))) for o in outs]
    _save(_graph(ins, outs, nodes), folder / "model.onnx")
    with pytest.raises(ModelFormatError) as e:
        _load(llmos, folder)
    assert message in str(e.value)
    assert "not a decoder in the optimum layout" in str(e.value)
    if field:
        assert e.value.field == field


def test_missing_external_data(checkpoint, llmos, tmp_path):
    out = tmp_path / "ext"
    llmos.export_onnx(str(checkpoint("llama")), str(out), external_data=True)
    os.remove(out / "model.onnx.data")
    with pytest.raises(ModelFileError) as e:
        _load(llmos, out)
    assert "model.onnx.data" in str(e.value) and "missing" in str(e.value)
    with pytest.raises(ModelFileError):
        llmos.convert_onnx(str(out), str(tmp_path / "ckpt"))


def test_truncated_external_data(checkpoint, llmos, tmp_path):
    out = tmp_path / "ext"
    llmos.export_onnx(str(checkpoint("llama")), str(out), external_data=True)
    data = (out / "model.onnx.data").read_bytes()
    (out / "model.onnx.data").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated"):
        _load(llmos, out)


def test_external_data_outside_the_folder(folder, llmos):
    ins, outs = _decoder_io()
    w = numpy_helper.from_array(np.zeros((4, 4), np.float32), "w")
    w.data_location = TensorProto.EXTERNAL
    w.ClearField("raw_data")
    for k, v in (("location", "../../secret.bin"), ("offset", "0"), ("length", "64")):
        e = w.external_data.add()
        e.key, e.value = k, v
    nodes = [helper.make_node("Constant", [], [o.name], value=numpy_helper.from_array(np.zeros([1] * len(
        o.type.tensor_type.shape.dim), np.float32))) for o in outs]
    _save(_graph(ins, outs, nodes, [w]), folder / "model.onnx")
    with pytest.raises(ModelFormatError, match="points outside the model folder") as e:
        _load(llmos, folder)
    assert e.value.field == "w"


def test_graph_onnxruntime_cannot_load(folder, llmos):
    ins, outs = _decoder_io()
    nodes = [helper.make_node("NoSuchOp", ["input_ids"], [o.name], domain="example.nowhere") for o in outs]
    m = _graph(ins, outs, nodes)
    m.opset_import.append(helper.make_opsetid("example.nowhere", 1))
    _save(m, folder / "model.onnx")
    with pytest.raises(ModelFormatError, match="onnxruntime cannot load the graph"):
        _load(llmos, folder)


def test_graph_that_fails_while_running(folder, llmos):
    """Fits the layout, loads, then returns logits of the wrong shape."""
    ins, outs = _decoder_io()
    nodes = [helper.make_node("Constant", [], [o.name], value=numpy_helper.from_array(
        np.zeros([2, 1, 384] if o.name == "logits" else [1, 4, 1, 16], np.float32))) for o in outs]
    _save(_graph(ins, outs, nodes), folder / "model.onnx")
    model = _load(llmos, folder)
    with pytest.raises(ModelFormatError, match="output 'logits' has shape"):
        model.logits([5, 6, 7])


def test_folder_without_a_decoder(tmp_path, llmos):
    (tmp_path / "model.onnx").mkdir()
    from llmos.backends.onnx.backend import load as load_onnx_backend

    with pytest.raises(ModelFileError, match="no ONNX decoder found"):
        load_onnx_backend(str(tmp_path), threads=1)
    with pytest.raises(ModelFileError, match="no ONNX decoder found"):
        llmos.convert_onnx(str(tmp_path), str(tmp_path / "out"))


def test_onnx_model_options(good_export, llmos):
    model = _load(llmos, good_export)
    with pytest.raises(InvalidInputError, match="num_beams"):
        model.generate([5, 6], num_beams=2, max_new_tokens=3)
    with pytest.raises(InvalidInputError, match="dtype"):
        llmos.load(str(good_export), dtype="bfloat16", threads=1)
    with pytest.raises(InvalidInputError, match="outside the vocabulary"):
        model.generate([5, 100000], max_new_tokens=3)


@pytest.mark.parametrize("kwargs,field", [
    (dict(precision="int8"), "precision"),
    (dict(opset=12), "opset"),
    (dict(opset=True), "opset"),
    (dict(precision="int4", block_size=48), "block_size"),
    (dict(precision="int4", accuracy_level=7), "accuracy_level"),
])
def test_export_arguments(kwargs, field, checkpoint, llmos, tmp_path):
    with pytest.raises(InvalidInputError) as e:
        llmos.export_onnx(str(checkpoint("llama")), str(tmp_path / "out"), **kwargs)
    assert e.value.field == field


def test_export_sources(good_export, llmos, tmp_path):
    with pytest.raises(InvalidInputError, match="already an ONNX model"):
        llmos.export_onnx(str(good_export), str(tmp_path / "out"))
    with pytest.raises(ModelFileError):
        llmos.export_onnx(str(tmp_path / "nothing"), str(tmp_path / "out"))
    with pytest.raises(InvalidInputError, match="model_or_path"):
        llmos.export_onnx(42, str(tmp_path / "out"))


def test_convert_unmappable_weight_is_named(folder, llmos, tmp_path):
    m = onnx.load(str(folder / "model.onnx"))
    for t in m.graph.initializer:
        if t.name == "layers.1.down.weight":
            t.name = "mystery_projection"
    for n in m.graph.node:
        for i, x in enumerate(n.input):
            if x == "layers.1.down.weight":
                n.input[i] = "mystery_projection"
                n.name = "/somewhere/else"
    _save(m, folder / "model.onnx")
    with pytest.raises(UnsupportedModelError) as e:
        llmos.convert_onnx(str(folder), str(tmp_path / "out"))
    msg = str(e.value)
    assert "no weight found for layers.1.down.weight" in msg
    assert "initializers not mapped to any llama weight: mystery_projection" in msg


def test_convert_without_any_config(folder, llmos, tmp_path):
    os.remove(folder / "config.json")
    os.remove(folder / "llmos_onnx.json")
    with pytest.raises(UnsupportedModelError, match="neither config.json nor genai_config.json"):
        llmos.convert_onnx(str(folder), str(tmp_path / "out"))


def test_convert_unrelated_graph(folder, llmos, tmp_path):
    m = _graph([_vi("x", TensorProto.FLOAT, [2])], [_vi("y", TensorProto.FLOAT, [2])])
    _save(m, folder / "model.onnx")
    with pytest.raises(ModelFormatError, match="no input 'input_ids'"):
        llmos.convert_onnx(str(folder), str(tmp_path / "out"))


def test_broken_genai_config(folder, llmos):
    (folder / "genai_config.json").write_text("{not json")
    os.remove(folder / "config.json")
    with pytest.raises(ModelFormatError, match="genai_config.json: not valid JSON"):
        _load(llmos, folder)


def test_every_error_is_an_llmos_error(folder, llmos):
    """The random-bytes sweep: whatever the file holds, loading raises LlmosError."""
    rng = np.random.default_rng(0)
    good = (folder / "model.onnx").read_bytes()
    for i in range(12):
        data = bytearray(good)
        for j in rng.integers(0, len(data), size=8):
            data[j] = int(rng.integers(0, 256))
        (folder / "model.onnx").write_bytes(bytes(data[: int(rng.integers(1, len(data)))]) if i % 2 else bytes(data))
        try:
            _load(llmos, folder).logits([5, 6, 7])
        except LlmosError:
            pass
