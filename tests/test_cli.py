"""`llmos generate` streams the same text that Model.generate returns, and bad input exits 2
with a one-line message instead of a traceback."""

from llmos.cli import main


def test_generate_streams_the_generation(checkpoint, llmos, capsys):
    path = str(checkpoint("llama"))
    expected = llmos.load(path).generate("Once upon", max_new_tokens=12, do_sample=True, temperature=0.9,
                                         seed=7).text
    assert main(["generate", "--model", path, "Once upon", "--max-new-tokens", "12", "--temperature", "0.9",
                 "--seed", "7"]) == 0
    assert capsys.readouterr().out == expected + "\n"


def test_generate_greedy_with_temperature_zero(checkpoint, llmos, capsys):
    path = str(checkpoint("gpt2"))
    expected = llmos.load(path).generate("Hello", max_new_tokens=8, do_sample=False).text
    assert main(["generate", "--model", path, "Hello", "--max-new-tokens", "8", "--temperature", "0"]) == 0
    assert capsys.readouterr().out == expected + "\n"


def test_bad_model_path_is_a_clear_error(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "nope"), "Hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llmos: error:") and "nope" in err and "Traceback" not in err


_WITHOUT_EXTRAS = """
import sys
BLOCKED = {"onnx", "onnxruntime", "onnxruntime_genai", "onnx_ir", "torch", "transformers", "sacrebleu",
           "rouge_score"}

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: not part of a plain `pip install .`")
        return None

sys.meta_path.insert(0, Block())
from llmos.cli import main
sys.exit(main(["run", "Once upon a time", "--max-new-tokens", "8", "--seed", "1"]))
"""


def test_the_readme_main_job_needs_no_optional_extra():
    """`pip install . && llmos run ...` must work without torch, transformers, onnx or the
    evaluation packages: the CLI builds every verb's parser without importing them."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _WITHOUT_EXTRAS], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert len(out.stdout.strip()) > 10


def test_python_dash_m_llmos_is_the_command():
    import subprocess
    import sys

    import llmos

    out = subprocess.run([sys.executable, "-m", "llmos", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"llmos {llmos.__version__}", out.stderr
    out = subprocess.run([sys.executable, "-m", "llmos", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for verb in ("generate", "run", "pull", "ls", "export-onnx", "train", "eval"):
        assert verb in out.stdout, verb


def test_documented_python_names_resolve_after_import_llmos():
    import subprocess
    import sys

    code = ("import llmos; "
            "assert callable(llmos.load) and callable(llmos.quantize) and callable(llmos.export_onnx); "
            "assert callable(llmos.convert_onnx) and llmos.GenerationConfig and llmos.Model and llmos.errors; "
            "assert callable(llmos.registry.import_model) and callable(llmos.train.train); "
            "assert callable(llmos.evaluate.evaluate) and callable(llmos.evaluate.perplexity); "
            "assert callable(llmos.default_model.load_default)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def _llmos(*args, timeout=300):
    """The `llmos` command as a user runs it (python -m llmos: the same entry point)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "llmos", *args], capture_output=True, text=True, timeout=timeout)


def test_every_command_checks_the_temperature_the_same_way(tmp_path):
    from llmos.runtime.default_model import default_model_path

    model = default_model_path()
    for args in (["run", "Hi"], ["generate", "--model", model, "Hi"]):
        out = _llmos(*args, "--temperature", "-1", "--max-new-tokens", "4")
        assert out.returncode == 2 and out.stdout == "", (args, out.stdout)
        assert "temperature" in out.stderr and "Traceback" not in out.stderr
    greedy = [_llmos(*args, "--temperature", "0", "--max-new-tokens", "6").stdout
              for args in (["run", "Hi"], ["generate", "--model", model, "Hi"])]
    assert greedy[0] == "Hi" + greedy[1]  # run echoes the prompt, generate prints only the new text


def test_a_foreign_flag_gets_the_close_llmos_flag():
    out = _llmos("run", "Hi", "--max-tokens", "5")
    assert out.returncode == 2 and "did you mean --max-new-tokens?" in out.stderr


def test_a_missing_path_says_it_does_not_exist(tmp_path):
    out = _llmos("generate", "--model", "./nope-not-here", "Hi")
    assert out.returncode == 2 and "./nope-not-here: no such file or folder" in out.stderr
    assert "llmos pull" not in out.stderr
    out = _llmos("generate", "--model", "some-org/some-model", "Hi")
    assert out.returncode == 2 and "llmos pull some-org/some-model" in out.stderr


def test_a_closed_pipe_ends_quietly(tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, LLMOS_HOME=str(tmp_path))
    for i in range(3):
        subprocess.run([sys.executable, "-m", "llmos", "import", os.fspath(_bundled()), "--name", f"m{i}"],
                       check=True, capture_output=True, env=env, timeout=300)
    # The reader is gone before llmos writes, as with `llmos ls | head -0`: every write fails.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        out = subprocess.run([sys.executable, "-m", "llmos", "ls"], stdout=write_end, stderr=subprocess.PIPE,
                             env=env, timeout=120, text=True)
    finally:
        os.close(write_end)
    assert "Traceback" not in out.stderr and "BrokenPipeError" not in out.stderr, out.stderr
    assert out.returncode == 141


def _bundled():
    from llmos.runtime.default_model import default_model_path

    return default_model_path()


_BLOCKING = """
import sys
BLOCKED = set(sys.argv[1].split(","))

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: not installed here")
        return None

sys.meta_path.insert(0, Block())
from llmos.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _without(blocked: str, *args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", _BLOCKING, blocked, *args], capture_output=True, text=True,
                          timeout=300)


def test_a_missing_extra_is_named_before_any_work(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "Once upon a time", "reference": "there was a house"}\n')
    model = _bundled()
    cases = [
        ("torch,transformers", ["train", model, "--data", str(data)], "llmos[train]"),
        ("onnx,onnxruntime", ["export-onnx", model, str(tmp_path / "out")], "llmos[onnx]"),
        ("sacrebleu", ["eval", model, "--metric", "bleu", "--data", str(data)], "llmos[eval]"),
        ("rouge_score", ["eval", model, "--metric", "rouge", "--data", str(data)], "llmos[eval]"),
    ]
    for blocked, args, extra in cases:
        out = _without(blocked, *args)
        assert out.returncode == 2, (args, out.stderr[-1500:])
        assert f"pip install '{extra}'" in out.stderr and "Traceback" not in out.stderr, out.stderr[-1500:]
        assert out.stdout == ""
    assert not (tmp_path / "out").exists()


def test_the_bundled_model_is_named_default(tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, LLMOS_HOME=str(tmp_path / "home"))

    def llmos_cmd(*args):
        return subprocess.run([sys.executable, "-m", "llmos", *args], capture_output=True, text=True, env=env,
                              timeout=300)

    out = llmos_cmd("show", "default")
    assert out.returncode == 0 and "llama" in out.stdout, out.stderr
    gen = llmos_cmd("generate", "--model", "default", "Once upon a time", "--max-new-tokens", "5",
                    "--temperature", "0")
    same = llmos_cmd("generate", "--model", _bundled(), "Once upon a time", "--max-new-tokens", "5",
                     "--temperature", "0")
    assert gen.returncode == 0 and gen.stdout == same.stdout and len(gen.stdout.strip()) > 0
    refused = llmos_cmd("import", _bundled(), "--name", "default")
    assert refused.returncode == 2 and "reserved" in refused.stderr
    assert not (tmp_path / "home" / "models" / "default").exists()  # not copied into the registry
    listed = llmos_cmd("ls")
    assert listed.returncode == 0 and "default:" not in listed.stdout
