"""App files: every way a NAME.app.md can be wrong is an AppFileError whose message starts
`FILE:LINE: FIELD:` with the line of the app file it is about (fixtures written in tmp_path);
a valid file loads into the documented API (inputs, schema, coercion) without loading a model."""

from __future__ import annotations

import textwrap

import pytest

from llmos import limits
from llmos.apps import App
from llmos.errors import AppFileError, InvalidInputError

GOOD = """\
---
app: writer
kind: generate
description: Writes a paragraph
params: {max_new_tokens: 20}
inputs:
  topic: {type: string, description: "what about"}
  tone: {type: choice, choices: [formal, friendly], default: friendly}
  length: {type: integer, default: 100, min: 10, max: 400}
  ratio: {type: number, default: 0.5}
  draft: {type: boolean, default: false}
  notes: {type: text, required: false, max: 50}
---
Write a {{ tone }} paragraph of {{ length }} words about {{ topic }}.
"""


def write(tmp_path, text, name="x.app.md"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text), encoding="utf-8")
    return p


def load_error(tmp_path, text, **files) -> AppFileError:
    for name, content in files.items():
        (tmp_path / name.replace("__", "/")).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name.replace("__", "/")).write_text(content)
    p = write(tmp_path, text)
    with pytest.raises(AppFileError) as e:
        App.load(p)
    assert e.value.file == str(p)
    return e.value


def check(err: AppFileError, line: int | None, field: str | None, *words: str) -> None:
    msg = str(err)
    where = f"{err.file}:{line}" if line is not None else err.file
    prefix = f"{where}: {field}: " if field else f"{where}: "
    assert msg.startswith(prefix), (msg, prefix)
    assert err.line == line and err.field == field, (err.line, err.field, msg)
    for w in words:
        assert w in msg, (w, msg)


def test_valid_file_loads_without_a_model(tmp_path):
    app = App.load(write(tmp_path, GOOD))
    assert (app.name, app.kind, app.description, app.model_ref) == ("writer", "generate", "Writes a paragraph",
                                                                     "default")
    assert app._model is None  # lazy: nothing loaded yet
    assert [s.name for s in app.input_specs()] == ["topic", "tone", "length", "ratio", "draft", "notes"]
    specs = {s.name: s for s in app.input_specs()}
    assert specs["topic"].required and not specs["tone"].required and not specs["notes"].required
    assert specs["tone"].choices == ("formal", "friendly")
    schema = app.input_schema()
    assert schema["required"] == ["topic"] and schema["additionalProperties"] is False
    assert schema["properties"]["tone"] == {"enum": ["formal", "friendly"], "default": "friendly"}
    assert schema["properties"]["length"] == {"type": "integer", "minimum": 10, "maximum": 400, "default": 100}
    assert schema["properties"]["notes"]["maxLength"] == 50
    assert app.spec.body.strip().startswith("Write a {{ tone }}")


def test_coerce_inputs_fills_defaults_and_parses_cli_strings(tmp_path):
    app = App.load(write(tmp_path, GOOD))
    assert app.coerce_inputs({"topic": "cats"}) == {"topic": "cats", "tone": "friendly", "length": 100,
                                                    "ratio": 0.5, "draft": False, "notes": None}
    got = app.coerce_inputs({"topic": "cats", "length": "12", "ratio": "2.5", "draft": "yes", "tone": "formal"},
                            from_strings=True)
    assert (got["length"], got["ratio"], got["draft"], got["tone"]) == (12, 2.5, True, "formal")


@pytest.mark.parametrize("raw, field, words", [
    ({}, "topic", ["writer: input topic is required"]),
    ({"topic": "a", "tone": "formall"}, "tone", ["not one of formal, friendly", "did you mean 'formal'"]),
    ({"topic": "a", "length": 5}, "length", ["under the minimum of 10"]),
    ({"topic": "a", "length": 401}, "length", ["over the maximum of 400"]),
    ({"topic": "a", "length": "12"}, "length", ["expected an integer"]),
    ({"topic": "a", "draft": 1}, "draft", ["expected true or false"]),
    ({"topic": "a\nb"}, "topic", ["one line"]),
    ({"topic": "a", "notes": "x" * 51}, "notes", ["51 characters, over the limit of 50"]),
    ({"topic": "a", "topik": "b"}, "topik", ["unknown input 'topik'", "did you mean 'topic'"]),
])
def test_coerce_inputs_errors_name_the_app_and_the_input(tmp_path, raw, field, words):
    app = App.load(write(tmp_path, GOOD))
    with pytest.raises(InvalidInputError) as e:
        app.coerce_inputs(raw)
    assert e.value.field == field
    for w in words:
        assert w in str(e.value), str(e.value)


def test_cli_strings_that_do_not_parse_name_the_input(tmp_path):
    app = App.load(write(tmp_path, GOOD))
    with pytest.raises(InvalidInputError, match="writer: input length: expected an integer, got 'ten'"):
        app.coerce_inputs({"topic": "a", "length": "ten"}, from_strings=True)
    with pytest.raises(InvalidInputError, match="input draft: expected true or false, got 'maybe'"):
        app.coerce_inputs({"topic": "a", "draft": "maybe"}, from_strings=True)


def test_string_input_limit_from_llmos_limits(tmp_path):
    app = App.load(write(tmp_path, GOOD))
    old = limits.current().max_app_input_chars
    limits.configure(max_app_input_chars=10)
    try:
        with pytest.raises(InvalidInputError, match="11 characters, over the limit of 10 .*max_app_input_chars"):
            app.coerce_inputs({"topic": "x" * 11})
    finally:
        limits.configure(max_app_input_chars=old)


def test_no_front_matter(tmp_path):
    check(load_error(tmp_path, "Hello, I am a prompt.\n"), 1, None, "no front matter")


def test_unclosed_front_matter(tmp_path):
    check(load_error(tmp_path, "---\napp: a\nkind: chat\n"), 1, None, "no closing `---`")


def test_yaml_syntax_error_names_its_line(tmp_path):
    err = load_error(tmp_path, "---\napp: a\nkind: chat\ninputs: {x: [1, 2}\n---\nbody\n")
    check(err, 4, None, "invalid YAML")


def test_unknown_top_level_key_with_did_you_mean(tmp_path):
    err = load_error(tmp_path, "---\napp: a\nkind: chat\nmodle: default\n---\n")
    check(err, 4, "modle", "unknown key (did you mean 'model'?)", "known keys here: app, kind")


def test_unknown_input_key_with_did_you_mean(tmp_path):
    err = load_error(tmp_path, """\
        ---
        app: a
        kind: chat
        inputs:
          tone:
            type: string
            descripton: the tone
        ---
        """)
    check(err, 7, "inputs.tone.descripton", "did you mean 'description'?")


def test_bad_type(tmp_path):
    check(load_error(tmp_path, "---\napp: a\nkind: chat\n\nretrieve: three\n---\n"), 5, "retrieve",
          "valid integer", "'three'")


def test_unknown_kind_with_did_you_mean(tmp_path):
    check(load_error(tmp_path, "---\napp: a\nkind: chatt\n---\n"), 3, "kind", "'chatt' is not one of",
          "did you mean 'chat'?")


def test_missing_required_key(tmp_path):
    check(load_error(tmp_path, "---\nkind: chat\n---\n"), 1, "app", "is required")


def test_bad_app_name(tmp_path):
    check(load_error(tmp_path, "---\napp: My App\nkind: chat\n---\n"), 2, "app", "not an app name")


def test_duplicate_key(tmp_path):
    check(load_error(tmp_path, "---\napp: a\nkind: chat\napp: b\n---\n"), 4, "app", "duplicate key")


def test_kind_needs_its_input(tmp_path):
    check(load_error(tmp_path, "---\napp: a\nkind: qa\ninputs:\n  text: {}\n---\n"), 3, "kind",
          "declare the input `question`")


def test_bad_output_spec(tmp_path):
    check(load_error(tmp_path, "---\napp: a\nkind: chat\noutput: xml\n---\n"), 4, "output",
          "expected text, json:<schema file>")


def test_missing_schema_file(tmp_path):
    check(load_error(tmp_path, "---\napp: a\nkind: chat\noutput: json:schema.json\n---\n"), 4, "output",
          "schema.json cannot be read")


def test_schema_file_not_json(tmp_path):
    err = load_error(tmp_path, "---\napp: a\nkind: chat\noutput: json:s.json\n---\n", **{"s.json": "{nope"})
    check(err, 4, "output", "s.json is not JSON")


def test_invalid_inline_schema(tmp_path):
    pytest.importorskip("jsonschema", reason="schema checking at load uses jsonschema (the test extra)")
    err = load_error(tmp_path, "---\napp: a\nkind: chat\noutput:\n  json: {type: 12}\n---\n")
    check(err, 4, "output", "not a valid JSON schema")


def test_missing_tools_module(tmp_path):
    check(load_error(tmp_path, "---\napp: a\nkind: chat\ntools: tools.py\n---\n"), 4, "tools",
          "tools.py cannot be read")


def test_tools_function_not_in_module(tmp_path):
    err = load_error(tmp_path, "---\napp: a\nkind: chat\ntools: {module: t.py, functions: [handof]}\n---\n",
                     **{"t.py": "def handoff(reason: str) -> str:\n    return 'ok'\n"})
    check(err, 4, "tools.functions", "no function 'handof'", "it has: handoff")


def test_tools_module_that_does_not_parse(tmp_path):
    err = load_error(tmp_path, "---\napp: a\nkind: chat\ntools: t.py\n---\n", **{"t.py": "def f(:\n"})
    check(err, 4, "tools", "does not parse")


def test_missing_knowledge_path(tmp_path):
    err = load_error(tmp_path, "---\napp: a\nkind: chat\nknowledge:\n  - docs/\n  - faq.md\n---\n",
                     **{"docs__a.md": "hello"})
    check(err, 6, "knowledge[1]", "faq.md: no such file or folder")


def test_file_over_the_size_limit(tmp_path):
    old = limits.current().max_app_file_bytes
    limits.configure(max_app_file_bytes=100)
    try:
        err = load_error(tmp_path, "---\napp: a\nkind: chat\n---\n" + "x" * 200)
    finally:
        limits.configure(max_app_file_bytes=old)
    check(err, None, None, "over the limit of 100 bytes", "max_app_file_bytes")


def test_not_utf8(tmp_path):
    p = tmp_path / "x.app.md"
    p.write_bytes(b"---\napp: a\nkind: chat\n---\nhello \xff\n")
    with pytest.raises(AppFileError) as e:
        App.load(p)
    check(e.value, 5, None, "not UTF-8")


def test_body_template_syntax_error_names_the_body_line(tmp_path):
    err = load_error(tmp_path, "---\napp: a\nkind: chat\n---\n\nline one\nline {{ two\n")
    check(err, 7, "body", "template syntax error")


def test_unknown_variable_in_body(tmp_path):
    err = load_error(tmp_path, "---\napp: a\nkind: chat\ninputs:\n  company: {default: Acme}\n---\n"
                               "You work at {{ company }}.\nTone: {{ tone }}.\n")
    check(err, 8, "body", "unknown variable 'tone'", "declare it under `inputs:`")


def test_unknown_variable_in_user_template(tmp_path):
    err = load_error(tmp_path, "---\napp: a\nkind: generate\nuser: 'Say {{ txt }}'\n---\n")
    check(err, 4, "user", "unknown variable 'txt'")


def test_chunks_without_knowledge(tmp_path):
    err = load_error(tmp_path, "---\napp: a\nkind: chat\n---\n{% for c in chunks %}{{ c.text }}{% endfor %}\n")
    check(err, 5, "body", "`chunks` exists only when the app has `knowledge:`")


def test_default_that_does_not_fit(tmp_path):
    err = load_error(tmp_path, "---\napp: a\nkind: chat\ninputs:\n  tone: {type: choice, choices: [a, b],"
                               " default: c}\n---\n")
    check(err, 5, "inputs.tone.default", "the default does not fit")


def test_choice_without_choices(tmp_path):
    check(load_error(tmp_path, "---\napp: a\nkind: chat\ninputs:\n  tone: {type: choice}\n---\n"), 5,
          "inputs.tone", "needs a non-empty `choices`")


def test_reserved_input_name(tmp_path):
    check(load_error(tmp_path, "---\napp: a\nkind: chat\ninputs:\n  message: {}\n---\n"), 4, "inputs",
          "'message' is reserved")


def test_unknown_generation_param(tmp_path):
    check(load_error(tmp_path, "---\napp: a\nkind: chat\nparams: {max_new_token: 5}\n---\n"), 4, "params",
          "unknown generation option 'max_new_token'", "did you mean 'max_new_tokens'")


def test_structured_param_belongs_to_output(tmp_path):
    check(load_error(tmp_path, "---\napp: a\nkind: chat\nparams: {guided_regex: 'a+'}\n---\n"), 4, "params",
          "say `output: json:...`")


def test_test_with_unknown_input(tmp_path):
    err = load_error(tmp_path, """\
        ---
        app: a
        kind: generate
        inputs:
          topic: {}
        tests:
          - name: t
            inputs: {topc: x}
            expect: {contains: x}
        ---
        """)
    check(err, 8, "tests[0].inputs.topc", "unknown input 'topc'", "did you mean 'topic'")


def test_unknown_expectation(tmp_path):
    err = load_error(tmp_path, """\
        ---
        app: a
        kind: chat
        tests:
          - name: t
            message: hi
            expect:
              containz: x
        ---
        """)
    check(err, 8, "tests[0].expect.containz", "did you mean 'contains'")


def test_empty_expectation(tmp_path):
    err = load_error(tmp_path, "---\napp: a\nkind: chat\ntests:\n  - {name: t, message: hi, expect: {}}\n---\n")
    check(err, 5, "tests[0].expect", "give at least one of contains")


def test_bad_regex_and_metric(tmp_path):
    err = load_error(tmp_path, "---\napp: a\nkind: chat\ntests:\n  - name: t\n    message: hi\n"
                               "    expect: {regex: '(a'}\n---\n")
    check(err, 7, "tests[0].expect.regex", "not a valid regular expression")
    err = load_error(tmp_path, "---\napp: a\nkind: chat\ntests:\n  - name: t\n    message: hi\n"
                               "    expect:\n      metric: {name: bleuu, reference: x, min: 1}\n---\n")
    check(err, 8, "tests[0].expect.metric.name", "did you mean 'bleu'")


def test_chat_test_needs_a_message(tmp_path):
    err = load_error(tmp_path, "---\napp: a\nkind: chat\ntests:\n  - {name: t, expect: {contains: x}}\n---\n")
    check(err, 5, "tests[0]", "needs `message:`")


def test_body_is_not_a_front_matter_key(tmp_path):
    check(load_error(tmp_path, "---\napp: a\nkind: chat\nbody: hi\n---\n"), 4, "body", "not a front-matter key")


def test_yaml_alias_bomb_is_refused(tmp_path):
    bomb = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [*a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}]\n"
        for i in range(1, 9))
    err = load_error(tmp_path, "---\napp: a\nkind: chat\nparams:\n  " + bomb.replace("\n", "\n  ") + "\n---\n")
    assert "expands to over" in str(err)


def test_model_path_relative_to_the_app_file(tmp_path):
    err = load_error(tmp_path, "---\napp: a\nkind: chat\nmodel: ./models/tiny\n---\n")
    check(err, 4, "model", "no such model folder")
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    app = App.load(write(tmp_path, "---\napp: a\nkind: chat\nmodel: ./models/tiny\n---\n"))
    assert app.model_ref == str((tmp_path / "models" / "tiny").resolve())
    app = App.load(write(tmp_path, "---\napp: a\nkind: chat\nmodel: some-registry-name\n---\n"))
    assert app.model_ref == "some-registry-name"


def test_output_spec_json_form_carries_the_schema_read_from_its_file(tmp_path):
    schema = {"type": "object", "properties": {"q": {"type": "string"}}}
    (tmp_path / "s.json").write_text(__import__("json").dumps(schema))
    app = App.load(write(tmp_path, "---\napp: a\nkind: chat\noutput: json:s.json\n---\n"))
    assert app.spec.output.model_dump() == {"kind": "json", "schema": schema, "schema_file": "s.json", "lang": None}
    assert app.output.schema == schema
    app = App.load(write(tmp_path, "---\napp: a\nkind: chat\noutput: code:Python\n---\n"))
    assert app.spec.output.model_dump() == {"kind": "code", "schema": None, "schema_file": None, "lang": "python"}
