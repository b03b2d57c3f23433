"""The registry never shows a half-state: versions in their own folders behind one pointer,
readers that keep the version they resolved while another process replaces it, recovery after
a crash between publish steps, entries of the older flat layout, and the writers that refuse to
replace an entry unless forced (import, quantize, train), `rm` of paths, and a full disk while
quantizing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from llmos.store import build as store_build
# The registry tests' fixtures: a temp $LLMOS_HOME, llmos.registry, the tiny llama checkpoint.
from test_registry import home, registry, tiny  # noqa: F401  (pytest finds fixtures by name)

IDS = [1, 5, 9, 200, 17, 3]


def _llmos(*args, timeout=120):
    """The `llmos` command as a user runs it."""
    return subprocess.run([sys.executable, "-m", "llmos", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def _no_leftovers(home: Path) -> None:
    tmp = home / "tmp"
    assert not tmp.exists() or not any(tmp.iterdir()), sorted(tmp.iterdir())


def _versions(home: Path, name: str, tag: str = "latest") -> list[str]:
    folder = home / "models" / name / tag / "versions"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _flat_entry(registry, home: Path, src: Path, name: str) -> Path:
    """An entry as llmos wrote them before versions existed: the files and the manifest directly
    in models/<name>/<tag>/ (the manifest's content is the same in both layouts)."""
    made = registry.import_model(src, name="scratch-for-flat")
    flat = home / "models" / name / "latest"
    flat.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(made.path, flat)
    manifest = json.loads((flat / registry.MANIFEST).read_text())
    manifest["name"] = name
    (flat / registry.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    registry.remove("scratch-for-flat")
    assert sorted(os.listdir(flat)) == sorted(list(manifest["files"]) + [registry.MANIFEST])
    return flat


# ---- readers and writers at once ------------------------------------------------------------------

_WRITER = textwrap.dedent("""
    import sys, time
    from llmos import registry
    a, b, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        registry.import_model(a if n % 2 else b, name="race", force=True)
        n += 1
    print(n)
""")


def test_reimport_while_loading_never_mixes_versions(home, registry, tiny, checkpoint, llmos):
    """One process re-imports `race` in a loop (two versions that differ in config.json and in
    the weights) while this one loads it in a loop: every load must be one version whole (its
    logits equal to that version's exactly), never a FileNotFoundError or 'did you mean race'."""
    other = checkpoint("llama", seed=1, rms_norm_eps=0.25)
    expected = [llmos.load(str(p), threads=1).logits(IDS) for p in (tiny, other)]
    assert not np.array_equal(expected[0], expected[1])
    registry.import_model(tiny, name="race")
    seconds = 4.0
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(tiny), str(other), str(seconds)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    loads, seen = 0, set()
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            model = llmos.load("race", threads=1)
            got = model.logits(IDS)
            which = [i for i, e in enumerate(expected) if np.array_equal(got, e)]
            assert which, f"load {loads} mixed two versions (logits match neither)"
            seen.add(which[0])
            entry = registry.show("race")  # the manifest of a whole version, too
            assert entry.ref == "race:latest" and entry.files
            loads += 1
    finally:
        out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    imports = int(out.strip())
    assert imports >= 4 and loads >= 4, (imports, loads)
    assert seen == {0, 1}, "the loop never saw the name change versions"
    assert registry.verify("race").ok
    registry.list_models()
    assert len(_versions(home, "race")) == 1  # retired versions are deleted once unread
    _no_leftovers(home)


def test_a_pinned_reader_keeps_its_version(home, registry, tiny, tmp_checkpoint):
    from llmos.store.resolve import resolved

    registry.import_model(tiny, name="tiny")
    other = tmp_checkpoint("llama")
    (other / "README.md").write_text("# second version\n")
    with resolved("tiny") as folder:
        before = (Path(folder) / "README.md").read_bytes() if (Path(folder) / "README.md").exists() else None
        registry.import_model(other, name="tiny", force=True)
        assert registry.resolve("tiny") != folder  # the name moved on...
        assert Path(folder, registry.MANIFEST).is_file()  # ...and the reader's version stayed whole
        assert (Path(folder) / "README.md").read_bytes() if before else True
    registry.list_models()  # the next access deletes the version nobody reads any more
    assert not Path(folder).exists() and len(_versions(home, "tiny")) == 1


# ---- crashes between publish steps ----------------------------------------------------------------

_CRASHER = textwrap.dedent("""
    import os, signal, sys
    from llmos import registry
    from llmos.store import build
    real_switch = build.switch
    def die(*args, **kwargs):
        if "{point}" == "after-switch":
            real_switch(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)  # as if the machine lost power here
    build.switch = die
    registry.import_model(sys.argv[1], name=sys.argv[2], force=True)
""")


@pytest.mark.parametrize("point", ["before-switch", "after-switch"])
def test_kill_between_publish_steps(home, registry, tiny, tmp_checkpoint, llmos, point):
    old = registry.import_model(tiny, name="tiny")
    other = tmp_checkpoint("llama")
    (other / "README.md").write_text("# second version\n")
    proc = subprocess.run([sys.executable, "-c", _CRASHER.replace("{point}", point), str(other), "tiny"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    # Killed before the switch: the old version is the entry; after it: the new one. Either way
    # any access (here a load, not `llmos ls`) sees a whole version at once.
    model = llmos.load("tiny", threads=1)
    entry = registry.show("tiny")
    assert (entry.digest == old.digest) == (point == "before-switch")
    assert registry.verify("tiny").ok and model.logits(IDS).shape[-1] > 0
    registry.list_models()
    assert len(_versions(home, "tiny")) == 1
    _no_leftovers(home)


def test_kill_during_first_publish_leaves_no_entry(home, registry, tiny, llmos):
    proc = subprocess.run([sys.executable, "-c", _CRASHER.replace("{point}", "before-switch"), str(tiny), "fresh"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with pytest.raises(llmos.errors.ModelNotFoundError):
        registry.resolve("fresh")
    assert registry.list_models() == []
    assert not (home / "models" / "fresh").exists()
    _no_leftovers(home)


def test_entry_moved_aside_by_an_older_llmos_is_recovered_on_load(home, registry, tiny, llmos):
    """The flat layout's publish moved the old entry into tmp/replaced~... before renaming the
    new one in; a crash between the two hid the entry until `llmos ls` ran. Any lookup now puts
    it back."""
    flat = _flat_entry(registry, home, tiny, "tiny")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    aside = home / "tmp" / f"replaced~{store_build.HOST}~{dead.pid}~2222"
    aside.parent.mkdir(exist_ok=True)
    os.rename(flat, aside)
    model = llmos.load("tiny", threads=1)  # no `llmos ls` first
    np.testing.assert_array_equal(model.logits(IDS), llmos.load(str(tiny), threads=1).logits(IDS))
    assert registry.verify("tiny").ok and not aside.exists()


# ---- the flat layout of older registries ---------------------------------------------------------


def test_flat_entries_are_read_then_migrated_on_write(home, registry, tiny, tmp_checkpoint, llmos):
    flat = _flat_entry(registry, home, tiny, "old")
    assert [e.ref for e in registry.list_models()] == ["old:latest"]
    assert registry.resolve("old") == str(flat) and registry.verify("old").ok
    assert registry.show("old").ref == "old:latest"
    np.testing.assert_array_equal(llmos.load("old", threads=1).logits(IDS),
                                  llmos.load(str(tiny), threads=1).logits(IDS))
    r = _llmos("import", tiny, "--name", "old")
    assert r.returncode == 2 and "already exists" in r.stderr and "--force" in r.stderr

    other = tmp_checkpoint("llama")
    (other / "README.md").write_text("# second version\n")
    new = registry.import_model(other, name="old", force=True)
    assert registry.resolve("old") == new.path and Path(new.path).parent.name == "versions"
    assert sorted(os.listdir(flat)) == ["current", "versions"]  # the flat files went once unread
    assert registry.verify("old").ok and [e.ref for e in registry.list_models()] == ["old:latest"]
    registry.remove("old")
    assert not (home / "models" / "old").exists()
    _no_leftovers(home)


# ---- rm --------------------------------------------------------------------------------------------


def test_rm_of_a_link_to_an_entry_refuses_and_deletes_nothing(home, registry, tiny, tmp_path):
    entry = registry.import_model(tiny, name="tiny")
    link = tmp_path / "my-link"
    link.symlink_to(home / "models" / "tiny" / "latest")
    r = _llmos("rm", link)
    assert r.returncode == 2 and "llmos rm tiny:latest" in r.stderr, r.stderr
    assert link.is_symlink() and registry.verify("tiny").ok
    link2 = tmp_path / "version-link"
    link2.symlink_to(entry.path)
    r = _llmos("rm", link2)
    assert r.returncode == 2 and "tiny:latest" in r.stderr and link2.is_symlink()
    assert registry.show(str(link)).name == "tiny"  # the link still works as a path elsewhere
    r = _llmos("rm", "tiny")
    assert r.returncode == 0 and "removed tiny:latest" in r.stdout
    assert not (home / "models" / "tiny").exists()


def test_rm_of_an_entry_with_a_corrupt_manifest(home, registry, tiny):
    entry = registry.import_model(tiny, name="broken")
    (Path(entry.path) / registry.MANIFEST).write_text("{not json")
    r = _llmos("rm", "broken")
    assert r.returncode == 0 and "removed broken:latest" in r.stdout, r.stderr
    assert registry.list_models() == [] and not (home / "models" / "broken").exists()
    _no_leftovers(home)


# ---- writers refuse to replace unless forced ---------------------------------------------------------


def test_quantize_onto_its_own_name_needs_force(home, registry, tiny, llmos):
    registry.import_model(tiny, name="tiny")
    before = registry.show("tiny").digest
    r = _llmos("quantize", "tiny", "--to", "int8", "--name", "tiny")
    assert r.returncode == 2 and "already exists" in r.stderr and "--force" in r.stderr, r.stderr
    assert registry.show("tiny").digest == before
    r = _llmos("quantize", "tiny", "--to", "int8", "--name", "tiny", "--force")
    assert r.returncode == 0, r.stderr
    assert registry.show("tiny").quantization["quant"] == "int8"
    with pytest.raises(llmos.errors.InvalidInputError, match="already exists"):
        registry.quantize("tiny", to="int8", name="tiny")
    _no_leftovers(home)


def test_training_a_quantized_entry_is_refused(home, registry, tiny, tmp_path):
    registry.import_model(tiny, name="austen")
    registry.quantize("austen", to="int4")
    data = tmp_path / "data.txt"
    data.write_text("It is a truth universally acknowledged.\n" * 20)
    r = _llmos("train", "austen:int4", "--data", data, "--max-steps", "1", "--quiet", "--no-resume", timeout=300)
    assert r.returncode == 2 and "quantized" in r.stderr and "float" in r.stderr, r.stderr
    assert {e.ref for e in registry.list_models()} == {"austen:latest", "austen:int4"}


def test_train_out_existing_needs_force(home, registry, tiny, tmp_path, llmos):
    pytest.importorskip("torch")
    from llmos.train.trainer import train

    registry.import_model(tiny, name="taken")
    data = tmp_path / "data.txt"
    data.write_text("hello there\n" * 8)
    before = registry.show("taken").digest
    t0 = time.monotonic()
    with pytest.raises(llmos.errors.InvalidInputError, match="already exists.*--force"):
        train(str(tiny), str(data), out="taken", max_steps=1, progress=False)
    assert time.monotonic() - t0 < 30  # refused before training, not after
    assert registry.show("taken").digest == before
    r = train(str(tiny), str(data), out="taken", max_steps=1, max_seq_len=16, batch_size=2, progress=False,
              force=True)
    assert r.ref == "taken:latest" and registry.show("taken").digest != before


# ---- a full disk while quantizing ---------------------------------------------------------------


@pytest.mark.parametrize("how", ["raises", "silent-short-write"])
def test_disk_full_during_quantize(home, registry, tiny, llmos, monkeypatch, tmp_path, how):
    from safetensors import SafetensorError

    from llmos.runtime import quantize as rq

    real = rq.save_file

    def full(tensors, path, metadata=None):
        real(tensors, path, metadata=metadata)
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            f.truncate(size // 2)
        if how == "raises":  # what safetensors raises when the disk fills up
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                                  'message: "No space left on device" })')

    registry.import_model(tiny, name="tiny")
    monkeypatch.setattr(rq, "save_file", full)
    with pytest.raises(llmos.errors.DiskFullError, match="no space left"):
        registry.quantize("tiny", to="int8")
    assert [e.ref for e in registry.list_models()] == ["tiny:latest"]
    _no_leftovers(home)
    out = tmp_path / "q"
    with pytest.raises(llmos.errors.DiskFullError):
        llmos.quantize(str(tiny), str(out), quant="int8")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".llmos-quantize")]
