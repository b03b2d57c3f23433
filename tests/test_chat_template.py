"""llmos.text.chat_template.ChatTemplate against transformers' apply_chat_template(tokenize=False)."""

from __future__ import annotations

import dataclasses

import pytest

import tokenizer_factory as tf

from llmos.text.chat_template import ChatTemplate, _compile
from llmos.errors import ChatTemplateError, InvalidInputError
from llmos.text.tokenizer import Tokenizer

import transformers

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Météo d'une ville — « quotes » & <tags>",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]

CONVERSATIONS = {
    "single": [{"role": "user", "content": "Hello!"}],
    "system": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "  Hi there  "},
        {"role": "assistant", "content": "Hello. 你好 😀"},
        {"role": "user", "content": "Again\nwith newline"},
    ],
    "alternating": [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4", "tool_calls": None},
        {"role": "user", "content": "And 3+3?"},
    ],
    "tool_flow": [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "22°C"},
        {"role": "user", "content": "Thanks"},
    ],
    "reasoning": [
        {"role": "user", "content": "Think first."},
        {"role": "assistant", "content": "<think>\nsteps\n</think>\n\nDone.", "reasoning_content": None},
        {"role": "user", "content": "And now?"},
        {"role": "assistant", "content": "Answer.", "reasoning": "hidden chain"},
    ],
}

TEMPLATES = {
    "chatml": tf.CHATML_TEMPLATE,
    "qwen_tools": tf.QWEN_TOOLS_TEMPLATE,
    "qwen3": tf.QWEN3_TEMPLATE,
    "llama3": tf.LLAMA3_TEMPLATE,
    "llama31_date": tf.LLAMA31_DATE_TEMPLATE,
    "gemma": tf.GEMMA_TEMPLATE,
    "zephyr": tf.ZEPHYR_TEMPLATE,
    "llama2": tf.LLAMA2_TEMPLATE,
    "generation_block": (
        "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{{ eos_token }}"
        "{% endgeneration %}{% else %}[{{ m.role }}]{{ m.content }}\n{% endif %}{% endfor %}"
    ),
    "loop_controls": (
        "{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}"
        "{{ loop.index }}:{{ m.content }}\n{% if loop.index > 2 %}{% break %}{% endif %}{% endfor %}"
        "{{ tools | tojson(indent=2, sort_keys=true) if tools else '' }}{{ {'é': 1} | tojson }}"
        "{{ dict(a=1) | tojson(separators=(',', ':')) }}{{ unk_token }}|{{ pad_token }}\n"
    ),
    "trailing_newline": "{{ messages | length }}\n\n",
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tf.make_bytelevel_bpe(
        tmp_path_factory.mktemp("chat") / "tok",
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|im_start|>",
    )
    return transformers.AutoTokenizer.from_pretrained(str(path))


def _render_reference(ref, template, messages, **kwargs):
    return ref.apply_chat_template(messages, chat_template=template, tokenize=False, **kwargs)


def _outcome(fn):
    try:
        return ("ok", fn())
    except Exception as e:  # both libraries' errors, compared by message
        return ("error", str(e))


@pytest.mark.parametrize("template_name", sorted(TEMPLATES))
def test_renders_like_transformers(reference, template_name):
    template = TEMPLATES[template_name]
    ours = ChatTemplate(template, special_tokens=reference.special_tokens_map, origin=template_name)
    compared = 0
    for conv_name, messages in CONVERSATIONS.items():
        for add in (True, False):
            for kwargs in ({}, {"tools": TOOLS}, {"enable_thinking": False, "date_string": "01 Jan 2025"}):
                want = _outcome(lambda: _render_reference(reference, template, messages, add_generation_prompt=add, **kwargs))
                got = _outcome(lambda: ours.render(messages, add_generation_prompt=add, **kwargs))
                assert got == want, (template_name, conv_name, add, kwargs)
                compared += want[0] == "ok"
    assert compared > 0


def test_bos_eos_arguments_and_extra_variables():
    t = ChatTemplate("{{ bos_token }}|{{ eos_token }}|{{ custom }}|{{ documents }}", bos_token="<s>", eos_token="</s>")
    assert t.render([{"role": "user", "content": "x"}], custom=5) == "<s>|</s>|5|None"
    # extra variables override the special tokens, as in transformers
    assert t.render([{"role": "user", "content": "x"}], bos_token="B").startswith("B|")


def test_gemma_rejects_system_role_with_template_message(reference):
    ours = ChatTemplate(tf.GEMMA_TEMPLATE, bos_token="<bos>", origin="gemma/chat_template.jinja")
    messages = [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}]
    with pytest.raises(ChatTemplateError) as info:
        ours.render(messages)
    assert str(info.value) == "System role not supported"
    assert info.value.file == "gemma/chat_template.jinja"
    with pytest.raises(Exception, match="^System role not supported$"):
        _render_reference(reference, tf.GEMMA_TEMPLATE, messages)


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ lipsum.__globals__['os'] }}",
        "{{ ''.__class__ }}",
        "{{ joiner.__init__ }}",
        "{{ messages | attr('__class__') }}",
        "{{ dict.__call__ }}",
        "{{ dict.mro() }}",
        "{{ namespace.__init__ }}",
        "{% set ns = namespace() %}{% set ns._secret = 1 %}",
        "{{ namespace(__class__=1) }}",
        "{{ '{0.__class__}'.format(messages) }}",
        "{{ messages.append(1) }}",
        "{{ messages[0].update({'role': 'x'}) }}",
        "{{ 'a' * 100000000 }}",
        "{{ [1] * 100000000 }}",
        "{{ 2 ** 100000 }}",
        "{{ range(10000000) | list | length }}",
    ],
)
def test_sandbox_blocks_escapes(source):
    t = ChatTemplate(source, origin="evil.jinja")
    with pytest.raises(ChatTemplateError) as info:
        t.render([{"role": "user", "content": "x"}])
    assert info.value.file == "evil.jinja"


def test_syntax_error_names_origin():
    with pytest.raises(ChatTemplateError) as info:
        ChatTemplate("line one\n{% for m in messages %}{{ m.content }", origin="/ckpt/chat_template.jinja")
    assert info.value.file == "/ckpt/chat_template.jinja"
    assert "/ckpt/chat_template.jinja" in str(info.value) and "line 2" in str(info.value)
    with pytest.raises(ChatTemplateError, match="<string>"):
        ChatTemplate("{% if %}")
    with pytest.raises(ChatTemplateError):
        ChatTemplate(None)  # type: ignore[arg-type]


def test_runtime_errors_become_chat_template_errors():
    t = ChatTemplate("{{ messages[5].content.upper() }}", origin="t.jinja")
    with pytest.raises(ChatTemplateError, match="t.jinja"):
        t.render([{"role": "user", "content": "x"}])
    t = ChatTemplate("{{ raise_exception(messages[0].content) }}")
    with pytest.raises(ChatTemplateError) as info:
        t.render([{"role": "user", "content": "custom message ✓"}])
    assert str(info.value) == "custom message ✓"


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        ("hello", "messages"),
        ({"role": "user"}, "messages"),
        ([], "messages"),
        (None, "messages"),
        (["hi"], "messages[0]"),
        ([{"content": "no role"}], "messages[0].role"),
        ([{"role": "user", "content": "ok"}, {"role": 3, "content": "x"}], "messages[1].role"),
    ],
)
def test_message_validation(messages, field):
    t = ChatTemplate(tf.CHATML_TEMPLATE)
    with pytest.raises(InvalidInputError) as info:
        t.render(messages)
    assert info.value.field == field


def test_tools_validation():
    t = ChatTemplate(tf.QWEN_TOOLS_TEMPLATE)
    msgs = [{"role": "user", "content": "x"}]
    for bad in ({"type": "function"}, ["not a dict"], "tools"):
        with pytest.raises(InvalidInputError):
            t.render(msgs, tools=bad)


def test_rich_objects_reach_the_template_as_plain_data(reference):
    import numpy as np

    @dataclasses.dataclass
    class Part:
        type: str
        text: str

    template = (
        "{% for m in messages %}{{ m.role }}:{% if m.content is string %}{{ m.content }}"
        "{% else %}{% for p in m.content %}{{ p.type }}={{ p.text }};{% endfor %}{% endif %}"
        "|{{ m.flag }}|{{ m.arr }}\n{% endfor %}"
    )
    messages = [
        {"role": "user", "content": [Part("text", "hi")], "flag": np.bool_(False), "arr": np.zeros(2)},
        {"role": "assistant", "content": "ok", "flag": np.int64(3), "arr": None},
    ]
    ours = ChatTemplate(template).render(messages, add_generation_prompt=False)
    assert ours == _render_reference(reference, template, messages, add_generation_prompt=False)
    assert ours == "user:text=hi;|False|<ndarray>\nassistant:ok|3|\n"


def test_compiled_once():
    source = "{{ messages[0].content }} compiled-once-marker"
    before = _compile.cache_info()
    for _ in range(3):
        assert ChatTemplate(source).render([{"role": "user", "content": "a"}]) == "a compiled-once-marker"
    after = _compile.cache_info()
    assert after.misses == before.misses + 1 and after.hits >= before.hits + 2


def test_tokenizer_apply_chat_template_matches(tmp_path):
    cases = [
        tf.make_bytelevel_bpe(tmp_path / "chatml"),
        tf.make_llama_style(tmp_path / "llama2"),
        tf.make_gemma_style(tmp_path / "gemma"),
        tf.make_bytelevel_bpe(tmp_path / "zephyr", chat_template=tf.ZEPHYR_TEMPLATE, legacy_layout=True),
    ]
    messages = [{"role": "user", "content": "Hi 你好"}, {"role": "assistant", "content": "Yo"}, {"role": "user", "content": "Bye"}]
    for path in cases:
        ours = Tokenizer.from_dir(path)
        ref = transformers.AutoTokenizer.from_pretrained(str(path))
        for add in (True, False):
            text = ours.apply_chat_template(messages, add_generation_prompt=add)
            assert text == ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=add)
            expected_ids = ref.apply_chat_template(messages, tokenize=True, add_generation_prompt=add, return_dict=False)
            assert ours.encode(text, add_special_tokens=False) == expected_ids
