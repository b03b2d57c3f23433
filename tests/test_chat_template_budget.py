"""Chat templates come from strangers: rendering has a budget (llmos.limits.max_template_*),
and each way the hostile-input probe found to hang or exhaust memory is refused with a
ChatTemplateError naming the limit. Every case runs in a subprocess under a memory cap and a
timeout, so that a regression fails instead of hanging or taking the host down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

import tokenizer_factory as tf

from llmos.text.chat_template import ChatTemplate
from child_env import child_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHARS, LOOPS, BITS, SECONDS = ("max_template_chars", "max_template_loop_iterations", "max_template_int_bits",
                               "max_template_seconds")
DOUBLE = "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
NEST = "{% set ns = namespace(x=['abc']) %}{% for i in range(40) %}{% set ns.x = [ns.x, ns.x] %}{% endfor %}"

CASES = {
    "nested_range_loops": ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", LOOPS),
    "power_of_power": ("{{ (10 ** 4096) ** 4096 }}", BITS),
    "squaring_loop": ("{% set ns = namespace(n=3) %}{% for i in range(64) %}{% set ns.n = ns.n * ns.n %}{% endfor %}",
                      BITS),
    "center_filter": ("{{ 'x' | center(2 ** 31) }}", CHARS),
    "ljust_method": ("{{ 'x'.ljust(2 ** 31) }}", CHARS),
    "printf_width": ("{{ '%2000000000s' % 'x' }}", CHARS),
    "printf_star_width": ("{{ '%*s' % (2000000000, 'x') }}", CHARS),
    "format_filter_width": ("{{ '%2000000000s' | format('x') }}", CHARS),
    "str_format_width": ("{{ '{:>2000000000}'.format('x') }}", CHARS),
    "str_format_nested_width": ("{{ '{:>{w}}'.format('x', w=2000000000) }}", CHARS),
    "indent": ("{{ 'a\nb' | indent(2 ** 30) }}", CHARS),
    "tilde_doubling": (DOUBLE + "{{ ns.s | length }}", CHARS),
    "plus_doubling": ("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
                      CHARS),
    "repeat_shared_list": ("{{ ['x' * 8000000] * 1000 }}", CHARS),
    "nested_shared_lists_as_text": (NEST + "{{ ns.x }}", CHARS),
    "nested_shared_lists_tojson": (NEST + "{{ ns.x | tojson }}", CHARS),
    "tojson_huge_indent": ("{{ range(100000) | list | tojson(indent=100000) }}", CHARS),
    "output_in_a_loop": ("{% for i in range(100000) %}{{ 'x' * 1000000 }}{% endfor %}", CHARS),
    "set_block_in_a_loop": ("{% set s %}{% for i in range(100000) %}{{ 'y' * 100000 }}{% endfor %}{% endset %}"
                            "{{ s | length }}", CHARS),
    "replace_growth": ("{{ ('a' * 4000000) | replace('a', 'aaaa') | length }}", CHARS),
    "join_shared": ("{{ range(100000) | map('string') | map('center', 1000) | join | length }}", CHARS),
    "batch_fill": ("{{ [1] | batch(2 ** 31, 0) | list | length }}", CHARS),
    "slice_count": ("{{ [1] | slice(10 ** 9) | list | length }}", CHARS),
    "expandtabs": ("{{ ('\t' * 1000).expandtabs(10 ** 7) | length }}", CHARS),
    "to_bytes": ("{{ (1).to_bytes(2 ** 31, 'big') | length }}", CHARS),
    "lipsum": ("{{ lipsum(10 ** 9) }}", CHARS),
    "recursive_loop": ("{% for x in [range(100000)] recursive %}{{ loop(range(100000)) if loop.depth < 3 }}"
                       "{% endfor %}", LOOPS),
    "slow_steps": ("{% for i in range(100000) %}{{ ('x' * 4000000) | replace('x', 'y') | length }}{% endfor %}",
                   SECONDS),
}

_RUNNER = textwrap.dedent("""
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    from llmos.text.chat_template import ChatTemplate
    from llmos.errors import ChatTemplateError
    try:
        ChatTemplate(sys.argv[1], origin="evil.jinja").render([{"role": "user", "content": "x"}])
        out = {"type": "no error", "message": "", "field": None}
    except BaseException as e:
        out = {"type": type(e).__name__, "message": str(e)[:500], "field": getattr(e, "field", None),
               "file": getattr(e, "file", None)}
    print(json.dumps(out))
""")


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_template_is_stopped_by_its_budget(case):
    source, limit = CASES[case]
    # Smaller loop and time limits than the defaults keep the cases fast on a loaded machine; only
    # the slow-steps case gets a clock short enough to be what stops it.
    env = child_env(LLMOS_LIMIT_MAX_TEMPLATE_LOOP_ITERATIONS="200000",
               LLMOS_LIMIT_MAX_TEMPLATE_SECONDS="1.5" if limit == SECONDS else "30")
    start = time.monotonic()
    p = subprocess.run([sys.executable, "-c", _RUNNER, source], capture_output=True, text=True, timeout=60, env=env)
    took = time.monotonic() - start
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["type"] == "ChatTemplateError", f"{case}: {out}"
    assert out["field"] == limit and f"llmos.limits.{limit}" in out["message"], f"{case}: {out}"
    assert out["file"] == "evil.jinja" and "evil.jinja" in out["message"]
    assert took < 30, f"{case}: stopped only after {took:.1f} s"


def test_long_real_conversation_renders_within_budget():
    """A 4000-turn conversation through real templates is far inside the default budget."""
    messages = [{"role": "system", "content": "Be brief."}]
    for i in range(2000):
        messages += [{"role": "user", "content": f"question {i} " * 20}, {"role": "assistant", "content": f"answer {i}"}]
    for template in (tf.CHATML_TEMPLATE, tf.QWEN3_TEMPLATE, tf.LLAMA3_TEMPLATE):
        t = ChatTemplate(template, bos_token="<s>", eos_token="</s>")
        start = time.monotonic()
        text = t.render(messages)
        assert time.monotonic() - start < 5.0
        assert "question 1999" in text
