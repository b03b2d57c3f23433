"""Model.chat when the history outgrows the context: an error that says by how much, or
truncate="oldest", which drops the oldest turns and keeps the system message."""

from __future__ import annotations

import pytest

from checkpoints import KINDS

KIND = "llama"
CTX = KINDS[KIND].config["max_position_embeddings"]


def conversation(turns: int) -> list[dict]:
    messages = [{"role": "system", "content": "Be brief."}]
    for i in range(turns):
        messages += [{"role": "user", "content": f"question {i}: tell me more"},
                     {"role": "assistant", "content": f"answer {i}"}]
    return messages + [{"role": "user", "content": "and finally?"}]


def n_tokens(m, messages) -> int:
    return len(m.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))


@pytest.fixture(scope="module")
def model(checkpoint, load_llmos):
    return load_llmos(checkpoint(KIND))


@pytest.fixture(scope="module")
def long_chat(model):
    turns = 1
    while n_tokens(model, conversation(turns)) + 8 <= CTX:
        turns += 1
    return conversation(turns + 3)


@pytest.mark.parametrize("truncate", [None, "error"])
def test_too_long_history_says_how_far_over(model, long_chat, llmos, truncate):
    over = n_tokens(model, long_chat) + 8 - CTX
    assert over > 0
    with pytest.raises(llmos.errors.ContextLengthError) as info:
        model.chat(long_chat, max_new_tokens=8, truncate=truncate)
    assert f"{over} over" in str(info.value) and "truncate='oldest'" in str(info.value)
    assert info.value.field == "messages"


@pytest.mark.parametrize("stream", [False, True])
def test_truncate_oldest_keeps_the_system_message_and_the_newest_turns(model, long_chat, stream):
    out = model.chat(long_chat, max_new_tokens=8, truncate="oldest", stream=stream)
    if stream:
        assert isinstance("".join(out), str)
        return
    prompt = out.prompt_token_ids
    assert len(prompt) + 8 <= CTX and len(out.token_ids) == 8
    # The prompt is the system message plus the newest turns, as many as fit and no fewer.
    system, rest = long_chat[:1], long_chat[1:]
    starts = [i for i, m in enumerate(rest) if m["role"] == "user"]
    kept = [system + rest[s:] for s in starts]
    fitting = [k for k in kept if n_tokens(model, k) + 8 <= CTX]
    assert fitting and len(fitting) < len(kept)
    assert prompt == model.apply_chat_template(fitting[0], add_generation_prompt=True, tokenize=True)


def test_truncate_cannot_drop_the_last_turn(model, llmos):
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "word " * (2 * CTX)}]
    with pytest.raises(llmos.errors.ContextLengthError, match="last turn alone are .* over"):
        model.chat(messages, max_new_tokens=1, truncate="oldest")


def test_short_history_is_untouched_and_truncate_is_checked(model, llmos):
    messages = conversation(1)
    a = model.chat(messages, max_new_tokens=3, truncate="oldest")
    assert a.prompt_token_ids == model.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    with pytest.raises(llmos.errors.InvalidInputError, match="truncate"):
        model.chat(messages, max_new_tokens=3, truncate="newest")
