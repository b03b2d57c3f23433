"""Bad checkpoints and bad inputs at the model level raise the right ``llmos.errors`` class.

Every damaged checkpoint is a private copy (``tmp_checkpoint``) of a tiny ``llama`` checkpoint
(untied, so ``lm_head.weight`` exists) built by :mod:`checkpoints`.  Messages must name the
offending file / tensor / field / value, as the contract in ``llmos/errors.py`` says.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest


from checkpoints import KINDS  # noqa: E402

KIND = "llama"
VOCAB = KINDS[KIND].config["vocab_size"]
CTX = KINDS[KIND].config["max_position_embeddings"]
SUPPORTED = ["gpt2", "llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2"]
THREADS = int(os.environ.get("LLMOS_TEST_THREADS", "1"))


def load(llmos, path, **kw):
    kw.setdefault("threads", THREADS)
    return llmos.load(str(path), **kw)


def raises(llmos, cls_name, *names):
    """pytest.raises for ``llmos.errors.<cls_name>`` that then checks each of ``names`` is in the message."""
    cls = getattr(llmos.errors, cls_name)

    class _Ctx:
        def __enter__(self):
            self._cm = pytest.raises(cls)
            self.info = self._cm.__enter__()
            return self.info

        def __exit__(self, *exc):
            suppressed = self._cm.__exit__(*exc)
            if not suppressed:  # a different exception: let it propagate as is
                return False
            msg = str(self.info.value)
            for n in names:
                assert str(n) in msg, f"{cls_name} message does not name {n!r}: {msg!r}"
            return suppressed

    return _Ctx()


def edit_json(path: Path, fn) -> None:
    """``fn`` edits the loaded JSON object in place (its return value is ignored)."""
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data, indent=2))


def rewrite_tensors(file: Path, fn) -> None:
    """Load a .safetensors file with torch, let ``fn`` edit the dict, save it back."""
    from safetensors.torch import load_file, save_file

    tensors = dict(load_file(str(file)))
    fn(tensors)
    save_file(tensors, str(file), metadata={"format": "pt"})


@pytest.fixture(scope="module")
def model(llmos, checkpoint):
    return load(llmos, checkpoint(KIND))


# ------------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------------


def test_missing_directory(llmos, tmp_path):
    with raises(llmos, "ModelFileError", "does-not-exist"):
        load(llmos, tmp_path / "does-not-exist")


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "tokenizer.json"])
def test_missing_file(llmos, tmp_checkpoint, name):
    path = tmp_checkpoint(KIND)
    (path / name).unlink()
    with raises(llmos, "ModelFileError", name if name != "model.safetensors" else "safetensors"):
        load(llmos, path)


def test_missing_shard(llmos, tmp_checkpoint):
    path = tmp_checkpoint(KIND, sharded=True)
    shards = sorted(path.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 2
    shards[-1].unlink()
    with raises(llmos, "ModelFileError", shards[-1].name):
        load(llmos, path)


def test_unknown_model_type_lists_supported(llmos, tmp_checkpoint):
    path = tmp_checkpoint(KIND)
    edit_json(path / "config.json", lambda c: c.update(model_type="frobnicator", architectures=["FrobForCausalLM"]))
    with raises(llmos, "UnsupportedModelError", "frobnicator", *SUPPORTED):
        load(llmos, path)


def test_config_missing_required_field(llmos, tmp_checkpoint):
    path = tmp_checkpoint(KIND)
    edit_json(path / "config.json", lambda c: c.pop("hidden_size"))
    with raises(llmos, "ConfigError", "hidden_size"):
        load(llmos, path)


def test_config_not_json(llmos, tmp_checkpoint):
    path = tmp_checkpoint(KIND)
    (path / "config.json").write_text('{"model_type": "llama", "hidden_size": 64,,}')
    with raises(llmos, "ConfigError", "config.json"):
        load(llmos, path)


# ------------------------------------------------------------------------------------------------
# tensors
# ------------------------------------------------------------------------------------------------

MISSING = "model.layers.1.self_attn.k_proj.weight"
RESHAPED = "model.layers.0.mlp.down_proj.weight"


def test_tensor_missing(llmos, tmp_checkpoint):
    path = tmp_checkpoint(KIND)
    rewrite_tensors(path / "model.safetensors", lambda t: t.pop(MISSING))
    with raises(llmos, "TensorError", MISSING, "model.safetensors"):
        load(llmos, path)


def test_lm_head_missing_in_untied_model(llmos, tmp_checkpoint):
    path = tmp_checkpoint(KIND)
    rewrite_tensors(path / "model.safetensors", lambda t: t.pop("lm_head.weight"))
    with raises(llmos, "TensorError", "lm_head.weight"):
        load(llmos, path)


def test_tensor_wrong_shape(llmos, tmp_checkpoint):
    import torch

    path = tmp_checkpoint(KIND)

    def damage(t):
        rows, cols = t[RESHAPED].shape
        t[RESHAPED] = torch.zeros(rows, cols - 1)

    rewrite_tensors(path / "model.safetensors", damage)
    with raises(llmos, "TensorError", RESHAPED, "model.safetensors"):
        load(llmos, path)


def test_tensor_unusable_dtype(llmos, tmp_checkpoint):
    import torch

    path = tmp_checkpoint(KIND)

    def damage(t):
        t[RESHAPED] = torch.zeros(t[RESHAPED].shape, dtype=torch.int32)

    rewrite_tensors(path / "model.safetensors", damage)
    with raises(llmos, "TensorError", RESHAPED):
        load(llmos, path)


def test_truncated_bf16_safetensors(llmos, tmp_checkpoint):
    """The header claims bf16 tensors whose bytes lie past the end of the (truncated) file."""
    path = tmp_checkpoint(KIND, "bfloat16")
    f = path / "model.safetensors"
    header = json.loads(f.read_bytes()[8: 8 + int.from_bytes(f.read_bytes()[:8], "little")])
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16"}
    size = f.stat().st_size
    with open(f, "r+b") as fh:
        fh.truncate(size // 2)
    with raises(llmos, "SafetensorsError", "model.safetensors"):
        load(llmos, path)


def test_corrupt_safetensors_header(llmos, tmp_checkpoint):
    path = tmp_checkpoint(KIND)
    f = path / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[:8] = (1 << 40).to_bytes(8, "little")  # header length far beyond the file
    f.write_bytes(bytes(data))
    with raises(llmos, "SafetensorsError", "model.safetensors"):
        load(llmos, path)


def test_invalid_dtype_argument(llmos, checkpoint):
    with raises(llmos, "InvalidInputError", "int8"):
        load(llmos, checkpoint(KIND), dtype="int8")


# ------------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-1, VOCAB])
def test_token_id_out_of_range_logits(llmos, model, bad):
    with raises(llmos, "InvalidInputError", bad):
        model.logits([5, 6, bad, 7])


@pytest.mark.parametrize("bad", [-1, VOCAB])
def test_token_id_out_of_range_generate(llmos, model, bad):
    with raises(llmos, "InvalidInputError", bad):
        model.generate([5, bad], max_new_tokens=2)
    with raises(llmos, "InvalidInputError", bad):
        model.generate([[5, 6], [7, bad]], max_new_tokens=2)


def test_prompt_longer_than_context(llmos, model):
    ids = [7] * (CTX + 1)
    with raises(llmos, "ContextLengthError", CTX):
        model.logits(ids)
    with raises(llmos, "ContextLengthError", CTX):
        model.generate(ids, max_new_tokens=1)


def test_prompt_plus_new_tokens_exceed_context(llmos, model):
    ids = [7] * (CTX - 56)
    with raises(llmos, "ContextLengthError", CTX):
        model.generate(ids, max_new_tokens=100)
    gen = model.generate(ids, max_new_tokens=56, do_sample=False)  # exactly fills the context
    assert len(gen.token_ids) == 56 and gen.finish_reason == "length"


def test_context_errors_are_invalid_input(llmos):
    assert issubclass(llmos.errors.ContextLengthError, llmos.errors.InvalidInputError)
    assert issubclass(llmos.errors.InvalidInputError, ValueError)


# ------------------------------------------------------------------------------------------------
# chat templates
# ------------------------------------------------------------------------------------------------

MESSAGES = [{"role": "user", "content": "hello"}]


def _with_template(tmp_checkpoint, template):
    path = tmp_checkpoint(KIND)

    def set_template(c):
        if template is None:
            c.pop("chat_template", None)
        else:
            c["chat_template"] = template

    edit_json(path / "tokenizer_config.json", set_template)
    assert not (path / "chat_template.jinja").exists()
    return path


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os.system('touch {marker}') }}",
        "{% for m in messages %}{{ m.__class__.__base__.__subclasses__() }}{% endfor %}",
    ],
    ids=["str-mro", "cycler-globals", "message-class"],
)
def test_chat_template_cannot_reach_python_internals(llmos, tmp_checkpoint, tmp_path, template):
    marker = tmp_path / "pwned"
    path = _with_template(tmp_checkpoint, template.replace("{marker}", str(marker)))
    m = load(llmos, path)
    with pytest.raises(llmos.errors.ChatTemplateError):
        m.chat(MESSAGES, max_new_tokens=1)
    assert not marker.exists()


def test_chat_template_raise_exception(llmos, tmp_checkpoint):
    path = _with_template(tmp_checkpoint, "{{ raise_exception('roles must alternate') }}")
    m = load(llmos, path)
    with raises(llmos, "ChatTemplateError", "roles must alternate"):
        m.chat(MESSAGES, max_new_tokens=1)


def test_chat_template_missing(llmos, tmp_checkpoint):
    path = _with_template(tmp_checkpoint, None)
    m = load(llmos, path)
    with pytest.raises(llmos.errors.ChatTemplateError):
        m.chat(MESSAGES, max_new_tokens=1)
