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
