"""The paged KV cache (cpp/model/kv_cache.h) against the contiguous one.

Driven through the core's test surface (_core.KvPool, _core.Session, _core.forward_step). In
float32 a paged session stores exactly the keys and values the contiguous cache stores and
attention runs the same kernel on them, so logits must be bitwise equal (metric: exact
equality); the prefix cache, forks and copy-on-write must not change a single bit either.
"""

from __future__ import annotations

import numpy as np
import pytest

from llmos import _core
from llmos.errors import ContextLengthError, InvalidInputError

FAMILIES = ["llama_gqa", "gpt2", "mistral_swa", "gemma2", "qwen3", "gemma3_text", "smollm3", "olmo2", "granite", "mixtral",
            "qwen2_moe", "gpt_oss"]
BLOCK = 16
MiB = 1 << 20


def core(load_llmos, checkpoint, kind):
    return load_llmos(checkpoint(kind)).backend.core


def tokens(n, seed=0, vocab=300):
    return np.random.default_rng(seed).integers(3, vocab, size=n).astype(np.int64)


def paged_run(model, pool, chunks, session=None):
    """Feeds `chunks` (token arrays) to a paged session one forward at a time; all logits."""
    s = session or _core.Session(model, pool)
    out = []
    for c in chunks:
        assert s.reserve_append(len(c))
        out.append(s.forward(model, c))
    return s, np.concatenate(out)


def contiguous_run(model, chunks):
    s = _core.Session(model)
    return s, np.concatenate([s.forward(model, c) for c in chunks])


@pytest.mark.parametrize("kind", FAMILIES)
def test_paged_logits_equal_contiguous_bitwise(load_llmos, checkpoint, kind):
    # A prefill that ends mid-block, decode steps across several block boundaries, a chunk
    # spanning blocks; sliding windows (mistral_swa, gemma2) span several blocks too.
    model = core(load_llmos, checkpoint, kind)
    pool = _core.KvPool(model, "float32", BLOCK, 4 * MiB)
    ids = tokens(90)
    chunks = [ids[:21]] + [ids[i:i + 1] for i in range(21, 60)] + [ids[60:90]]
    _, want = contiguous_run(model, chunks)
    s, got = paged_run(model, pool, chunks)
    np.testing.assert_array_equal(got, want)
    assert s.blocks_held == -(-90 // BLOCK)


@pytest.mark.parametrize("kind", ["llama_gqa", "mistral_swa"])
def test_forward_step_stacks_sequences_like_each_alone(load_llmos, checkpoint, kind):
    model = core(load_llmos, checkpoint, kind)
    pool = _core.KvPool(model, "float32", BLOCK, 8 * MiB)
    prompts = [tokens(n, seed) for seed, n in enumerate([5, 37, 16, 50])]
    alone = []
    for p in prompts:  # each on its own: prefill then 6 decode steps, greedy
        s = _core.Session(model, pool)
        assert s.reserve_append(len(p))
        rows = [_core.forward_step(model, [(s, p)])[0]]
        for _ in range(6):
            nxt = np.array([int(rows[-1].argmax())])
            assert s.reserve_append(1)
            rows.append(_core.forward_step(model, [(s, nxt)])[0])
        alone.append(np.stack(rows))
        s.release()
    # together: all prefills in one step, then all decodes in one step each
    ss = [_core.Session(model, pool) for _ in prompts]
    for s, p in zip(ss, prompts):
        assert s.reserve_append(len(p))
    rows = [_core.forward_step(model, list(zip(ss, prompts)))]
    for _ in range(6):
        nxt = [np.array([int(r.argmax())]) for r in rows[-1]]
        for s in ss:
            assert s.reserve_append(1)
        rows.append(_core.forward_step(model, list(zip(ss, nxt))))
    together = np.stack(rows, axis=1)
    for i in range(len(prompts)):
        np.testing.assert_array_equal(together[i], alone[i])


def test_forward_step_equals_forward_last_row(load_llmos, checkpoint):
    # as forward(..., all_logits=False): the LM head sees one row per sequence
    model = core(load_llmos, checkpoint, "qwen2")
    pool = _core.KvPool(model, "float32", BLOCK, 4 * MiB)
    ids = tokens(40)
    want = _core.Session(model).forward(model, ids, all_logits=False)
    s = _core.Session(model, pool)
    assert s.reserve_append(40)
    np.testing.assert_array_equal(_core.forward_step(model, [(s, ids)])[0], want[-1])


def test_adopt_prefix_equals_computing_it(load_llmos, checkpoint):
    model = core(load_llmos, checkpoint, "llama_gqa")
    pool = _core.KvPool(model, "float32", BLOCK, 4 * MiB)
    ids = tokens(70)
    a, _ = paged_run(model, pool, [ids[:50], ids[50:51], ids[51:70]])
    a.publish()
    assert pool.stats()["blocks_used"] == a.blocks_held
    b = _core.Session(model, pool)
    adopted = b.adopt_prefix(ids[:51])
    assert adopted == 48  # three whole blocks of the 50 (one token is always left to compute)
    assert b.n_past == 48 and list(b.history) == list(ids[:48])
    rest = [ids[48:50], ids[50:51], ids[51:70]]
    _, got = paged_run(model, pool, rest, session=b)
    # The reference computes the prefix itself, then the same chunks (a chunk's kernels depend
    # on its size, so a's logits from position 48 on came from other kernels).
    _, want = contiguous_run(model, [ids[:48]] + rest)
    np.testing.assert_array_equal(got, want[48:])
    st = pool.stats()
    assert st["prefix_queries"] == 51 and st["prefix_hits"] == 48
    # Whole prompt cached: one token is still left to compute.
    c = _core.Session(model, pool)
    assert c.adopt_prefix(ids[:48]) == 32


def test_fork_copy_on_write_leaves_the_parent_untouched(load_llmos, checkpoint):
    model = core(load_llmos, checkpoint, "llama")
    pool = _core.KvPool(model, "float32", BLOCK, 4 * MiB)
    ids = tokens(40)
    parent, _ = paged_run(model, pool, [ids[:20]])  # last block half full: shared after the fork
    child = _core.Session(model, pool)
    child.fork_from(parent)
    assert child.n_past == 20 and pool.stats()["blocks_used"] == 2
    _, child_logits = paged_run(model, pool, [np.array([7, 8, 9])], session=child)
    assert pool.stats()["blocks_used"] == 3  # the child copied the shared half block
    _, parent_logits = paged_run(model, pool, [ids[20:40]], session=parent)
    _, want = contiguous_run(model, [ids[:20], ids[20:40]])
    np.testing.assert_array_equal(parent_logits, want[20:])
    _, want_child = contiguous_run(model, [ids[:20], np.array([7, 8, 9])])
    np.testing.assert_array_equal(child_logits, want_child[20:])


def test_writing_a_shared_block_without_reserving_is_refused(load_llmos, checkpoint):
    model = core(load_llmos, checkpoint, "llama")
    pool = _core.KvPool(model, "float32", BLOCK, 4 * MiB)
    parent, _ = paged_run(model, pool, [tokens(20)])
    child = _core.Session(model, pool)
    child.fork_from(parent)
    with pytest.raises(InvalidInputError, match="not reserved"):
        child.forward(model, np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]))
    with pytest.raises(InvalidInputError, match="shared"):
        child.forward(model, np.array([5]))


def test_pool_exhaustion_changes_nothing(load_llmos, checkpoint):
    model = core(load_llmos, checkpoint, "llama")
    bb = _core.KvPool.block_bytes(model, "float32", BLOCK)
    pool = _core.KvPool(model, "float32", BLOCK, 3 * bb + bb // 2)
    assert pool.num_blocks == 3
    s, _ = paged_run(model, pool, [tokens(40)])
    before = pool.stats()
    assert not s.reserve_append(9)  # needs a 4th block
    assert pool.stats() == before and s.blocks_held == 3 and s.n_past == 40
    assert s.reserve_append(8)  # fits the third block exactly
    other = _core.Session(model, pool)
    assert not other.reserve_append(1)
    assert other.blocks_held == 0


def test_release_returns_every_block(load_llmos, checkpoint):
    model = core(load_llmos, checkpoint, "llama")
    pool = _core.KvPool(model, "float32", BLOCK, 4 * MiB)
    a, _ = paged_run(model, pool, [tokens(50)])
    b = _core.Session(model, pool)
    b.fork_from(a)
    paged_run(model, pool, [tokens(20, 1)], session=b)
    assert pool.stats()["blocks_used"] > 0
    a.release()
    b.release()
    del a, b
    st = pool.stats()
    assert st["blocks_used"] == 0 and st["blocks_cached"] == 0 and st["blocks_total"] == pool.num_blocks


def test_published_blocks_are_evicted_least_recent_first(load_llmos, checkpoint):
    model = core(load_llmos, checkpoint, "llama")
    bb = _core.KvPool.block_bytes(model, "float32", BLOCK)
    pool = _core.KvPool(model, "float32", BLOCK, 4 * bb)
    prompts = [tokens(2 * BLOCK, seed) for seed in range(2)]  # two blocks each
    for p in prompts:
        s, _ = paged_run(model, pool, [p])
        s.publish()
        s.release()
    assert pool.stats()["blocks_cached"] == 4
    # Touch prompt 0: its blocks become the most recently released.
    s = _core.Session(model, pool)
    assert s.adopt_prefix(np.append(prompts[0], 1)) == 2 * BLOCK
    s.release()
    # Two new blocks must evict prompt 1's (the least recently released), not prompt 0's.
    t = _core.Session(model, pool)
    assert t.reserve_append(2 * BLOCK)
    assert pool.stats()["evictions"] == 2
    probe = _core.Session(model, pool)
    assert probe.adopt_prefix(np.append(prompts[1], 1)) == 0
    assert probe.adopt_prefix(np.append(prompts[0], 1)) == 2 * BLOCK


def test_hash_collisions_never_serve_wrong_blocks(load_llmos, checkpoint):
    # Every hash collides; a lookup must still tell blocks apart by their tokens and by their
    # parent: e repeats a's second and third blocks after a different first one.
    model = core(load_llmos, checkpoint, "llama")
    pool = _core.KvPool(model, "float32", BLOCK, 4 * MiB)
    pool.set_hash_mask(0)
    a_ids, e_ids = tokens(48, 0), tokens(48, 1)
    e_ids[BLOCK:] = a_ids[BLOCK:]
    for ids in (e_ids, a_ids):
        s, _ = paged_run(model, pool, [ids])
        s.publish()
        s.release()
    assert pool.stats()["blocks_cached"] == 6
    for ids in (a_ids, e_ids):
        d = _core.Session(model, pool)
        assert d.adopt_prefix(np.append(ids, 5)) == 48
        _, got = paged_run(model, pool, [np.array([5])], session=d)
        _, want = contiguous_run(model, [ids, np.array([5])])
        np.testing.assert_array_equal(got, want[48:])
        d.release()
    c = _core.Session(model, pool)
    assert c.adopt_prefix(tokens(48, 2)) == 0


def test_pool_and_session_refuse_bad_input(load_llmos, checkpoint):
    model = core(load_llmos, checkpoint, "llama")
    with pytest.raises(InvalidInputError, match="hold no KV block"):
        _core.KvPool(model, "float32", BLOCK, 100)
    with pytest.raises(InvalidInputError, match="kv_dtype"):
        _core.KvPool(model, "float8", BLOCK, MiB)
    with pytest.raises(InvalidInputError, match="block_tokens"):
        _core.KvPool(model, "float32", 0, MiB)
    pool = _core.KvPool(model, "float32", BLOCK, 64 * MiB)
    s = _core.Session(model, pool)
    with pytest.raises(ContextLengthError):
        s.reserve_append(257)
    with pytest.raises(InvalidInputError, match="paged"):
        _core.Session(model).publish()
    longrope = core(load_llmos, checkpoint, "phi3_longrope")
    with pytest.raises(InvalidInputError, match="longrope"):
        _core.Session(longrope, _core.KvPool(longrope, "float32", BLOCK, MiB))


# ---- KV dtypes -------------------------------------------------------------------------------
# Metric: max |logit - float32 logit| over a 30-token prefill and 50 decode steps, relative to
# max |float32 logit|. Measured on these checkpoints at most 0.016 (bfloat16), 0.0014 (float16)
# and 0.045 (int8); the bounds leave about 2x. A misplaced block or scale costs far more.
KV_DTYPE_BOUND = {"bfloat16": 0.03, "float16": 0.003, "int8": 0.1}


@pytest.mark.parametrize("kind", ["llama_gqa", "gpt2", "qwen3"])
def test_kv_dtypes_stay_close_to_float32(load_llmos, checkpoint, kind):
    model = core(load_llmos, checkpoint, kind)
    ids = tokens(80)
    chunks = [ids[:30]] + [ids[i:i + 1] for i in range(30, 80)]
    _, ref = contiguous_run(model, chunks)
    for dtype, bound in KV_DTYPE_BOUND.items():
        pool = _core.KvPool(model, dtype, BLOCK, 4 * MiB)
        assert pool.dtype == dtype
        _, got = paged_run(model, pool, chunks)
        err = float(np.abs(got - ref).max()) / float(np.abs(ref).max())
        assert 0 < err <= bound, (dtype, err)


def test_kv_dtype_block_sizes(load_llmos, checkpoint):
    # llama_gqa: 2 layers, 2 kv heads, head_dim 16; K and V; int8 adds a float scale per position
    model = core(load_llmos, checkpoint, "llama_gqa")
    per_value = 2 * 2 * 2 * 16 * BLOCK
    assert _core.KvPool.block_bytes(model, "float32", BLOCK) == 4 * per_value
    assert _core.KvPool.block_bytes(model, "bfloat16", BLOCK) == 2 * per_value
    assert _core.KvPool.block_bytes(model, "float16", BLOCK) == 2 * per_value
    assert _core.KvPool.block_bytes(model, "int8", BLOCK) == per_value + 2 * 2 * 2 * 4 * BLOCK


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_sharing_is_exact_in_every_kv_dtype(load_llmos, checkpoint, dtype):
    # adopt_prefix and fork + copy-on-write move whole blocks (int8 scales included): the
    # logits equal those of a session of the same dtype that computed everything itself.
    model = core(load_llmos, checkpoint, "llama_gqa")
    pool = _core.KvPool(model, dtype, BLOCK, 4 * MiB)
    ids = tokens(60)
    rest = [ids[32:40], ids[40:41]]
    _, want = paged_run(model, pool, [ids[:32]] + rest)
    a, _ = paged_run(model, pool, [ids[:32]])
    a.publish()
    b = _core.Session(model, pool)
    assert b.adopt_prefix(ids[:40]) == 32
    _, got = paged_run(model, pool, rest, session=b)
    np.testing.assert_array_equal(got, want[32:])
    a2, _ = paged_run(model, pool, [ids[:36]])
    child = _core.Session(model, pool)
    child.fork_from(a2)
    _, got_child = paged_run(model, pool, [ids[36:40], ids[40:41]], session=child)
    _, want_child = paged_run(model, pool, [ids[:36], ids[36:40], ids[40:41]])
    np.testing.assert_array_equal(got_child, want_child[36:])


def test_dynamic_rope_past_its_base_length(load_llmos, checkpoint):
    # Dynamic NTK rotates a forward's tokens for that forward's sequence length once it passes
    # dynamic_max_positions (here lowered to 40 so it happens inside the context): paged stays
    # bitwise equal to contiguous, and only blocks computed before the scaling are published
    # (later keys depend on how the sequence was chunked).
    from llmos.io.checkpoint import float_source, tensor_locations

    path = str(checkpoint("llama_dynamic_rope"))
    m = load_llmos(path)
    arch = m.config.to_core(_core)
    assert arch.rope.dynamic
    arch.rope.dynamic_max_positions = 40
    locations = tensor_locations(path)
    sources = [float_source(locations, role, layer, parts, path)
               for role, layer, parts in m.backend.family.tensors(m.config)]
    model = _core.Model(arch, iter(sources), "float32", 1)
    ids = tokens(60)
    chunks = [ids[:30]] + [ids[i:i + 1] for i in range(30, 45)] + [ids[45:60]]
    _, want = contiguous_run(model, chunks)
    pool = _core.KvPool(model, "float32", BLOCK, 4 * MiB)
    s, got = paged_run(model, pool, chunks)
    np.testing.assert_array_equal(got, want)
    whole = model.logits(ids)  # one forward of 60 tokens: every position rotated for length 60
    assert not np.array_equal(whole[-1], want[-1])  # so the scaling is in effect
    s.publish()
    s.release()
    assert pool.stats()["blocks_cached"] == 2  # positions 0-31; 32-47 ended past 40
    assert _core.Session(model, pool).adopt_prefix(ids) == 32


def test_random_operations_keep_every_sequence_exact(load_llmos, checkpoint):
    # A small pool of small blocks under a random mix of new prompts (adopting cached
    # prefixes), growth, forks, publishes and releases, with exhaustion handled by releasing
    # another sequence: every sequence's logits stay bitwise those of a contiguous mirror fed
    # its tokens one at a time (chunks of 1-3 tokens all take the row kernels), and the pool's
    # block counts add up throughout.
    model = core(load_llmos, checkpoint, "llama_gqa")
    T = 4
    pool = _core.KvPool(model, "float32", T, 24 * _core.KvPool.block_bytes(model, "float32", T))
    rng = np.random.default_rng(1)
    base = tokens(24, 7)
    live: list[tuple[object, object, list[int]]] = []  # (paged session, contiguous mirror, tokens)
    checked = 0

    def feed(mirror, ids):
        row = None
        for t in ids:
            row = mirror.forward(model, np.array([t]))[0]
        return row

    for _ in range(150):
        op = rng.integers(0, 10)
        if op == 0 or not live:
            if len(live) >= 6:
                continue
            s = _core.Session(model, pool)
            prompt = list(base[:rng.integers(1, 24)]) + list(tokens(int(rng.integers(0, 4)), int(rng.integers(1e6))))
            n = s.adopt_prefix(np.array(prompt))
            assert n % T == 0 and n <= len(prompt) - 1 and list(s.history) == prompt[:n]
            mirror = _core.Session(model)
            feed(mirror, prompt[:n])
            live.append((s, mirror, prompt[:n]))
        elif op == 1:
            s, _, _ = live.pop(int(rng.integers(len(live))))
            s.release()
        elif op == 2:
            live[int(rng.integers(len(live)))][0].publish()
        elif op == 3 and len(live) < 6:
            parent, pm, ids = live[int(rng.integers(len(live)))]
            child, cm = _core.Session(model, pool), _core.Session(model)
            child.fork_from(parent)
            cm.copy_from(pm)
            live.append((child, cm, list(ids)))
        else:
            s, mirror, ids = live[int(rng.integers(len(live)))]
            if len(ids) + 3 > 100:
                continue
            chunk = list(base[len(ids):len(ids) + 3]) if rng.random() < 0.5 else []
            chunk = (chunk or list(tokens(3, int(rng.integers(1e6)))))[:int(rng.integers(1, 4))]
            if not s.reserve_append(len(chunk)):
                s2, _, _ = live.pop(int(rng.integers(len(live))))
                s2.release()
                continue
            row = s.forward(model, np.array(chunk), all_logits=False)[0]
            ids.extend(chunk)
            np.testing.assert_array_equal(row, feed(mirror, chunk))
            checked += 1
        st = pool.stats()
        assert st["blocks_used"] + st["blocks_cached"] <= st["blocks_total"]
        assert st["blocks_used"] <= sum(s.blocks_held for s, _, _ in live)
    assert checked > 60 and pool.stats()["prefix_hits"] > 0 and pool.stats()["evictions"] > 0
    for s, _, _ in live:
        s.release()
    assert pool.stats()["blocks_used"] == 0
