"""The decoder as an ONNX graph: the same computation as cpp/model/decoder.cc, one node at a time.

Every switch comes from the `Architecture` (norm kind and placement, rope tables per layer
kind, NoPE layers, GQA, biases, q/k norm, sliding windows, soft-capping, Gemma and Granite
scaling), so one builder covers every dense family.

Precision is a property of the weights only: norms, softmax, rope and the residual stream
stay float32 in every precision, so fp16 and int4 exports lose accuracy only in the matrix
products (and Gemma's scaled activations cannot overflow fp16). fp16 keeps its KV cache in
fp16 as well: that is where a long context spends its memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from onnx import TensorProto, helper

from llmos.arch.families import ACTIVATIONS, Architecture
from llmos.errors import UnsupportedModelError
from llmos.backends.onnx import layout
from llmos.onnx.blocks import Blocks
from llmos.onnx.graph import MS_DOMAIN, GraphBuilder
from llmos.onnx.quant import quantize_int4

FLOAT, FLOAT16, INT64, BOOL = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT64, TensorProto.BOOL
# Masked scores: the lowest float32, not -inf, so a row with every key masked (a padding
# query) gives a uniform softmax instead of NaN.
MASKED = float(np.finfo(np.float32).min)
from llmos.backends.onnx.layout import PRECISIONS  # noqa: E402  (re-exported)
# MatMulNBits accuracy_level 4: activations are quantized to int8 inside the kernel, the
# fast CPU path (what the onnxruntime-genai builder also picks for CPU).
INT4_ACCURACY_LEVEL = 4


def _float(w: np.ndarray | Blocks) -> np.ndarray:
    return w.dequantize() if isinstance(w, Blocks) else w


def _rows(w: np.ndarray | Blocks, start: int, stop: int) -> np.ndarray | Blocks:
    return w.rows(start, stop) if isinstance(w, Blocks) else w[start:stop]


class _Linear:
    """y = x W^T + b in the export precision. W arrives as [out, in], as the core stores it,
    or as the Blocks of a checkpoint llmos quantized."""

    def __init__(self, g: GraphBuilder, precision: str, block_size: int, accuracy_level: int,
                 source_quantized: bool = False):
        self.g, self.precision, self.block_size, self.accuracy_level = g, precision, block_size, accuracy_level
        # In a checkpoint llmos quantized, a float matrix is one llmos chose to leave float
        # (its columns do not fill whole blocks); int4 keeps it so, as llmos runs it.
        self.float_stays_float = source_quantized

    def keeps(self, w: np.ndarray | Blocks, head: bool) -> bool:
        """Whether int4 writes llmos's own blocks of `w` (never quantizing twice): 4-bit blocks
        of the export's block size, and the 8-bit (int8, int6) embedding / LM head that llmos
        keeps above 4 bits in its int4 models."""
        if self.precision != "int4" or not isinstance(w, Blocks):
            return False
        return w.group == self.block_size if w.bits == 4 else head

    def __call__(self, x: str, name: str, w: np.ndarray | Blocks, b: np.ndarray | None = None, tag: str = "MatMul",
                 head: bool = False) -> str:
        g = self.g
        if self.keeps(w, head):
            codes, scales, zero_points = w.matmul_nbits()
            inputs = [x, g.weight(f"{name}.q{w.bits}", codes), g.weight(name + ".scales", scales)]
            if zero_points is not None:
                inputs.append(g.weight(name + ".zero_points", zero_points))
            y = g.op("MatMulNBits", inputs, domain=MS_DOMAIN, tag=tag, K=w.cols, N=w.shape[0], bits=w.bits,
                     block_size=w.group, accuracy_level=self.accuracy_level)
            g.metadata.setdefault("kept_blocks", {})[name] = {"bits": w.bits, "block_size": w.group,
                                                              "zero_points": zero_points is not None}
        elif self.precision == "int4" and not (self.float_stays_float and not isinstance(w, Blocks)):
            codes, scales = quantize_int4(_float(w), self.block_size)
            y = g.op("MatMulNBits", [x, g.weight(name + ".q4", codes), g.weight(name + ".scales", scales)],
                     domain=MS_DOMAIN, tag=tag, K=w.shape[1], N=w.shape[0], bits=4, block_size=self.block_size,
                     accuracy_level=self.accuracy_level)
        elif self.precision == "fp16":
            wt = g.weight(name, np.ascontiguousarray(_float(w).T).astype(np.float16))
            y = g.cast(g.op("MatMul", [g.cast(x, FLOAT16), wt], tag=tag), FLOAT)
        else:
            y = g.op("MatMul", [x, g.weight(name, np.ascontiguousarray(_float(w).T))], tag=tag)
        if b is not None:
            y = g.op("Add", [y, g.weight(name.replace(".weight", ".bias"), b)])
        return y

    def tied(self, x: str, embed_name: str, embed: np.ndarray | Blocks) -> str:
        """The LM head that reuses the input embedding [vocab, hidden]: stored once."""
        g = self.g
        if self.precision == "int4":
            return self(x, "lm_head", embed, tag="MatMul", head=True)
        wt = g.op("Transpose", [embed_name], perm=[1, 0])
        if self.precision == "fp16":
            return g.cast(g.op("MatMul", [g.cast(x, FLOAT16), wt]), FLOAT)
        return g.op("MatMul", [x, wt])


def _norm(g: GraphBuilder, arch: Architecture, x: str, w: np.ndarray, b: np.ndarray | None, name: str,
          kind: str | None = None) -> str:
    kind = kind or arch.norm
    eps = arch.norm_eps
    if kind == "layernorm":
        bias = g.weight(name.replace(".weight", ".bias"), b) if b is not None else g.const(np.zeros_like(w))
        return g.op("LayerNormalization", [x, g.weight(name, w), bias], axis=-1, epsilon=eps)
    # x / sqrt(mean(x^2) + eps) * w: the pattern onnxruntime fuses into SimplifiedLayerNormalization.
    ms = g.reduce_mean(g.op("Pow", [x, g.const(2.0)]), -1)
    y = g.op("Div", [x, g.op("Sqrt", [g.op("Add", [ms, g.const(eps)])])])
    y = g.op("Mul", [y, g.weight(name, w)])
    if b is not None:
        y = g.op("Add", [y, g.weight(name.replace(".weight", ".bias"), b)])
    return y


def _activation(g: GraphBuilder, name: str, x: str) -> str:
    kind = ACTIVATIONS[name]
    if kind == "Silu":
        return g.op("Mul", [x, g.op("Sigmoid", [x])])
    if kind == "Relu":
        return g.op("Relu", [x])
    if kind == "GeluErf":
        if g.opset >= 20:
            return g.op("Gelu", [x])
        erf = g.op("Erf", [g.op("Div", [x, g.const(np.sqrt(2.0))])])
        return g.op("Mul", [g.op("Mul", [x, g.op("Add", [erf, g.const(1.0)])]), g.const(0.5)])
    if g.opset >= 20:
        return g.op("Gelu", [x], approximate="tanh")
    cube = g.op("Mul", [g.op("Pow", [x, g.const(3.0)]), g.const(0.044715)])
    inner = g.op("Mul", [g.op("Add", [x, cube]), g.const(np.sqrt(2.0 / np.pi))])
    t = g.op("Add", [g.op("Tanh", [inner]), g.const(1.0)])
    return g.op("Mul", [g.op("Mul", [x, t]), g.const(0.5)])


def rope_tables(arch: Architecture, rope=None) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [positions, rotary_dim / 2] float32 of `rope` (default arch.rope; Gemma 3's
    sliding layers pass arch.rope_local), as cpp/model/decoder.cc computes them (float32
    angle pos * inv_freq, times the rope's attention scaling). Longrope stacks the long-factor
    table after the short one."""
    rope = rope if rope is not None else arch.rope
    positions = np.arange(arch.max_position_embeddings, dtype=np.float32)[:, None]
    freqs = [rope.inv_freq] + ([rope.inv_freq_long] if rope.inv_freq_long is not None else [])
    angles = np.concatenate([(positions * f.astype(np.float32)[None, :]).astype(np.float32) for f in freqs])
    scale = np.float32(rope.attention_scaling)
    return (np.cos(angles) * scale).astype(np.float32), (np.sin(angles) * scale).astype(np.float32)


def _rope(g: GraphBuilder, x: str, cos: str, sin: str, rotary_dim: int, head_dim: int) -> str:
    """Rotate-half rope on x [B, S, heads, D]; cos/sin are [B, S, 1, rotary_dim / 2]."""
    half = rotary_dim // 2
    x1, x2 = g.slice(x, 0, half, -1), g.slice(x, half, rotary_dim, -1)
    r1 = g.op("Sub", [g.op("Mul", [x1, cos]), g.op("Mul", [x2, sin])])
    r2 = g.op("Add", [g.op("Mul", [x2, cos]), g.op("Mul", [x1, sin])])
    parts = [r1, r2] + ([g.slice(x, rotary_dim, head_dim, -1)] if rotary_dim < head_dim else [])
    return g.op("Concat", parts, axis=-1)


def _qk_norm(g: GraphBuilder, arch: Architecture, w, p: str, t: str, part: str, heads: int, flat: bool) -> str:
    """q or k (`part`) RMS-normed as the family does: per head (Qwen 3, Gemma 3), or over all
    heads at once (OLMo 2: one weight of heads * D). `t` is [B, S, heads * D] when `flat`, else
    [B, S, heads, D]; the result has the same shape."""
    key = p + f"{part}_norm.weight"
    D = arch.head_dim
    if arch.qk_norm_across_heads:
        t = t if flat else g.reshape(t, [0, 0, heads * D])
        t = _norm(g, arch, t, w[key], None, key, kind="rmsnorm")
        return t if flat else g.reshape(t, [0, 0, heads, D])
    t = g.reshape(t, [0, 0, heads, D]) if flat else t
    t = _norm(g, arch, t, w[key], None, key, kind="rmsnorm")
    return g.reshape(t, [0, 0, heads * D]) if flat else t


def _attention(g: GraphBuilder, arch: Architecture, w, p: str, qkv: str, past: tuple[str, str],
               present: tuple[str, str], cos, sin, mask: str, scale: float, kv_type: int) -> str:
    """Attention in standard ops: [B, S, QKV] -> [B, S, Nq * D]; writes present.{i}.key/value.
    cos/sin None: a layer without rope (SmolLM3's NoPE layers)."""
    D, Nq, Nkv = arch.head_dim, arch.num_heads, arch.num_kv_heads
    G = Nq // Nkv
    rotary_dim = arch.rope.rotary_dim if arch.rope is not None and cos is not None else 0
    q, k, v = g.split(qkv, [Nq * D, Nkv * D, Nkv * D], -1)
    q, k, v = (g.reshape(t, [0, 0, n, D]) for t, n in ((q, Nq), (k, Nkv), (v, Nkv)))  # [B, S, n, D]
    if arch.qk_norm:
        q = _qk_norm(g, arch, w, p, q, "q", Nq, flat=False)
        k = _qk_norm(g, arch, w, p, k, "k", Nkv, flat=False)
    if rotary_dim:
        q = _rope(g, q, cos, sin, rotary_dim, D)
        k = _rope(g, k, cos, sin, rotary_dim, D)
    q = g.op("Mul", [q, g.const(scale)])
    k = g.op("Transpose", [k], perm=[0, 2, 1, 3])  # [B, Nkv, S, D]
    v = g.op("Transpose", [v], perm=[0, 2, 1, 3])
    if kv_type == FLOAT16:
        q, k, v = g.cast(q, FLOAT16), g.cast(k, FLOAT16), g.cast(v, FLOAT16)
    present_k = g.op("Concat", [past[0], k], axis=2, names=[present[0]])  # [B, Nkv, T, D]
    present_v = g.op("Concat", [past[1], v], axis=2, names=[present[1]])
    # Grouped heads without copying K/V: queries [B, Nkv, G, S, D] against keys
    # [B, Nkv, 1, D, T] broadcast over the group axis.
    q5 = g.reshape(g.op("Transpose", [q], perm=[0, 2, 1, 3]), [0, Nkv, G, -1, D])
    kt = g.unsqueeze(g.op("Transpose", [present_k], perm=[0, 1, 3, 2]), [2])
    scores = g.op("MatMul", [q5, kt])  # [B, Nkv, G, S, T]
    if kv_type == FLOAT16:
        scores = g.cast(scores, FLOAT)
    if arch.attn_softcap > 0:
        c = g.const(arch.attn_softcap)
        scores = g.op("Mul", [g.op("Tanh", [g.op("Div", [scores, c])]), c])
    scores = g.op("Where", [mask, scores, g.const(MASKED)])
    probs = g.op("Softmax", [scores], axis=-1)
    if kv_type == FLOAT16:
        probs = g.cast(probs, FLOAT16)
    ctx = g.op("MatMul", [probs, g.unsqueeze(present_v, [2])])  # [B, Nkv, G, S, D]
    if kv_type == FLOAT16:
        ctx = g.cast(ctx, FLOAT)
    ctx = g.op("Transpose", [g.reshape(ctx, [0, Nq, -1, D])], perm=[0, 2, 1, 3])
    return g.reshape(ctx, [0, 0, Nq * D])


def _fused_inputs(g: GraphBuilder, arch: Architecture, mask: str, cos_name: str | None, sin_name: str | None) -> dict:
    """What GroupQueryAttention needs once per forward: int32 sequence lengths from the
    attention mask and the rope tables (the long ones once longrope switches)."""
    seqlens = g.cast(g.op("Sub", [g.op("ReduceSum", [mask, g.const([1], np.int64)], keepdims=0),
                                  g.const(1, np.int64)]), TensorProto.INT32)
    total = g.cast(g.dim(mask, 1), TensorProto.INT32)
    out = {"seqlens": seqlens, "total": total, "cos": "", "sin": ""}
    if cos_name is not None:
        P = arch.max_position_embeddings
        if arch.rope.inv_freq_long is not None:
            longer = g.cast(g.op("Greater", [g.dim(mask, 1), g.const(arch.rope.long_after, np.int64)]), INT64)
            start = g.unsqueeze(g.op("Mul", [longer, g.const(P, np.int64)]), [0])
            end = g.op("Add", [start, g.const([P], np.int64)])
            cos_name = g.op("Slice", [cos_name, start, end, g.const([0], np.int64)])
            sin_name = g.op("Slice", [sin_name, start, end, g.const([0], np.int64)])
        out["cos"], out["sin"] = cos_name, sin_name
    return out


def _attention_fused(g: GraphBuilder, arch: Architecture, w, p: str, qkv: str, past: tuple[str, str],
                     present: tuple[str, str], fused: dict, scale: float, rotates: bool = True) -> str:
    """Attention as onnxruntime's GroupQueryAttention (com.microsoft), for the int4 graph:
    one kernel for rope, the cache append, GQA and the causal softmax instead of ~30 nodes.
    Positions come from the attention mask (right padding), as in onnxruntime-genai.
    rotates False: a NoPE layer (do_rotary 0)."""
    D, Nq, Nkv = arch.head_dim, arch.num_heads, arch.num_kv_heads
    rotary = bool(fused["cos"]) and rotates
    if arch.qk_norm:
        q, k, v = g.split(qkv, [Nq * D, Nkv * D, Nkv * D], -1)
        q = _qk_norm(g, arch, w, p, q, "q", Nq, flat=True)
        k = _qk_norm(g, arch, w, p, k, "k", Nkv, flat=True)
        query = [q, k, v]
    else:
        query = [qkv, "", ""]  # packed
    attrs = dict(num_heads=Nq, kv_num_heads=Nkv, scale=float(scale), do_rotary=int(rotary), rotary_interleaved=0,
                 local_window_size=-1)
    if arch.attn_softcap > 0:
        attrs["softcap"] = float(arch.attn_softcap)
    cos, sin = (fused["cos"], fused["sin"]) if rotary else ("", "")
    outs = g.op("GroupQueryAttention", query + [past[0], past[1], fused["seqlens"], fused["total"], cos, sin],
                domain=MS_DOMAIN, outputs=3, names=[f"{present[0]}/attn_output", present[0], present[1]], **attrs)
    return outs[0]


def gqa_supports(head_dim: int, rotary_dim: int) -> bool:
    """Whether onnxruntime's GroupQueryAttention runs these heads. It refuses, at run time
    only, a head size that is not a multiple of 8, and with rotary a head size that is not a
    multiple of 16 (its rotary cache check: cos/sin width <= head_size / 16 * 8 and a multiple
    of 8); measured on onnxruntime 1.32's CPU kernel. Rope over part of the head is not
    expressible at all (do_rotary rotates the whole head)."""
    if head_dim % 8:
        return False
    return rotary_dim == 0 or (rotary_dim == head_dim and head_dim % 16 == 0)


@dataclass
class _AttentionInputs:
    """What every layer's attention reads, built once per graph."""

    scale: float
    standard: list[int]        # layers with standard-op attention; the others use GroupQueryAttention
    rope_kind: list[str | None]  # per layer: "global" (arch.rope), "local" (arch.rope_local) or None (NoPE)
    # rope kind -> (cos, sin) [B, S, 1, rotary_dim / 2]: rope rows of these positions (standard layers)
    rows: dict = field(default_factory=dict)
    masks: dict | None = None  # sliding window (0: none) -> [B, 1, 1, S, T] the keys each query may see
    fused: dict | None = None  # _fused_inputs, when some layer uses GroupQueryAttention

    def rope_rows(self, i: int) -> tuple[str | None, str | None]:
        """Layer i's (cos, sin) rows; (None, None) for a layer without rope."""
        kind = self.rope_kind[i]
        return self.rows[kind] if kind is not None else (None, None)


class _DecoderGraph:
    """The steps of build_decoder, sharing the graph, the architecture, the weights and the
    precision. Shapes: B batch, S new tokens, T = past + S, H hidden, V vocabulary."""

    def __init__(self, arch: Architecture, weights: dict[str, np.ndarray], precision: str, opset: int,
                 block_size: int, accuracy_level: int):
        self.g = GraphBuilder(opset)
        self.arch, self.w, self.precision = arch, weights, precision
        self.linear = _Linear(self.g, precision, block_size, accuracy_level,
                              source_quantized=any(isinstance(v, Blocks) for v in weights.values()))
        self.kv_type = FLOAT16 if precision == "fp16" else FLOAT
        self.fuse_norms = precision == "int4" and arch.norm == "rmsnorm" and not arch.norm_bias

    def inputs(self) -> tuple[str, str, str, list[tuple[str, str]]]:
        """input_ids and position_ids [B, S], attention_mask [B, T], and per layer the past
        (key, value) [B, Nkv, T - S, D]."""
        g, arch = self.g, self.arch
        ids = g.input(layout.INPUT_IDS, INT64, ["batch_size", "sequence_length"])
        mask = g.input(layout.ATTENTION_MASK, INT64, ["batch_size", "total_sequence_length"])
        pos = g.input(layout.POSITION_IDS, INT64, ["batch_size", "sequence_length"])
        past = []
        for i in range(arch.num_layers):
            shape = ["batch_size", arch.num_kv_heads, "past_sequence_length", arch.head_dim]
            past.append((g.input(layout.past_key(i), self.kv_type, shape),
                         g.input(layout.past_value(i), self.kv_type, shape)))
        return ids, mask, pos, past

    def embedding(self, ids: str, pos: str) -> tuple[str, str]:
        """x [B, S, H] = embed[ids] (+ pos_embed[pos]) (* scale), and the embedding's name (a
        tied LM head reads it)."""
        g, arch, w = self.g, self.arch, self.w
        with g.scope("model/embed_tokens"):
            embed = _float(w["embed"])  # Gather reads floats: llmos's int8 rows, dequantized exactly
            embed = embed.astype(np.float16) if self.precision == "fp16" else embed
            embed_name = g.weight("embed", embed)
            x = g.op("Gather", [embed_name, ids], axis=0)
            if self.precision == "fp16":
                x = g.cast(x, FLOAT)
            if arch.learned_positions:
                x = g.op("Add", [x, g.op("Gather", [g.weight("pos_embed", w["pos_embed"]), pos], axis=0)])
            if arch.embed_scale != 1.0:
                x = g.op("Mul", [x, g.const(arch.embed_scale)])
        return x, embed_name

    def attention_inputs(self, ids: str, mask: str, pos: str) -> _AttentionInputs:
        """Shared by every layer: rope tables, rope rows for these positions, attention masks."""
        g, arch = self.g, self.arch
        D, L = arch.head_dim, arch.num_layers
        rotary_dim = arch.rope.rotary_dim if arch.rope is not None else 0
        cos_t = sin_t = None
        if rotary_dim:
            cos_t, sin_t = rope_tables(arch)
        # int4 is onnxruntime-only (MatMulNBits) anyway, so its attention may use onnxruntime's
        # fused kernel too; layers it cannot express (sliding windows, partial rope, head sizes
        # its kernel refuses) keep the standard-op attention.
        # Sliding layers are never fused, so Gemma 3's local rope is a standard-layer matter only.
        fused_ok = self.precision == "int4" and gqa_supports(D, rotary_dim)
        standard = [i for i in range(L) if not (fused_ok and arch.sliding_window[i] == 0)]
        scale = arch.attn_scale if arch.attn_scale > 0 else 1.0 / np.sqrt(np.float32(D))
        out = _AttentionInputs(scale=scale, standard=standard, rope_kind=[self._rope_kind(i) for i in range(L)])
        with g.scope("model/rotary_emb"):
            cos_name = g.weight("rope.cos", cos_t) if rotary_dim else None
            sin_name = g.weight("rope.sin", sin_t) if rotary_dim else None
            kinds = {out.rope_kind[i] for i in standard} - {None}
            if "global" in kinds:
                index = pos
                if arch.rope.inv_freq_long is not None:
                    # Longrope: past the original context every position reads the long table, as
                    # the core does once the sequence outgrows long_after.
                    longer = g.cast(g.op("Greater", [g.dim(mask, 1), g.const(arch.rope.long_after, np.int64)]), INT64)
                    index = g.op("Add", [pos, g.op("Mul", [longer, g.const(arch.max_position_embeddings, np.int64)])])
                out.rows["global"] = (g.unsqueeze(g.op("Gather", [cos_name, index], axis=0), [2]),
                                      g.unsqueeze(g.op("Gather", [sin_name, index], axis=0), [2]))
            if "local" in kinds:
                # Gemma 3's sliding layers: their own base (families.py refuses a local rope with
                # longrope, dynamic scaling or another rotary width).
                cos_l, sin_l = rope_tables(arch, arch.rope_local)
                out.rows["local"] = (g.unsqueeze(g.op("Gather", [g.weight("rope_local.cos", cos_l), pos], axis=0), [2]),
                                     g.unsqueeze(g.op("Gather", [g.weight("rope_local.sin", sin_l), pos], axis=0), [2]))
        if standard:
            with g.scope("model/attn_mask"):
                out.masks = self._attention_masks(ids, mask, standard)
        if len(standard) < L:
            with g.scope("model/attn_lengths"):
                out.fused = _fused_inputs(g, arch, mask, cos_name, sin_name)
        return out

    def _rope_kind(self, i: int) -> str | None:
        """Which rope layer i rotates with, as cpp/model/decoder.cc's rope_and_cache picks it."""
        arch = self.arch
        if arch.rope is None or arch.rope.rotary_dim == 0 or (arch.rope_layers and not arch.rope_layers[i]):
            return None
        return "local" if arch.rope_local is not None and arch.sliding_window[i] > 0 else "global"

    def _attention_masks(self, ids: str, mask: str, standard: list[int]) -> dict[int, str]:
        """Causal and padding mask [B, 1, 1, S, T], and one per sliding window the layers use."""
        g, arch = self.g, self.arch
        seq = g.dim(ids, 1)
        total = g.dim(mask, 1)
        past_len = g.op("Sub", [total, seq])
        q_idx = g.unsqueeze(g.op("Range", [past_len, total, g.const(1, np.int64)]), [1])  # [S, 1]
        k_idx = g.unsqueeze(g.op("Range", [g.const(0, np.int64), total, g.const(1, np.int64)]), [0])  # [1, T]
        causal = g.op("LessOrEqual", [k_idx, q_idx])
        padding = g.unsqueeze(g.cast(mask, BOOL), [1, 2, 3])  # [B, 1, 1, 1, T]
        allowed = g.op("And", [causal, padding])  # [B, 1, 1, S, T]
        masks = {0: allowed}
        for window in sorted({arch.sliding_window[i] for i in standard} - {0}):
            near = g.op("Less", [g.op("Sub", [q_idx, k_idx]), g.const(window, np.int64)])
            masks[window] = g.op("And", [allowed, near])
        return masks

    def add_norm(self, x: str, residual: str | None, key: str, norm: bool = True) -> tuple[str, str]:
        """(norm(x + residual), x + residual); one SkipSimplifiedLayerNormalization in int4.
        norm False (a block input of OLMo 2, which has no pre-norms): (x + residual, x + residual)."""
        g, arch = self.g, self.arch
        if not norm:
            x = x if residual is None else g.op("Add", [x, residual], tag="residual")
            return x, x
        wt = self.w[key]
        if residual is None:
            return _norm(g, arch, x, wt, self.w.get(key.replace(".weight", ".bias")), key), x
        if self.fuse_norms:
            base = g.node_name("SkipLayerNorm/output")
            outs = g.op("SkipSimplifiedLayerNormalization", [x, residual, g.weight(key, wt)], domain=MS_DOMAIN,
                        tag="SkipLayerNorm", names=[base + "_0", "", "", base + "_3"], epsilon=arch.norm_eps)
            return outs[0], outs[3]
        x = g.op("Add", [x, residual], tag="residual")
        return _norm(g, arch, x, wt, self.w.get(key.replace(".weight", ".bias")), key), x

    def attention_block(self, i: int, x: str, pending: str | None, past: tuple[str, str],
                        attn: _AttentionInputs) -> tuple[str, str]:
        """Layer i's attention on norm(x + pending): (its output [B, S, H], not yet added to the
        residual stream; the residual stream x + pending). Writes present.{i}.key/value."""
        g, arch, w, linear = self.g, self.arch, self.w, self.linear
        p = f"layers.{i}."
        with g.scope("input_layernorm"):
            h, x = self.add_norm(x, pending, p + "attn_norm.weight", norm=arch.pre_norm)
        with g.scope("attn"):
            qkv = linear(h, p + "qkv.weight", w[p + "qkv.weight"], w.get(p + "qkv.bias"), tag="qkv_proj/MatMul")
            present = (layout.present_key(i), layout.present_value(i))
            if i not in attn.standard:
                ctx = _attention_fused(g, arch, w, p, qkv, past, present, attn.fused, attn.scale,
                                       rotates=attn.rope_kind[i] is not None)
            else:
                cos, sin = attn.rope_rows(i)
                ctx = _attention(g, arch, w, p, qkv, past, present, cos, sin,
                                 attn.masks[arch.sliding_window[i]], attn.scale, self.kv_type)
            o = linear(ctx, p + "o.weight", w[p + "o.weight"], w.get(p + "o.bias"), tag="o_proj/MatMul")
        for name in present:
            g.outputs.append(helper.make_tensor_value_info(name, self.kv_type, ["batch_size", arch.num_kv_heads,
                                                                               "total_sequence_length", arch.head_dim]))
        if arch.post_attn_norm:
            with g.scope("post_attention_layernorm"):
                o = _norm(g, arch, o, w[p + "attn_post_norm.weight"], None, p + "attn_post_norm.weight")
        return self.residual_branch(o), x

    def mlp_block(self, i: int, x: str, o: str) -> tuple[str, str]:
        """Layer i's MLP on norm(x + o): (its output [B, S, H], not yet added; the residual
        stream x + o)."""
        g, arch, w, linear = self.g, self.arch, self.w, self.linear
        p, F = f"layers.{i}.", arch.intermediate_size
        with g.scope("post_attention_layernorm" if not arch.post_attn_norm else "pre_feedforward_layernorm"):
            h, x = self.add_norm(x, o, p + "ffn_norm.weight", norm=arch.pre_norm)
        with g.scope("mlp"):
            wu, bu = w[p + "up.weight"], w.get(p + "up.bias")
            if arch.gated_mlp and self.precision == "int4":
                # Two MatMulNBits beat one of twice the width plus a Split (the copy costs more
                # than the second kernel launch).
                gate = linear(h, p + "up.weight.gate", _rows(wu, 0, F), None if bu is None else bu[:F],
                              tag="gate_proj/MatMul")
                up = linear(h, p + "up.weight.up", _rows(wu, F, 2 * F), None if bu is None else bu[F:],
                            tag="up_proj/MatMul")
                a = g.op("Mul", [_activation(g, arch.activation, gate), up])
            elif arch.gated_mlp:
                gate, up = g.split(linear(h, p + "up.weight", wu, bu, tag="gate_up_proj/MatMul"), [F, F], -1)
                a = g.op("Mul", [_activation(g, arch.activation, gate), up])
            else:
                a = _activation(g, arch.activation, linear(h, p + "up.weight", wu, bu, tag="up_proj/MatMul"))
            d = linear(a, p + "down.weight", w[p + "down.weight"], w.get(p + "down.bias"), tag="down_proj/MatMul")
        if arch.post_ffn_norm:
            with g.scope("post_feedforward_layernorm"):
                d = _norm(g, arch, d, w[p + "ffn_post_norm.weight"], None, p + "ffn_post_norm.weight")
        return self.residual_branch(d), x

    def residual_branch(self, out: str) -> str:
        """A block's output as it joins the residual stream: scaled by Granite's
        residual_multiplier, as the core's add_residual does."""
        if self.arch.residual_scale == 1.0:
            return out
        return self.g.op("Mul", [out, self.g.const(self.arch.residual_scale)], tag="residual_scale")

    def head(self, x: str, pending: str | None, embed_name: str) -> str:
        """logits [B, S, V] = lm_head(norm(x + pending)) (scaled, soft-capped)."""
        g, arch = self.g, self.arch
        with g.scope("model/norm"):
            x, _ = self.add_norm(x, pending, "final_norm.weight")
        with g.scope("lm_head"):
            if arch.tie_word_embeddings:
                logits = self.linear.tied(x, embed_name, self.w["embed"])
            else:
                logits = self.linear(x, "lm_head", self.w["lm_head"], head=True)
            if arch.logit_scale != 1.0:  # Granite: logits / logits_scaling, before any soft-capping
                logits = g.op("Mul", [logits, g.const(arch.logit_scale)])
            if arch.final_softcap > 0:
                c = g.const(arch.final_softcap)
                logits = g.op("Mul", [g.op("Tanh", [g.op("Div", [logits, c])]), c])
        return logits


# Decoder switches the graph builder does not express yet, with the families that use them.
_UNEXPORTED = {
    "attn_sinks": (lambda a: a.attn_sinks, "attention sinks (gpt_oss)"),
    "num_experts": (lambda a: a.num_experts > 0, "a mixture of experts (mixtral, qwen2_moe, qwen3_moe, olmoe, gpt_oss)"),
}


def refuse_unexported(arch: Architecture) -> None:
    for name, (used, what) in _UNEXPORTED.items():
        if used(arch):
            raise UnsupportedModelError(f"export-onnx: {arch.family} uses {what}, which the ONNX export does not "
                                        f"build yet (Architecture.{name}); the model runs in llmos itself",
                                        field=name)


def build_decoder(arch: Architecture, weights: dict[str, np.ndarray], precision: str, opset: int,
                  block_size: int, accuracy_level: int = INT4_ACCURACY_LEVEL) -> GraphBuilder:
    """The decoder with KV cache in the optimum layout (see layout.py)."""
    refuse_unexported(arch)
    d = _DecoderGraph(arch, weights, precision, opset, block_size, accuracy_level)
    g = d.g
    ids, mask, pos, past = d.inputs()
    x, embed_name = d.embedding(ids, pos)
    attn = d.attention_inputs(ids, mask, pos)
    pending = None  # the block output not yet added to the residual stream
    for i in range(arch.num_layers):
        with g.scope(f"model/layers.{i}"):
            o, x = d.attention_block(i, x, pending, past[i], attn)
            pending, x = d.mlp_block(i, x, o)
    logits = d.head(x, pending, embed_name)
    g.output(logits, layout.LOGITS, FLOAT, ["batch_size", "sequence_length", arch.vocab_size])
    g.outputs.insert(0, g.outputs.pop())  # logits first, then present.*, as optimum orders them
    # With GroupQueryAttention in every layer a runtime may hand the graph a preallocated
    # cache that present.* is written into (onnxruntime-genai's past_present_share_buffer).
    g.metadata["past_present_share_buffer"] = not attn.standard
    return g
