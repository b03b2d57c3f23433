"""The model registry (llmos.registry and its CLI verbs): entries, manifests, names and paths,
atomic writes, stale temp cleanup, checksum verification and the delegating verbs."""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llmos.errors import InvalidInputError
from llmos.store import build as store_build


@pytest.fixture
def home(monkeypatch, tmp_path):
    path = tmp_path / "llmos-home"
    monkeypatch.setenv("LLMOS_HOME", str(path))
    return path


@pytest.fixture
def registry(llmos):
    from llmos import registry

    return registry


@pytest.fixture
def tiny(checkpoint):
    return checkpoint("llama")


def _cli(capsys, *argv):
    """Runs a registry verb the way `llmos` does: (exit code, stdout, stderr)."""
    from llmos.errors import LlmosError
    from llmos.cli.registry import add_registry_commands

    parser = argparse.ArgumentParser(prog="llmos")
    add_registry_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    try:
        code = args.run(args)
    except LlmosError as e:
        print(f"llmos: error: {e}", file=sys.stderr)
        code = 2
    out = capsys.readouterr()
    return code, out.out, out.err


def _no_leftovers(home: Path) -> None:
    tmp = home / "tmp"
    assert not tmp.exists() or not any(tmp.iterdir()), sorted(tmp.iterdir())


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ---------------------------------------------------------------------------------------------


def test_import_records_manifest_and_loads(home, registry, tiny, llmos, load_llmos):
    import checkpoints

    entry = registry.import_model(tiny, name="tiny")
    assert entry.ref == "tiny:latest"
    # Each version in its own folder; `current` says which one the name means.
    tag_dir = home / "models" / "tiny" / "latest"
    assert Path(entry.path) == tag_dir / "versions" / (tag_dir / "current").read_text().strip()
    m = json.loads((Path(entry.path) / registry.MANIFEST).read_text())
    assert m == entry.manifest
    assert m["source"] == {"kind": "import", "path": str(tiny.resolve())}
    assert m["family"] == "llama" and m["model_format"] == "safetensors" and m["dtype"] == "float32"
    assert m["quantization"] is None and m["parameters"] > 0
    assert m["chat_template"] == checkpoints.CHATML_TEMPLATE
    assert m["chat_template_origin"] == "tokenizer_config.json:chat_template"
    assert m["eos_token"] == "<|endoftext|>" and m["eos_token_ids"] == [checkpoints.EOS_ID]
    assert [s["op"] for s in m["lineage"]] == ["import"] and m["created"].endswith("Z")
    for rel in os.listdir(tiny):
        assert m["files"][rel]["sha256"] == hashlib.sha256((tiny / rel).read_bytes()).hexdigest()
    assert set(m["files"]) == set(os.listdir(tiny))
    assert len(m["digest"]) == 64

    ids = [1, 5, 9, 200, 17]
    model = llmos.load(registry.resolve("tiny"), threads=1)
    np.testing.assert_array_equal(model.logits(ids), load_llmos(tiny).logits(ids))
    _no_leftovers(home)


def test_names_tags_and_listing(home, registry, tiny, capsys):
    registry.import_model(tiny, name="Tiny-Llama")  # names are case-insensitive
    registry.import_model(tiny, name="tiny-llama:v2")
    assert [e.ref for e in registry.list_models()] == ["tiny-llama:latest", "tiny-llama:v2"]
    assert Path(registry.resolve("TINY-LLAMA:V2")).parent.parent == home / "models" / "tiny-llama" / "v2"
    code, out, _ = _cli(capsys, "ls")
    assert code == 0 and "tiny-llama:latest" in out and "tiny-llama:v2" in out and "llama" in out
    for bad in ("bad name", "a/b:c", ":tag", "name:", "x" * 81, "-lead"):
        with pytest.raises(InvalidInputError):
            registry.parse_ref(bad)


def test_unknown_name_suggests_closest(home, registry, tiny, llmos, capsys):
    registry.import_model(tiny, name="tiny-llama")
    registry.import_model(tiny, name="qwen-small")
    with pytest.raises(llmos.errors.ModelNotFoundError) as info:
        registry.resolve("tiny-lama")
    e = info.value
    assert isinstance(e, KeyError) and isinstance(e, llmos.errors.LlmosError)
    assert e.suggestions[0] == "tiny-llama:latest" and "did you mean tiny-llama:latest" in str(e)
    with pytest.raises(llmos.errors.ModelNotFoundError, match="tiny-llama:latest"):
        registry.show("tiny-llama:v3")  # same name, other tag: the existing tags are named
    code, _, err = _cli(capsys, "show", "qwen-smal")
    assert code == 2 and "did you mean qwen-small:latest" in err


def test_empty_registry_message(home, registry, llmos):
    with pytest.raises(llmos.errors.ModelNotFoundError, match="registry is empty"):
        registry.resolve("anything")


def test_folder_paths_work_where_names_do(home, registry, tiny, llmos, capsys):
    assert registry.resolve(tiny) == str(tiny) and registry.resolve(str(tiny)) == str(tiny)
    shown = registry.show(str(tiny))
    assert shown.name is None and shown.family == "llama" and shown.digest is None
    report = registry.verify(str(tiny))
    assert report.ok and not report.has_manifest and report.checked == len(os.listdir(tiny))
    assert [t for _, t, _ in registry.tokenize(tiny, "Hello world")][0] == "H"
    code, out, _ = _cli(capsys, "show", tiny, "--template")
    assert code == 0 and "<|im_start|>" in out
    with pytest.raises(llmos.errors.ModelFileError, match="llmos pull some-org/model"):
        registry.resolve("some-org/model")
    with pytest.raises(llmos.errors.InvalidInputError, match="not a registry entry"):
        registry.remove(str(tiny))
    assert tiny.is_dir() and registry.verify(str(tiny)).ok


def test_show_verbs(home, registry, tiny, capsys):
    import checkpoints

    registry.import_model(tiny, name="tiny")
    code, out, _ = _cli(capsys, "show", "tiny")
    assert code == 0 and "family:" in out and "'<|endoftext|>' (0)" in out and "import from" in out
    code, out, _ = _cli(capsys, "show", "tiny", "--json")
    data = json.loads(out)
    assert data["ref"] == "tiny:latest" and "model.safetensors" in data["files"]
    code, out, _ = _cli(capsys, "show", "tiny", "--template")
    assert out == checkpoints.CHATML_TEMPLATE + "\n"
    code, out, _ = _cli(capsys, "show", "tiny", "--tokens", "Hello world", "--json")
    pieces = json.loads(out)
    assert "".join(p["text"] for p in pieces) == "Hello world"
    code, out, _ = _cli(capsys, "show", "tiny", "--tokens", "Hello world")
    assert code == 0 and f"{len(pieces)} tokens" in out


def test_model_without_chat_template(home, registry, tmp_checkpoint, llmos, capsys):
    folder = tmp_checkpoint("llama")
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    entry = registry.import_model(folder, name="plain")
    assert entry.chat_template is None
    code, _, err = _cli(capsys, "show", "plain", "--template")
    assert code == 2 and "has no chat template" in err


def test_rm(home, registry, tiny, llmos, capsys):
    registry.import_model(tiny, name="tiny")
    registry.import_model(tiny, name="tiny:other")
    code, out, _ = _cli(capsys, "rm", "tiny")
    assert code == 0 and "removed tiny:latest" in out
    assert [e.ref for e in registry.list_models()] == ["tiny:other"]
    registry.remove("tiny:other")
    assert registry.list_models() == [] and not (home / "models" / "tiny").exists()
    with pytest.raises(llmos.errors.ModelNotFoundError):
        registry.remove("tiny")
    _no_leftovers(home)


def test_verify_reports_every_kind_of_damage(home, registry, tiny, capsys):
    entry = registry.import_model(tiny, name="tiny")
    folder = Path(entry.path)
    assert registry.verify("tiny").ok
    code, out, _ = _cli(capsys, "verify", "tiny")
    assert code == 0 and "ok" in out

    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x40
    weights.write_bytes(bytes(data))
    problems = registry.verify("tiny").problems
    assert problems == ["model.safetensors: sha256 does not match the manifest (file changed or corrupt)"]

    weights.write_bytes(bytes(data[: len(data) // 2]))  # a partial file
    (folder / "tokenizer.json").unlink()
    (folder / "stray.txt").write_text("x")
    problems = registry.verify("tiny").problems
    assert any(p.startswith("model.safetensors: size") for p in problems)
    assert any("model.safetensors" in p and "truncated" in p for p in problems)  # structural check
    assert "tokenizer.json: missing" in problems
    assert any(p.startswith("stray.txt: not in the manifest") for p in problems)
    code, out, err = _cli(capsys, "verify", "tiny")
    assert code == 1 and "tokenizer.json: missing" in out and "problem" in err


def test_reimport_replaces_and_disk_full_keeps_old_entry(home, registry, tiny, tmp_checkpoint, llmos, monkeypatch):
    old = registry.import_model(tiny, name="tiny")
    other = tmp_checkpoint("llama")
    (other / "README.md").write_text("# tiny, second version\n")

    def copy_then_disk_full(src, dst, on_bytes=None):
        with open(dst, "xb") as f:
            f.write(Path(src).read_bytes()[:100])
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(store_build, "copy_hashed", copy_then_disk_full)
    with pytest.raises(llmos.errors.DiskFullError, match="no space left .* nothing was changed") as info:
        registry.import_model(other, name="tiny", force=True)
    assert isinstance(info.value, OSError)
    monkeypatch.undo()
    monkeypatch.setenv("LLMOS_HOME", str(home))
    assert registry.show("tiny").digest == old.digest and registry.verify("tiny").ok
    _no_leftovers(home)

    with pytest.raises(InvalidInputError, match="already exists.*--force"):
        registry.import_model(other, name="tiny")
    new = registry.import_model(other, name="tiny", force=True)
    assert new.digest != old.digest and registry.show("tiny").digest == new.digest
    assert [e.ref for e in registry.list_models()] == ["tiny:latest"]
    _no_leftovers(home)


def test_disk_full_writing_the_manifest(home, registry, tiny, llmos, monkeypatch):
    real = store_build.write_json_atomic

    def full(path, obj):
        real(path.with_name("partial.json"), {"half": True})
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_build, "write_json_atomic", full)
    with pytest.raises(llmos.errors.DiskFullError):
        registry.import_model(tiny, name="tiny")
    assert registry.list_models() == [] and not (home / "models" / "tiny").exists()
    _no_leftovers(home)


def test_not_enough_space_fails_before_writing(home, registry, tiny, llmos, monkeypatch):
    import collections

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(store_build.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(llmos.errors.DiskFullError, match="needs 0.5 MB .* nothing was written"):
        registry.import_model(tiny, name="tiny")
    assert not (home / "models").exists() or not any((home / "models").iterdir())


def test_interrupt_leaves_no_entry(home, registry, tiny, monkeypatch):
    real = store_build.copy_hashed
    calls = []

    def interrupted(src, dst, on_bytes=None):
        calls.append(src)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(store_build, "copy_hashed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        registry.import_model(tiny, name="tiny")
    assert registry.list_models() == []
    _no_leftovers(home)


def test_stale_temp_dirs_are_cleaned_and_moved_aside_entries_restored(home, registry, tiny):
    entry = registry.import_model(tiny, name="tiny")
    dead = _dead_pid()
    from llmos.store.build import HOST as host
    stale = home / "tmp" / f"import~{host}~{dead}~0000"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "model.safetensors").write_bytes(b"half")
    live = home / "tmp" / f"pull~{host}~{os.getpid()}~1111"
    live.mkdir()
    # A process that died between moving the old entry aside and renaming the new one in:
    aside = home / "tmp" / f"replaced~{host}~{dead}~2222"
    shutil.copytree(entry.path, aside)
    shutil.rmtree(entry.path)

    assert registry.list_models()[0].ref == "tiny:latest"
    assert not stale.exists() and live.exists() and not aside.exists()
    assert registry.verify("tiny").ok
    shutil.rmtree(live)


def test_onnx_import(home, registry, tiny, tmp_path, llmos):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder = tmp_path / "exported"
    folder.mkdir()
    w = numpy_helper.from_array(np.ones((4, 4), dtype=np.float32), name="w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    onnx.save_model(helper.make_model(graph), str(folder / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=0)
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(tiny / f, folder / f)
    (folder / "genai_config.json").write_text("{}")
    (folder / "notes.txt").write_text("not part of the model")

    entry = registry.import_model(folder / "model.onnx")
    assert entry.ref == "exported:latest" and entry.format == "onnx" and entry.family == "llama"
    assert set(entry.files) == {"model.onnx", "model.onnx.data", "config.json", "tokenizer.json",
                                "tokenizer_config.json", "generation_config.json", "genai_config.json"}
    assert entry.eos_token_ids == [0] and registry.verify("exported").ok
    assert registry.resolve(str(folder / "model.onnx")) == str(folder)

    (folder / "model.onnx.data").unlink()
    with pytest.raises(llmos.errors.ModelFileError, match="external data file model.onnx.data is missing"):
        registry.import_model(folder, name="broken")


def test_import_rejects_what_cannot_load(home, registry, tmp_path, tmp_checkpoint, llmos):
    empty = tmp_path / "pickles"
    empty.mkdir()
    (empty / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(llmos.errors.ModelFileError, match="pickle"):
        registry.import_model(empty)
    folder = tmp_checkpoint("llama")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "mamba"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(llmos.errors.UnsupportedModelError):
        registry.import_model(folder)
    with pytest.raises(llmos.errors.ModelFileError):
        registry.import_model(tmp_path / "nowhere")
    assert registry.list_models() == []
    _no_leftovers(home)


def test_sharded_import_takes_the_indexed_shards(home, registry, checkpoint, tmp_path):
    src = tmp_path / "sharded"
    shutil.copytree(checkpoint("llama", sharded=True), src)
    (src / "consolidated.safetensors").write_bytes((src / next(
        f for f in os.listdir(src) if f.endswith(".safetensors"))).read_bytes())
    (src / "optimizer.pt").write_bytes(b"training state")
    entry = registry.import_model(src, name="sharded")
    assert "consolidated.safetensors" not in entry.files and "optimizer.pt" not in entry.files
    assert registry.INDEX_FILE in entry.files
    assert len([f for f in entry.files if f.endswith(".safetensors")]) == len(
        set(json.loads((src / registry.INDEX_FILE).read_text())["weight_map"].values()))


def test_quantize_delegates_and_records_lineage(home, registry, tiny, llmos, monkeypatch, capsys):
    parent = registry.import_model(tiny, name="tiny")
    calls = []

    def fake_quantize(path, out_dir, quant, **options):
        calls.append((path, out_dir, quant))
        shutil.copy(Path(path) / "model.safetensors", Path(out_dir) / "model.safetensors")
        shutil.copy(Path(path) / "config.json", Path(out_dir) / "config.json")

    from llmos.registry import operations

    monkeypatch.setattr(operations, "quantize_checkpoint", fake_quantize)
    code, out, _ = _cli(capsys, "quantize", "tiny", "--to", "int4", "--group", "64")
    assert code == 0 and "tiny:int4-g64" in out
    assert calls[0][0] == parent.path and calls[0][2] == "int4-g64"
    q = registry.show("tiny:int4-g64")
    assert q.quantization == {"method": "llmos", "quant": "int4-g64", "scheme": "int4", "group": 64}
    assert "tokenizer.json" in q.files and q.chat_template == parent.chat_template  # carried over
    assert [s["op"] for s in q.lineage] == ["import", "quantize"]
    assert q.lineage[-1]["from"] == "tiny:latest" and q.lineage[-1]["from_digest"] == parent.digest
    assert registry.verify("tiny").ok and registry.verify("tiny:int4-g64").ok  # the original stays

    def failing(path, out_dir, quant, **options):
        (Path(out_dir) / "model.safetensors").write_bytes(b"half written")
        raise RuntimeError("quantizer crashed")

    monkeypatch.setattr(operations, "quantize_checkpoint", failing)
    with pytest.raises(RuntimeError):
        registry.quantize("tiny", to="int8", name="tiny:q8")
    assert {e.ref for e in registry.list_models()} == {"tiny:latest", "tiny:int4-g64"}
    _no_leftovers(home)
    with pytest.raises(InvalidInputError):
        registry.quantize("tiny", to="int3")


def test_export_onnx_takes_a_registry_name(home, registry, tiny, llmos, tmp_path, capsys):
    from llmos.cli import main

    registry.import_model(tiny, name="tiny")
    assert main(["export-onnx", "tiny", str(tmp_path / "out"), "--precision", "fp16"]) == 0
    assert (tmp_path / "out" / "model.onnx").is_file()
    ids = [5, 6, 7, 8]
    a = llmos.load(str(tmp_path / "out")).logits(ids)
    b = llmos.load("tiny").logits(ids)
    assert np.abs(a - b).max() < 2e-2 * np.abs(b).max()  # fp16 export


def test_unwritable_home_is_a_clear_error(registry, tiny, llmos, monkeypatch, tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    monkeypatch.setenv("LLMOS_HOME", str(not_a_dir))
    with pytest.raises(llmos.errors.ModelFileError, match="nothing was changed"):
        registry.import_model(tiny, name="tiny")


def test_broken_manifest_is_listed_and_reported(home, registry, tiny, capsys):
    entry = registry.import_model(tiny, name="tiny")
    (Path(entry.path) / registry.MANIFEST).write_text("{not json")
    assert "problem" in registry.list_models()[0].manifest
    code, out, _ = _cli(capsys, "ls")
    assert "broken manifest" in out
    report = registry.verify("tiny")
    assert not report.ok and "not valid JSON" in report.problems[0]
