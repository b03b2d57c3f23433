"""Stop strings through generate(): the cut and the finish reason when the stream ends while a
longer stop string that started earlier is still possible."""

from __future__ import annotations

import pytest

KIND = "llama"
N = 12


def test_stop_found_at_the_end_of_the_stream_is_reported(checkpoint, load_llmos):
    m = load_llmos(checkpoint(KIND))
    full = m.generate([5, 6, 7], max_new_tokens=N).text
    # The shortest suffix that occurs only at the end, and a longer stop that starts one
    # character earlier and can never complete.
    k = next((k for k in range(1, len(full)) if full.find(full[-k:]) == len(full) - k and full[-k:].strip()), None)
    if k is None or k + 1 > len(full):
        pytest.fail(f"no usable suffix in {full!r}")
    short, long = full[-k:], full[-k - 1:] + "\x00"
    g = m.generate([5, 6, 7], max_new_tokens=N, stop=[long, short])
    assert g.text == full[:-k]
    assert g.finish_reason == "stop"
    assert "".join(m.stream([5, 6, 7], max_new_tokens=N, stop=[long, short])) == full[:-k]
