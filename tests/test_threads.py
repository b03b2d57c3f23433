"""The thread pool: results independent of the thread count, an idle model costs no CPU,
and concurrent calls from several Python threads are safe and give the same results."""

import threading
import time

import numpy as np


def test_idle_model_uses_no_cpu(checkpoint, llmos):
    m = llmos.load(checkpoint("llama"), threads=2)
    m.generate([5, 6, 7], max_new_tokens=8, eos_token_id=[])
    time.sleep(0.1)  # past the workers' short spin
    before = time.process_time()
    time.sleep(1.0)
    assert time.process_time() - before < 0.05


def test_thread_count_does_not_change_results(checkpoint, llmos):
    path = checkpoint("qwen2")
    ids = list(range(3, 70))
    ref = llmos.load(path, threads=1).logits(ids)
    for t in (2, 3):
        np.testing.assert_array_equal(llmos.load(path, threads=t).logits(ids), ref)


def test_concurrent_calls_from_python_threads(checkpoint, llmos):
    m = llmos.load(checkpoint("llama"), threads=2)
    prompts = [[5 + i, 6, 7 + i] for i in range(6)]
    expected = [m.generate(p, max_new_tokens=10, eos_token_id=[]).token_ids for p in prompts]
    got = [None] * len(prompts)

    def work(i):
        got[i] = m.generate(prompts[i], max_new_tokens=10, eos_token_id=[]).token_ids

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == expected
