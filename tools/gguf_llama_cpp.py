"""Logits of llmos and llama-cpp-python on the same GGUF files (CI cannot build llama-cpp-python, so
this lives here, not in tests/). For each random checkpoint kind (tests/checkpoints.py) and GGUF type
(tests/gguf_files.py) it prints the rel-L2 of llmos's logits against llama.cpp's over 64 tokens, the
top-1 agreement, and the same for llama.cpp against transformers on the F32 folder (the floor the
file's own quantization sets).

    PYTHONPATH=python:tests python3 tools/gguf_llama_cpp.py [--kinds llama,qwen2,qwen3] [--types F32,Q8_0,Q4_0]

--kinds takes checkpoint kinds and the architecture cases of tests/gguf_files.py's ARCH_CASES
(gemma3, phi3, mixtral, qwen2_moe, qwen3_moe...: the checkpoint as llama.cpp lays that family out).
--tokenizers also compares token ids: llama.cpp's tokenizer against the one llmos builds from the
same file's vocabulary, for a byte-level BPE file and a SentencePiece-style one
(tests/sentencepiece_vocab.py), on texts with unicode, digits, runs of spaces and special tokens.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import numpy as np


def llama_cpp_logits(path: Path, ids: list[int]) -> np.ndarray:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=256, logits_all=True, verbose=False, n_threads=1, seed=0)
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def transformers_logits(folder: Path, ids: list[int]) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        return m(torch.tensor([ids])).logits[0].numpy()


TOKENIZER_TEXTS = ["Hello, world!", "  two  spaces and\ttabs\nnew lines\n\n", "digits 1234567890 and 3.14159",
                   "unicode: café, naïve, 日本語, emoji 🙂🚀, Ελληνικά", " leading space", "trailing space ",
                   "<s>Hello</s> world", "<|im_start|>user\nhi<|im_end|>", "zzz qqq xylophone",
                   "The library loads the configuration, the tokenizer and the tensors."]


def compare_tokenizers(tmp: Path) -> None:
    """llama.cpp's token ids against llmos's tokenizer built from the same GGUF vocabulary."""
    import checkpoints
    from gguf_files import write_gguf
    from llama_cpp import Llama
    from sentencepiece_vocab import with_llama_style_tokenizer
    from tokenizers import Tokenizer

    from llmos.io.gguf import GgufFile

    bpe = checkpoints.build_checkpoint("qwen3", tmp / "tok-bpe")
    spm = with_llama_style_tokenizer(checkpoints.build_checkpoint("llama", tmp / "tok-llama"), tmp / "tok-spm")
    # one byte-level BPE vocabulary under each pre-tokenizer llmos reads (the test tokenizer splits
    # with GPT-2's regex, so only "gpt-2" also matches its tokenizer.json), and a SentencePiece one
    cases = [(f"byte-level BPE, pre {pre}", bpe, pre) for pre in ("gpt-2", "default", "llama-bpe", "qwen2")]
    for name, folder, pre in cases + [("SentencePiece", spm, "default")]:
        path, _ = write_gguf(folder, tmp / f"{folder.name}-{pre}.gguf", pre=pre)
        ours = Tokenizer.from_str(GgufFile(path).tokenizer_json())
        theirs = Llama(model_path=str(path), vocab_only=True, verbose=False)
        same = 0
        for text in TOKENIZER_TEXTS:
            a = ours.encode(text).ids
            b = theirs.tokenize(text.encode(), add_bos=False, special=True)
            same += a == b
            if a != b:
                print(f"  {name}: {text!r}: llmos {ours.encode(text).tokens} llama.cpp {b}")
        print(f"tokenizer {name}: {same}/{len(TOKENIZER_TEXTS)} texts tokenized identically")


def compare(a: np.ndarray, b: np.ndarray) -> str:
    rel = np.linalg.norm(a - b) / np.linalg.norm(b)
    return f"rel-L2 {rel:.4f} top-1 {(a.argmax(-1) == b.argmax(-1)).mean():.3f} max|d| {np.abs(a - b).max():.2e}"


def main() -> None:
    import checkpoints
    from gguf_files import ARCH_CASES, write_gguf

    import llmos

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", default="llama,qwen2,qwen3,gemma3,phi3,mixtral,qwen2_moe,qwen3_moe")
    ap.add_argument("--types", default="F32,Q8_0,Q4_0")
    ap.add_argument("--tokenizers", action="store_true", help="also compare tokenizers (see above)")
    args = ap.parse_args()
    ids = np.random.default_rng(0).integers(3, 380, 64).tolist()
    with tempfile.TemporaryDirectory() as tmp:
        if args.tokenizers:
            compare_tokenizers(Path(tmp))
        for kind in [k for k in args.kinds.split(",") if k]:
            base, overrides = ARCH_CASES.get(kind, (kind, {}))
            # experts 64 wide: whole Q8_0 / Q4_0 blocks (the kinds' 48 would fall back to F16)
            if "moe" in base:
                overrides = {**overrides, "moe_intermediate_size": 64}
            folder = checkpoints.build_checkpoint(base, Path(tmp) / kind, weight_scale=0.1, **overrides)
            ref = transformers_logits(folder, ids)
            for qtype in args.types.split(","):
                path, _ = write_gguf(folder, Path(tmp) / f"{kind}-{qtype}.gguf", qtype)
                ours = np.asarray(llmos.load(str(path), threads=1).logits(ids))
                theirs = llama_cpp_logits(path, ids)
                print(f"{kind:10} {qtype:5} llmos vs llama.cpp: {compare(ours, theirs)} | "
                      f"llama.cpp vs transformers(F32): {compare(theirs, ref)} | "
                      f"llmos vs transformers(F32): {compare(ours, ref)}")


if __name__ == "__main__":
    main()
