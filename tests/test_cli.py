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
