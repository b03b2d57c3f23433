"""Type stub of llmos._core, the C++ core (cpp/bindings/). Every public name of the module is here
and nothing else (tests/test_binding_names.py checks both directions and every argument name).

The public API is the llmos package; only its own modules import _core. Every call that computes
releases the GIL. Errors arrive as the classes of llmos.errors.
"""

import enum
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

# ---- architecture (bind_arch.cc) ------------------------------------------------------------

class NormKind(enum.Enum):
    """Which normalization the decoder applies."""

    LayerNorm = ...
    RMSNorm = ...

class Activation(enum.Enum):
    """The MLP's activation (kernel_activate takes its value)."""

    Silu = ...
    GeluErf = ...
    GeluTanh = ...
    Relu = ...

class Rope:
    """RoPE frequencies and scaling; the C++ twin of llmos.arch.rope.Rope."""

    rotary_dim: int
    """Leading dims of each head that rotate; 0: no RoPE."""
    inv_freq: list[float]
    """[rotary_dim / 2] inverse frequencies, any scaling applied."""
    inv_freq_long: list[float]
    """longrope: replaces inv_freq in a forward whose sequence exceeds long_after; [] if unused."""
    long_after: int
    """longrope: the sequence length past which inv_freq_long applies."""
    attention_scaling: float
    """Multiplies cos and sin (yarn, longrope)."""
    dynamic: bool
    """Dynamic NTK: the base stretches once the sequence grows past dynamic_max_positions."""
    dynamic_base: float
    """Dynamic NTK: the unscaled rope base."""
    dynamic_factor: float
    """Dynamic NTK: the scaling factor."""
    dynamic_max_positions: int
    """Dynamic NTK: the length the model was trained for."""
    def __init__(self) -> None:
        """No RoPE (rotary_dim 0)."""

class Architecture:
    """Every switch of the generic decoder; the C++ twin of llmos.arch.families.Architecture."""

    family: str
    """The model family, for messages only."""
    vocab_size: int
    """Rows of the embedding and the LM head."""
    hidden_size: int
    """Width of the residual stream."""
    num_layers: int
    """Decoder layers."""
    num_heads: int
    """Query heads."""
    num_kv_heads: int
    """Key / value heads (num_heads for MHA, fewer for GQA / MQA)."""
    head_dim: int
    """Width of each head."""
    intermediate_size: int
    """Width of the MLP."""
    max_position_embeddings: int
    """The context length the model accepts."""
    norm: NormKind
    """RMSNorm or LayerNorm."""
    norm_eps: float
    """Epsilon of every norm."""
    norm_weight_offset: float
    """Added to every norm weight at load (Gemma stores w - 1)."""
    norm_bias: bool
    """LayerNorm with bias (GPT-2)."""
    learned_positions: bool
    """An absolute position embedding table (GPT-2)."""
    rope: Rope
    """Rotary position embedding (rotary_dim 0 when none)."""
    rope_local: Rope
    """The sliding-window layers' rope when it differs (Gemma 3); rotary_dim 0: they use rope."""
    rope_layers: list[int]
    """[num_layers] 1 = the layer rotates q and k, 0 = no RoPE (SmolLM3); empty: every layer rotates."""
    qkv_bias: bool
    """Bias on the q, k and v projections."""
    o_bias: bool
    """Bias on the attention output projection."""
    qk_norm: bool
    """RMSNorm over head_dim on q and k before RoPE (Qwen3)."""
    qk_norm_across_heads: bool
    """The q (k) norm spans all heads at once (OLMo 2)."""
    pre_norm: bool
    """A norm before attention and MLP; False: only the post norms (OLMo 2)."""
    gated_mlp: bool
    """act(gate) * up rather than act(up)."""
    num_experts: int
    """Experts per MLP (Mixtral, Qwen2/3-MoE, OLMoE); 0: a dense MLP."""
    experts_per_token: int
    """How many experts each token is routed to (top-k of the router's softmax)."""
    expert_intermediate_size: int
    """Width of each expert's gated MLP."""
    norm_topk_prob: bool
    """Renormalise the top-k router weights to sum to 1."""
    shared_expert_size: int
    """Width of the shared expert every token also runs (Qwen2-MoE); 0: none."""
    shared_expert_gate: bool
    """Scale the shared expert by sigmoid(shared_gate . x)."""
    mlp_bias: bool
    """Bias on the MLP projections."""
    router_bias: bool
    """gpt-oss: the router adds a bias [num_experts] (weight "router.bias")."""
    expert_bias: bool
    """gpt-oss: each expert's gate|up and down add biases ("experts.E.up.bias", "experts.E.down.bias")."""
    swiglu_limit: float
    """> 0: the experts' activation is (clamp(up, -limit, limit) + 1) * g * sigmoid(alpha g), g = min(gate, limit)."""
    swiglu_alpha: float
    """gpt-oss: the sigmoid's slope in that activation (1.702)."""
    attn_sinks: bool
    """gpt-oss: a learned logit per head (weight "sinks" [num_heads]) joins every softmax denominator."""
    activation: Activation
    """The MLP's activation."""
    post_attn_norm: bool
    """A norm on the attention output before the residual add (Gemma 2)."""
    post_ffn_norm: bool
    """A norm on the MLP output before the residual add (Gemma 2)."""
    tie_word_embeddings: bool
    """The LM head shares the embedding matrix."""
    embed_scale: float
    """Multiplies the embeddings (Gemma: sqrt(hidden_size))."""
    attn_scale: float
    """Multiplies q.k; 0 means 1 / sqrt(head_dim)."""
    attn_softcap: float
    """cap * tanh(score / cap) on attention scores; 0: off (Gemma 2)."""
    final_softcap: float
    """The same cap on the logits; 0: off (Gemma 2)."""
    residual_scale: float
    """Multiplies each block's output before the residual add (Granite)."""
    logit_scale: float
    """Multiplies the logits (Granite: 1 / logits_scaling)."""
    sliding_window: list[int]
    """[num_layers]: 0 for full attention, W to attend to the last W keys."""
    def __init__(self) -> None:
        """Every field at its default; llmos.arch.families.Architecture.to_core fills one."""
    def validate(self) -> None:
        """Raises InvalidInputError naming the first inconsistent field."""

# ---- quantized formats (bind_quant.cc) ------------------------------------------------------

class QuantType(enum.IntEnum):
    """A block-quantized weight format (cpp/quant/qformat.h); its numbers are saved in the
    metadata of llmos.quantize's checkpoints. None stands for a float matrix."""

    Q8 = 1
    Q4 = 2
    Q4Asym = 3
    Q6 = 4

def quantize_dequantize(w: npt.ArrayLike, quant: QuantType, group: int) -> npt.NDArray[np.float32]:
    """W [rows, k] after a round trip through a quantized format (k a multiple of 64 and group)."""

def quantize_blocks(w: npt.ArrayLike, quant: QuantType, group: int = 32, threads: int = 1
                    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint16], npt.NDArray[np.uint16] | None]:
    """The blocks of W [rows, k] (k a multiple of 64 and group) in `quant`, as the loader quantizes
    it: (codes [rows, row bytes], float16 scale bits [rows, k / group], min bits for Q4Asym else None)."""

# ---- kernels (bind_kernels.cc) --------------------------------------------------------------

def memory_bandwidth(threads: int, mbytes: int = 512, reps: int = 5) -> float:
    """Memory read bandwidth in GB/s, the best of `reps` reads of `mbytes` MiB (benchmarks)."""

def cpu_isa() -> str:
    """The ISA the kernels use: scalar, avx2, avx512, avx512_vnni, avx512_bf16 or amx
    (LLMOS_CPU_ISA can lower it)."""

def cpu_best_isa() -> str:
    """The widest ISA this CPU and OS support."""

# `isa` names one kernel table: scalar, avx2, avx512, avx512_vnni, avx512_bf16, amx (if this CPU
# has it), or emu16 (the shared SIMD algorithms over a portable 16-lane vector).

def kernel_matmul(isa: str, x: npt.ArrayLike, w: npt.NDArray[Any], w_dtype: str,
                  prefill: bool = False) -> npt.NDArray[np.float32]:
    """x [n, k] @ W^T with one ISA's kernel; W [rows, k] float32, or uint16 / float16 holding
    the bits of w_dtype (bfloat16, float16); prefill picks the many-token kernel."""

def kernel_qmatmul(isa: str, x: npt.ArrayLike, w: npt.ArrayLike, quant: QuantType, group: int,
                   prefill: bool = True) -> npt.NDArray[np.float32]:
    """x [n, k] @ W^T with W [rows, k] quantized first, through the forward pass's dispatch."""

def kernel_qmatmul_seconds(isa: str, x: npt.ArrayLike, w: npt.ArrayLike, quant: QuantType, group: int,
                           prefill: bool, threads: int, reps: int) -> list[float]:
    """Seconds of each of `reps` calls of x @ W^T (W quantized once) on `threads` threads."""

def kernel_attention(isa: str, q: npt.ArrayLike, k: npt.ArrayLike, v: npt.ArrayLike, start: int, p0: int,
                     window: int, scale: float, softcap: float = 0.0,
                     sink: float = float("-inf")) -> npt.NDArray[np.float32]:
    """One attention block: q [1..16, D] at positions p0.., keys and values [len, D] from start;
    sink: an extra logit in each softmax denominator (gpt-oss), -inf for none."""

def kernel_activate(isa: str, act: int, x: npt.ArrayLike,
                    up: npt.ArrayLike | None = None) -> npt.NDArray[np.float32]:
    """act(x), act(x) * up when up is given, or softmax(x) for act == -1 (act: an Activation value)."""

# ---- the CUDA device (bind_cuda.cc; bound in every build) ----------------------------------

def cuda_built() -> bool:
    """Whether this build has the CUDA kernels (CMake's LLMOS_CUDA)."""

def cuda_device_count() -> int:
    """CUDA GPUs visible to this process; 0 (never an error) without CUDA in the build, a driver or a GPU."""

def cuda_unavailable_reason(device: int) -> str:
    """Why GPU `device` cannot be used (no CUDA build, no driver, no such GPU), or '' when it can."""

def cuda_device_info(device: int) -> dict[str, Any]:
    """name, capability (major, minor), sm_count, total_memory, memory_clock_khz, bus_width_bits and
    peak_bandwidth_gbs of GPU `device`."""

def cuda_kernel_gemv_quant(x: npt.ArrayLike, w: npt.ArrayLike, quant: QuantType, group: int,
                           device: int = 0) -> npt.NDArray[np.float32]:
    """x [1..16, k] @ dequantize(quantize(w))^T on the GPU: w [rows, k] is quantized on the host as the CPU path
    does, the activations stay float32."""

def cuda_kernel_gemv_half(x: npt.ArrayLike, w: npt.ArrayLike, w_dtype: str,
                          device: int = 0) -> npt.NDArray[np.float32]:
    """x [1..16, k] @ w^T on the GPU, w uint16 / float16 [rows, k] holding float16 or bfloat16 bits."""

def cuda_kernel_rms_norm(x: npt.ArrayLike, w: npt.ArrayLike, eps: float, device: int = 0) -> npt.NDArray[np.float32]:
    """RMSNorm of each row of x [rows, n] times w [n], on the GPU."""

def cuda_kernel_rope(x: npt.ArrayLike, cos_t: npt.ArrayLike, sin_t: npt.ArrayLike,
                     device: int = 0) -> npt.NDArray[np.float32]:
    """x [tokens, heads, head_dim] with its first 2 * cos_t.shape[1] values of each head rotated (rotate-half),
    cos_t / sin_t [tokens, rotary_dim / 2], on the GPU."""

def cuda_kernel_activate_gated(act: int, gate: npt.ArrayLike, up: npt.ArrayLike,
                               device: int = 0) -> npt.NDArray[np.float32]:
    """act(gate) * up element-wise on the GPU (act: an Activation value)."""

def cuda_kernel_attention_decode(q: npt.ArrayLike, k: npt.ArrayLike, v: npt.ArrayLike, window: int = 0,
                                 scale: float = 1.0, softcap: float = 0.0,
                                 device: int = 0) -> npt.NDArray[np.float32]:
    """Split-K decode attention on the GPU: q [heads, D] at position len - 1 against k, v [kv_heads, len, D]."""

def cuda_kernel_sample(logits: npt.ArrayLike, greedy: bool, temperature: float = 1.0, top_k: int = 0,
                       top_p: float = 1.0, min_p: float = 0.0, seed: int = 0, step: int = 0,
                       device: int = 0) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]:
    """One token per row of logits [rows, vocab] on the GPU (argmax, or temperature / top-k / top-p / min-p and a
    seeded draw), and the distribution it was drawn from."""

def cuda_time_gemv(rows: int, cols: int, tokens: int, quant: QuantType | None, w_dtype: str = "float16",
                   group: int = 32, reps: int = 200, device: int = 0) -> float:
    """Seconds per GEMV launch on the GPU (weights larger than L2 in rotation), for tools/bench_cuda.py."""

# ---- token choice (bind_sampling.cc) --------------------------------------------------------

class DecodeOptions:
    """Every option of token choice, with transformers' names (cpp/sampling/options.h)."""

    max_new_tokens: int
    """Tokens to generate at most."""
    min_new_tokens: int
    """EOS is blocked before this many new tokens."""
    min_length: int
    """EOS is blocked before this total length, prompt included."""
    eos_token_ids: list[int]
    """Tokens that end a sequence."""
    sequence_bias: list[tuple[list[int], float]]
    """(tokens, bias): the last token gets the bias when the others end the sequence."""
    logit_bias: list[tuple[int, float]]
    """(token, bias) added to the logits."""
    encoder_repetition_penalty: float
    """> 0, on the prompt's tokens (> 1 favours them); 1: off."""
    repetition_penalty: float
    """> 0; 1: off."""
    presence_penalty: float
    """Subtracted once from every token generated so far (OpenAI)."""
    frequency_penalty: float
    """Subtracted per time a token was generated (OpenAI)."""
    no_repeat_ngram_size: int
    """No n-gram of this size occurs twice; 0: off."""
    encoder_no_repeat_ngram_size: int
    """No n-gram of the prompt of this size is repeated; 0: off."""
    bad_words_ids: list[list[int]]
    """Token sequences never generated."""
    forced_bos_token_id: int
    """The only choice after a one-token prompt; -1: off."""
    forced_eos_token_ids: list[int]
    """The only choices for the last token."""
    remove_invalid_values: bool
    """nan becomes 0 and +-inf +-FLT_MAX."""
    exponential_decay_length_penalty: tuple[int, float]
    """(start, factor): EOS is favoured more and more after start; factor 1: off."""
    suppress_tokens: list[int]
    """Tokens never generated."""
    begin_suppress_tokens: list[int]
    """Tokens banned for the first new token only."""
    do_sample: bool
    """Sample rather than take the best token."""
    temperature: float
    """Divides the logits when sampling."""
    top_h: float
    """Top-h (entropy-bounded) truncation; 0: off."""
    top_k: int
    """Keep the k best tokens; 0: off."""
    top_p: float
    """Keep the smallest set of tokens with this much probability; 1: off."""
    min_p: float
    """Drop tokens below min_p times the best one's probability; 0: off."""
    typical_p: float
    """Locally typical sampling; 1: off."""
    epsilon_cutoff: float
    """Drop tokens below this probability; 0: off."""
    eta_cutoff: float
    """Eta sampling's entropy-dependent cutoff; 0: off."""
    seed: int
    """Seed of the sampler's random numbers."""
    renormalize_logits: bool
    """log_softmax after every processor and warper."""
    num_beams: int
    """Beam search with this many beams; 1: off."""
    length_penalty: float
    """Beam scores are divided by length ** length_penalty."""
    early_stopping: int
    """Beam search: 0 False, 1 True, 2 "never"."""
    num_return_sequences: int
    """Sequences returned per prompt."""
    logprobs: bool
    """Return the log-probability of each chosen token."""
    top_logprobs: int
    """Return this many best alternatives per token, with log-probabilities."""
    def __init__(self) -> None:
        """Greedy decoding of 16 tokens."""
    def validate(self, vocab_size: int) -> None:
        """Raises InvalidInputError naming the first option out of range."""

def process_logits(options: DecodeOptions, sequence: Sequence[int], prompt_len: int,
                   logits: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """One row of logits through the processors (and warpers when sampling), as the decode loop
    applies them after `sequence`, whose first prompt_len tokens are the prompt."""

class TokenConstraint:
    """Base class of output constraints (cpp/sampling/constraint.h), called from the core's
    threads (each call takes the GIL). A subclass implements fill_mask(allowed: uint32 array of
    (vocab + 31) // 32 words, zeroed; set bit t % 32 of word t // 32 for each allowed token t,
    vocab: int), accept(token: int) and done() -> bool (complete: only EOS may follow)."""

    def __init__(self) -> None:
        """Call from the subclass's __init__."""

class Sampler:
    """The processors, warpers and sampler of generate(), one token at a time (ONNX decode loops)."""

    @property
    def vocab_size(self) -> int:
        """The length every row of logits must have."""
    def __init__(self, options: DecodeOptions, prompt: Sequence[int], vocab_size: int) -> None:
        """A sampler continuing `prompt`, seeded with options.seed."""
    def next(self, logits: npt.ArrayLike,
             allowed: npt.NDArray[np.uint32] | None = None) -> tuple[int, float, list[tuple[int, float]]]:
        """Processes one row of vocab_size logits and picks the next token: (token, logprob, top_logprobs).
        allowed: a TokenConstraint's mask ((vocab_size + 31) // 32 words), or None."""

# ---- the model (bind_model.cc) --------------------------------------------------------------

class CancelToken:
    """Stops a running call: cancel() from any thread ends the generate() it was passed to within
    milliseconds, with llmos.errors.CancelledError. A token cancelled once stays cancelled; one made
    with a parent is also cancelled when its parent is."""

    def __init__(self, parent: CancelToken | None = None) -> None:
        """A token of its own, cancelled also when `parent` is."""
    def cancel(self) -> None:
        """Asks every call using this token (or a child of it) to stop."""
    def cancelled(self) -> bool:
        """Whether cancel() was called on this token or an ancestor."""

class Model:
    """A decoder with its weights, thread pool and scratch; calls from several threads serialize.
    Its calls on the main thread run pending signal handlers every few milliseconds, so Ctrl-C
    raises KeyboardInterrupt promptly; the model stays usable after either way of stopping."""

    @property
    def n_threads(self) -> int:
        """Compute threads."""
    @property
    def isa(self) -> str:
        """The ISA of its kernels."""
    @property
    def device(self) -> str:
        """Where its forward passes run: "cpu" or "cuda:N"."""
    @property
    def device_weight_bytes(self) -> int:
        """Bytes of weights on the GPU (0 on the CPU)."""
    def to_device(self, device: int) -> None:
        """Runs every later forward on GPU `device` (weights copied there, KV caches made there);
        raises InvalidInputError (field device) saying why when it cannot."""
    @staticmethod
    def cuda_unsupported(model: Model) -> str:
        """Why this model cannot run on the GPU ("" when it can)."""
    def __init__(self, arch: Architecture, sources: Iterable[tuple[Any, ...]], dtype: str, n_threads: int,
                 quant: QuantType | None = None, group: int = 32, head_quant: QuantType | None = None) -> None:
        """Loads the weights: sources yields (role, layer, parts, prequant, group), each taken and let
        go in turn; a part is (file, tensor, transpose) or (name, array, transpose), and a
        pre-quantized role (prequant a QuantType) has one part (file, base name, False) or
        (name, (codes, scale, min or None), False). dtype: float32, bfloat16 or float16; quant and
        head_quant quantize the layers and the embedding / LM head at load, in groups of `group`."""
    def quantized_matrices(self) -> list[tuple[str, int, QuantType, int, npt.NDArray[np.uint8],
                                               npt.NDArray[np.uint16], npt.NDArray[np.uint16] | None]]:
        """(role, layer, type, group, codes, scale bits, min bits or None) of each quantized matrix."""
    def logits(self, token_ids: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """[n, vocab] logits of every position of token_ids, in a fresh context."""
    def generate(self, prompts: Sequence[Sequence[int]], options: DecodeOptions,
                 on_token: Callable[[int, int], bool] | None = None,
                 cancel: CancelToken | None = None,
                 constraints: Sequence[TokenConstraint | None] | None = None) -> list[dict[str, Any]]:
        """Decodes every prompt together (or by beam search): per sequence a dict of prompt_index,
        tokens, finish_reason, logprobs, top_logprobs and score. on_token(sequence, token) returning
        True ends that sequence; cancel.cancel() ends the call (CancelledError). constraints: one
        TokenConstraint (or None) per sequence, masks computed while the forward runs."""

# ---- paged KV cache, test surface (bind_model.cc) -------------------------------------------

class KvPool:
    """Fixed-size KV blocks for one model, with refcounts and a prefix cache (test surface; the
    serving engine drives the same C++ pool)."""

    @property
    def block_tokens(self) -> int:
        """Positions per block."""
    @property
    def num_blocks(self) -> int:
        """Blocks the budget holds."""
    @property
    def dtype(self) -> str:
        """float32, bfloat16, float16 or int8."""
    def __init__(self, model: Model, dtype: str, block_tokens: int, budget_bytes: int) -> None:
        """A pool of budget_bytes // block_bytes blocks (InvalidInputError when that is none)."""
    @staticmethod
    def block_bytes(model: Model, dtype: str, block_tokens: int) -> int:
        """Bytes of one block: every layer's keys and values for block_tokens positions."""
    def stats(self) -> dict[str, int]:
        """blocks_total, blocks_used, blocks_cached, prefix_queries, prefix_hits, evictions."""
    def set_hash_mask(self, mask: int) -> None:
        """Test hook: masks every block hash (0 makes all blocks collide)."""

class Session:
    """One sequence's KV cache (test surface): paged over a KvPool, or contiguous without one."""

    @property
    def n_past(self) -> int:
        """Positions cached."""
    @property
    def paged(self) -> bool:
        """Whether it lives in a KvPool."""
    @property
    def blocks_held(self) -> int:
        """Blocks it holds (paged)."""
    @property
    def history(self) -> list[int]:
        """The tokens cached (paged)."""
    def __init__(self, model: Model, pool: KvPool | None = None) -> None:
        """An empty session; keeps model and pool alive."""
    def reserve_append(self, n: int) -> bool:
        """Blocks for the next n positions (copy-on-write of a shared one); False, nothing changed,
        when the pool is out of blocks."""
    def adopt_prefix(self, token_ids: npt.ArrayLike) -> int:
        """Takes the cached blocks matching whole blocks of token_ids (at most n - 1 tokens)."""
    def publish(self) -> None:
        """Registers its full blocks in the prefix cache."""
    def fork_from(self, other: Session) -> None:
        """Shares other's blocks and history."""
    def copy_from(self, other: Session) -> None:
        """Copies other's cache (contiguous sessions: beam search)."""
    def release(self) -> None:
        """Gives every block back."""
    def truncate(self, n: int) -> None:
        """Forgets every position from n on (contiguous sessions): speculative decoding's rollback."""
    def forward(self, model: Model, token_ids: npt.ArrayLike, all_logits: bool = True,
                cancel: CancelToken | None = None) -> npt.NDArray[np.float32]:
        """Model.forward on this session: [n, vocab] logits, or [1, vocab] without all_logits;
        cancel.cancel() from another thread ends it (CancelledError)."""

def forward_step(model: Model, chunks: Sequence[tuple[Session, npt.ArrayLike]]) -> npt.NDArray[np.float32]:
    """One forward over every (session, token_ids) chunk, never split: [chunks, vocab], each
    chunk's last token."""

# ---- serving engine (bind_engine.cc) --------------------------------------------------------

class Engine:
    """Continuous batching over one Model (cpp/serving/engine.h); llmos.Engine wraps it. Keeps the
    model alive; destroying it (or shutdown()) cancels what is left and joins its threads."""

    def __init__(self, model: Model, max_batch_tokens: int, prefill_chunk: int, kv_memory: int, kv_dtype: str,
                 block_tokens: int, prefix_cache: bool, max_running: int, max_waiting: int) -> None:
        """Starts the step thread over a KV pool of kv_memory bytes."""
    def submit(self, prompt: Sequence[int], options: DecodeOptions,
               constraints: Sequence[TokenConstraint] | None = None,
               cancel: CancelToken | None = None) -> int | None:
        """Queues a request; its id, or None when the engine's queue is full."""
    def poll(self, timeout: float) -> list[tuple[int, int, list[int], list[float], list[list[tuple[int, float]]],
                                                 str | None, float, tuple[str, str, str] | BaseException | None]]:
        """Events of every request since the last call (waits up to timeout s for one):
        (request, seq, tokens, logprobs, top_logprobs, finish_reason or None, score,
        (error class, field, message), or the exception a Python constraint raised, or None); seq -1
        with an error ends the whole request."""
    def cancel(self, request: int) -> None:
        """Ends the request within one step (a CancelledError event) and frees its blocks."""
    def finish(self, request: int, seq: int) -> None:
        """Ends one sequence as a stop string does, before the next step."""
    def shutdown(self) -> None:
        """Stops accepting, cancels every request left, joins the threads."""
    def stats(self) -> dict[str, int]:
        """running, waiting, kv_blocks_total, kv_blocks_used, kv_blocks_cached, prefix_queries,
        prefix_hits, preemptions, steps."""

# ---- safetensors (bind_io.cc) ---------------------------------------------------------------

def safetensors_read_header(path: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """(tensors, metadata) of a validated .safetensors file: tensors in header order as dicts of
    name, dtype, shape and data_offsets."""

def safetensors_parse_bytes(data: bytes, name: str = "<bytes>") -> tuple[list[dict[str, Any]], dict[str, str]]:
    """safetensors_read_header for an in-memory image; name labels it in messages."""

def safetensors_read_tensor(path: str, name: str) -> npt.NDArray[Any]:
    """A copy of one tensor (bfloat16 as uint16 bits, FP8 as uint8 bits)."""
