"""The app test runner: each expectation kind passes and fails on fixture replies (parses:
python included), metrics agree with sacrebleu / rouge-score computed directly, and `tests:`
in an app file run into a TestReport whose text names each failure."""

from __future__ import annotations

import textwrap

import pytest

from llmos.apps import App, AppResult
from llmos.apps.spec import Expect
from llmos.apps.testing import check_expect
from llmos.runtime.default_model import load_default

HYP = "the cat sat on the mat today"
REF = "the cat sat on a mat today"


class FakeApp:
    def __init__(self, kind="text", schema=None, lang=None):
        from llmos.apps.spec import OutputSpec

        self.output = OutputSpec(kind, schema=schema, lang=lang)


def result(text, output=None, output_error=None, citations=()):
    return AppResult(text=text, output=text if output is None else output, output_error=output_error,
                     citations=list(citations))


def failures(expect: dict, res: AppResult, app=None) -> list[str]:
    return check_expect(Expect.model_validate(expect), res, app or FakeApp())


def test_contains():
    assert failures({"contains": "cat"}, result(HYP)) == []
    assert failures({"contains": ["cat", "mat"]}, result(HYP)) == []
    assert failures({"contains": ["cat", "dog"]}, result(HYP)) == ["contains 'dog': not in the reply"]


def test_regex():
    assert failures({"regex": r"\bsat\b"}, result(HYP)) == []
    assert failures({"regex": r"^mat"}, result(HYP)) == ["regex '^mat': no match in the reply"]


SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def test_json_schema_true_uses_the_apps_schema():
    app = FakeApp("json", schema=SCHEMA)
    assert failures({"json_schema": True}, result('{"n": 1}', {"n": 1}), app) == []
    bad = result('{"n": ', None, "the reply is not valid JSON: Expecting value (the reply stopped at max_new_tokens)")
    assert failures({"json_schema": True}, bad, app) == ["json_schema: " + bad.output_error]


def test_json_schema_given_in_the_test():
    pytest.importorskip("jsonschema", reason="a schema given in a test is checked with jsonschema (the test extra)")
    assert failures({"json_schema": SCHEMA}, result('{"n": 2}')) == []
    assert failures({"json_schema": SCHEMA}, result('{"n": "two"}')) == ["json_schema: n: 'two' is not of type 'integer'"]
    assert failures({"json_schema": SCHEMA}, result("not json"))[0].startswith("json_schema: the reply is not JSON")


def test_parses_python():
    good = "```python\ndef f(x):\n    return x * 2\n```"
    bad = "```python\ndef f(x):\nreturn x * 2\n```"
    assert failures({"parses": "python"}, result(good)) == []
    assert failures({"parses": "python"}, result(bad)) == [
        "parses python: code does not parse: line 2: expected an indented block after function definition on line 1"]
    # a code app: the extracted output is what is parsed
    app = FakeApp("code", lang="python")
    assert failures({"parses": "python"}, result(bad, "print('ok')"), app) == []
    assert failures({"parses": "python"}, result(good, "print('ok'"), app)[0].startswith(
        "parses python: code does not parse: line 1")


def test_citations():
    cites = [{"id": 1, "source": "a.md"}, {"id": 2, "source": "b.md"}]
    assert failures({"citations": 2}, result("x", citations=cites)) == []
    assert failures({"citations": 3}, result("x", citations=cites)) == ["citations: 2, expected at least 3"]


def _references():
    sacrebleu = pytest.importorskip("sacrebleu", reason="the eval extra")
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer", reason="the eval extra")
    return {
        "bleu": sacrebleu.corpus_bleu([HYP], [[REF]]).score,
        "chrf": sacrebleu.corpus_chrf([HYP], [[REF]]).score,
        "rouge": 100 * rouge_scorer.RougeScorer(["rougeL"]).score(REF, HYP)["rougeL"].fmeasure,
    }


@pytest.mark.parametrize("name", ["bleu", "chrf", "rouge"])
def test_metric_against_reference_values(name):
    want = _references()[name]
    assert 10 < want < 100
    metric = {"name": name, "reference": REF}
    assert failures({"metric": {**metric, "min": want - 0.01}}, result(HYP)) == []
    assert failures({"metric": {**metric, "min": want + 0.01}}, result(HYP)) == [
        f"metric {name}: {want:.2f}, under the minimum of {want + 0.01:g}"]


def test_every_key_must_hold():
    got = failures({"contains": "cat", "regex": "dog", "citations": 1}, result(HYP))
    assert got == ["regex 'dog': no match in the reply", "citations: 0, expected at least 1"]


@pytest.fixture(scope="module")
def model():
    return load_default()


def test_app_tests_run_into_a_readable_report(tmp_path, model):
    p = tmp_path / "echo.app.md"
    p.write_text(textwrap.dedent("""\
        ---
        app: echo
        kind: generate
        params: {max_new_tokens: 4}
        inputs:
          word: {}
        tests:
          - name: says the word
            inputs: {word: hello}
            expect: {contains: hello}
          - name: code parses
            inputs: {word: code}
            expect: {parses: python}
        ---
        Say {{ word }}.
        """))
    app = App.load(p, model=model)
    seen = []

    def generate(model, ids, options, cancel):
        seen.append(options)
        text = "hello there" if len(seen) == 1 else "```python\nif x\n```"
        yield {"text": text, "tokens": [1, 2], "logprobs": None, "top": None, "finish": "eos"}

    app._generate = generate
    report = app.test()
    assert not report.ok and (report.passed, report.failed) == (1, 1)
    assert all(o["seed"] == 0 for o in seen)  # reproducible: a fixed seed unless the test sets one
    text = str(report)
    lines = text.splitlines()
    assert lines[0] == f"echo ({p}): 2 tests, 1 passed, 1 failed"
    assert lines[1].startswith("  PASS says the word (")
    assert lines[2].startswith("  FAIL code parses (")
    assert lines[3] == "       parses python: code does not parse: line 1: expected ':'"
    assert lines[4] == "       reply: '```python\\nif x\\n```'"
    d = report.to_dict()
    assert d["ok"] is False and d["results"][1]["failures"] == [lines[3].strip()]


def test_app_tests_on_the_bundled_model(tmp_path, model):
    p = tmp_path / "w.app.md"
    p.write_text(textwrap.dedent("""\
        ---
        app: w
        kind: generate
        params: {max_new_tokens: 6}
        inputs:
          topic: {}
        tests:
          - name: replies
            inputs: {topic: tea}
            expect: {regex: "\\\\S"}
          - name: cannot say this
            inputs: {topic: tea}
            expect: {contains: "zzzz-not-a-word"}
        ---
        Write about {{ topic }}.
        """))
    report = App.load(p, model=model).test()
    assert [r.ok for r in report.results] == [True, False]
    assert "contains 'zzzz-not-a-word': not in the reply" in str(report)
