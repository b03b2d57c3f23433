"""Training with torch: full fine-tuning, LoRA, and new models from scratch.

The result is a Hugging Face checkpoint folder (config.json, model.safetensors, the tokenizer
files, the chat template, generation_config.json and a README.md card) that ``llmos.load`` runs
in the C++ core, or a registry entry made from that folder. Training runs on CUDA when torch
has it, else on the CPU.

Runs are resumable: with a ``checkpoint_dir``, the trainable weights, optimizer state and step
are written there (to a temp file, then renamed) every ``save_every_s`` seconds and when the run
is interrupted; the same call again continues from there. The checkpoint is removed once the
output is written.
"""

from __future__ import annotations

import copy
import datetime as _dt
import errno
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from llmos.errors import ConfigError, DatasetError, DiskFullError, InvalidInputError, LlmosError
from llmos.adapters.lora import LoraSpec, is_adapter_dir, replace_dir
from llmos.io.config import ConfigReader, read_json
from llmos.io.files import atomic_file
from llmos.registry import operations as registry
from llmos.store.build import refuse_existing
from llmos.store.files import quantized_as
from llmos.runtime.load import checkpoint_dtype
from llmos.store.names import parse_ref
from llmos.store.resolve import resolve
from llmos.text.tokenizer import Tokenizer
from llmos.train.lora import add_lora, merge_lora, save_adapter
from llmos.io.jsonl import read_jsonl
from llmos.train.data import IGNORE, Dataset, Example, load_dataset, read_text, is_text_file

STATE_FILE = "trainer_state.pt"
SCRATCH_TOKENIZER = "tokenizer"  # inside checkpoint_dir: the tokenizer a from-scratch run made

# Files of a checkpoint besides its weights that a trained model keeps from its base: the
# tokenizer, the chat template, and the licence terms the base came with.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json")
CARRIED_FILES = TOKENIZER_FILES + ("generation_config.json",)
CARRIED_PREFIXES = ("LICENSE", "LICENCE", "NOTICE", "USE_POLICY")

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SCRATCH_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

DEFAULT_LR = {"full": 2e-5, "lora": 2e-4, "scratch": 1e-3}


@dataclass
class TrainResult:
    path: str                 # the output folder (the registry entry's folder for a named output)
    ref: str                  # what to pass to llmos.load / llmos eval: the name or the folder
    steps: int
    epochs: int
    train_loss: float | None  # mean loss over the last steps
    eval_loss: float | None
    seconds: float            # training time, summed over the runs a resumed run continues
    tokens: int               # input tokens processed, summed the same way
    adapter: bool = False     # the output is a LoRA adapter folder, not a checkpoint
    model: Any = field(default=None, repr=False)  # the trained torch model (adapters not merged)

    @property
    def eval_perplexity(self) -> float | None:
        return None if self.eval_loss is None else math.exp(self.eval_loss)


def _torch():
    import torch

    return torch


def _quiet_transformers():
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return transformers


def looks_like_path(text: str) -> bool:
    """An output given as a path (vs a registry name), by the rule `registry.resolve` uses."""
    return (os.sep in text or (os.altsep is not None and os.altsep in text) or text.startswith(("~", "."))
            or os.path.isabs(text))


def resolve_model(name_or_path) -> str:
    """The folder of a model given by registry name or path."""

    return resolve(name_or_path)


def _refuse_quantized(base_dir: str, model) -> None:
    """Training needs the float weights: transformers would not read quantized blocks and
    would start from random weights instead."""
    quant = quantized_as(Path(base_dir))
    if quant is not None:
        raise InvalidInputError(
            f"{os.fspath(model)}: the weights are quantized ({quant}); training needs the float weights. Train "
            "the model it was quantized from (`llmos show` lists it under lineage), then quantize the result",
            field="model")


def _refuse_existing_out(out, default_name: str, force: bool) -> None:
    """A registry name that is taken is refused before training starts, unless ``force``."""
    if force or (out is not None and looks_like_path(os.fspath(out))):
        return
    refuse_existing(*parse_ref(out or default_name))


# ---- the training loop --------------------------------------------------------------------------


def _collate(examples: Sequence[Example], pad_id: int, device):
    torch = _torch()
    n = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), n), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), n), dtype=torch.long)
    for i, e in enumerate(examples):
        k = len(e.input_ids)
        ids[i, :k] = torch.tensor(e.input_ids)
        labels[i, :k] = torch.tensor(e.labels)
        mask[i, :k] = 1
    return ids.to(device), labels.to(device), mask.to(device)


def _batch_loss_sum(model, ids, labels, mask):
    """(sum of token losses, number of target tokens): the model's logits at t predict label t+1."""
    torch = _torch()
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    target = labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                             ignore_index=IGNORE, reduction="sum")
    return loss, int((target != IGNORE).sum())


def evaluate_loss(model, dataset: Dataset, *, batch_size: int = 8, pad_id: int = 0, device=None) -> float:
    """Mean loss per target token of ``model`` on ``dataset``."""
    torch = _torch()
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(dataset.examples), batch_size):
            ids, labels, mask = _collate(dataset.examples[i:i + batch_size], pad_id, device)
            s, n = _batch_loss_sum(model, ids, labels, mask)
            total += float(s)
            count += n
    model.train(was_training)
    if count == 0:
        raise DatasetError("the evaluation data has no target tokens")
    return total / count


def _lr_at(step: int, total: int, warmup: int, lr: float) -> float:
    """Linear warm-up, then cosine decay to a tenth of ``lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _as_disk_full(e: BaseException, folder: Path, what: str) -> DiskFullError | None:
    """A DiskFullError for ``e`` when it came from a full disk. Libraries report a failed write
    in their own ways (torch and safetensors as RuntimeError), so the free space decides too."""
    full = isinstance(e, OSError) and e.errno == errno.ENOSPC
    if not full and isinstance(e, (OSError, RuntimeError)):
        with _suppress():
            full = shutil.disk_usage(folder).free < (1 << 20)
    if not full:
        return None
    return DiskFullError(f"{what}: the disk is full; the partial files were removed and what was there before "
                         "is unchanged. Free up space and run the same command again (training resumes from its "
                         "last checkpoint)", file=getattr(e, "filename", None))


def _atomic_torch_save(obj, path: Path) -> None:
    """torch.save through `atomic_file`: a crash or a full disk leaves the previous checkpoint
    whole."""
    torch = _torch()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_file(path) as f:
            torch.save(obj, f)
    except BaseException as e:
        full = _as_disk_full(e, path.parent, f"saving the training checkpoint {path}")
        if full is not None:
            raise full from e
        raise


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], OSError)


@dataclass
class _Run:
    """What the loop needs; `fingerprint` says which run a checkpoint belongs to."""

    epochs: int
    lr: float
    batch_size: int
    seed: int
    warmup: int | None
    weight_decay: float
    max_steps: int | None
    checkpoint_dir: Path | None
    save_every: int | None
    save_every_s: float
    progress: bool
    fingerprint: str
    on_step: Callable[[int, float], None] | None = None


def _fit(model, data: Dataset, run: _Run, *, pad_id: int, eval_data: Dataset | None, device) -> dict:
    """Trains the parameters of ``model`` that require grad. Returns loss figures and counts."""
    torch = _torch()
    from tqdm.auto import tqdm

    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in params if p.ndim >= 2]
    no_decay = [p for n, p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": run.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=run.lr, betas=(0.9, 0.95))
    n = len(data.examples)
    per_epoch = math.ceil(n / run.batch_size)
    total = per_epoch * run.epochs
    if run.max_steps is not None:
        total = min(total, run.max_steps)
    warmup = run.warmup if run.warmup is not None else min(100, max(1, total // 20))
    step = 0
    resumed_losses: list[float] = []
    # Time and tokens of the earlier runs this one resumes: the result counts the whole training.
    earlier_s, earlier_tokens = 0.0, 0
    state_path = run.checkpoint_dir / STATE_FILE if run.checkpoint_dir else None
    if state_path is not None and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state.get("fingerprint") != run.fingerprint:
            raise InvalidInputError(
                f"{run.checkpoint_dir} holds a checkpoint of a different training run (other model, data or "
                "settings); delete it, or train without resuming", field="checkpoint_dir")
        named = dict(params)
        with torch.no_grad():
            for k, v in state["trainable"].items():
                named[k].copy_(v)
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
        resumed_losses = [float(x) for x in state.get("recent_losses", [])]
        earlier_s, earlier_tokens = float(state.get("elapsed_s", 0.0)), int(state.get("tokens", 0))

    def save_state():
        if state_path is None:
            return
        _atomic_torch_save({"fingerprint": run.fingerprint, "step": step, "recent_losses": list(recent),
                            "elapsed_s": earlier_s + time.time() - t0, "tokens": earlier_tokens + tokens,
                            "trainable": {k: p.detach().cpu() for k, p in params},
                            "optimizer": opt.state_dict()}, state_path)

    model.train()
    recent: list[float] = resumed_losses
    tokens = 0
    t0 = time.time()
    last_save = time.time()
    bar = tqdm(total=total, initial=step, unit="step", disable=not run.progress, dynamic_ncols=True,
               desc="training")
    try:
        for epoch in range(step // per_epoch, run.epochs):
            order = torch.randperm(n, generator=torch.Generator().manual_seed(run.seed * 1000 + epoch)).tolist()
            for b in range(per_epoch):
                gstep = epoch * per_epoch + b
                if gstep < step:
                    continue
                if gstep >= total:
                    break
                batch = [data.examples[i] for i in order[b * run.batch_size:(b + 1) * run.batch_size]]
                ids, labels, mask = _collate(batch, pad_id, device)
                for g in opt.param_groups:
                    g["lr"] = _lr_at(gstep, total, warmup, run.lr)
                torch.manual_seed(run.seed * 100003 + gstep)  # dropout, if any, replays on resume
                s, count = _batch_loss_sum(model, ids, labels, mask)
                loss = s / max(1, count)
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                step = gstep + 1
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise LlmosError(f"training diverged at step {step} (loss {value}); lower the learning rate")
                recent = (recent + [value])[-20:]
                tokens += int(mask.sum())
                rate = tokens / max(1e-9, time.time() - t0)
                bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", tok_s=f"{rate:,.0f}", refresh=False)
                bar.update(1)
                if run.on_step is not None:
                    run.on_step(step, value)
                due = (run.save_every and step % run.save_every == 0) or time.time() - last_save >= run.save_every_s
                if due and step < total:
                    save_state()
                    last_save = time.time()
    except KeyboardInterrupt:
        save_state()
        raise
    finally:
        bar.close()
    # The finished state is kept until the output is written: if writing it fails (full disk),
    # the same command again only writes.
    save_state()
    out = {"steps": step, "total_steps": total, "tokens": earlier_tokens + tokens,
           "seconds": earlier_s + time.time() - t0,
           "train_loss": sum(recent) / len(recent) if recent else None, "eval_loss": None}
    if eval_data is not None:
        out["eval_loss"] = evaluate_loss(model, eval_data, batch_size=run.batch_size, pad_id=pad_id, device=device)
    return out


# ---- writing the result -------------------------------------------------------------------------


def _copy_carried(src_dir: str, dst: Path, *, names=CARRIED_FILES) -> None:
    for entry in os.listdir(src_dir):
        src = os.path.join(src_dir, entry)
        if os.path.isfile(src) and (entry in names or entry.upper().startswith(CARRIED_PREFIXES)):
            shutil.copy2(src, dst / entry)
    sub = os.path.join(src_dir, "additional_chat_templates")
    if os.path.isdir(sub):
        shutil.copytree(sub, dst / "additional_chat_templates", dirs_exist_ok=True)


def save_checkpoint_folder(model, out_dir: str | os.PathLike, *, carry_from: str, dtype: str = "float32",
                           card: str | None = None, generation_config: dict | None = None) -> str:
    """Writes ``model`` (a transformers causal LM, adapters already merged) as a checkpoint folder:
    weights in ``dtype``, plus tokenizer, chat template, generation config and licence files from
    ``carry_from``. Written to a temp folder next to ``out_dir``, then renamed into place."""
    torch = _torch()
    _quiet_transformers()
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        target = getattr(torch, dtype)
        to_save = model if next(model.parameters()).dtype == target else copy.deepcopy(model).to(target)
        to_save.config.use_cache = True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            to_save.save_pretrained(str(tmp))
        _copy_carried(carry_from, tmp)
        if generation_config is not None:
            (tmp / "generation_config.json").write_text(json.dumps(generation_config, indent=2) + "\n",
                                                        encoding="utf-8")
        if card:
            (tmp / "README.md").write_text(card, encoding="utf-8")
        replace_dir(tmp, out)
    except Exception as e:
        full = _as_disk_full(e, out.parent, f"writing the trained model to {out}")
        if full is not None:
            raise full from e
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(out)


def _publish(folder: str, name: str, lineage: dict, force: bool = False) -> tuple[str, str]:
    """Imports ``folder`` into the registry as ``name``; returns (entry folder, ref)."""

    import inspect

    kwargs = {}
    # The registry records lineage from the manifest of the folder it imports; a trained
    # folder has none, so pass the training step where the registry accepts it.
    if "lineage" in inspect.signature(registry.import_model).parameters:
        kwargs["lineage"] = [lineage]
    entry = registry.import_model(folder, name=name, force=force, **kwargs)
    return entry.path, entry.ref


def _card(title: str, lines: list[str]) -> str:
    return f"# {title}\n\n" + "\n".join(f"- {line}" for line in lines) + "\n"


# ---- public API -----------------------------------------------------------------------------------


def _pick_device(device: str | None):
    torch = _torch()
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def _load_data(data, tokenizer, max_seq_len: int, what: str) -> Dataset:
    paths = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    return load_dataset(paths, tokenizer, max_seq_len)


def _fingerprint(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _quick_identity(folder: str) -> dict:
    """Which base a checkpoint belongs to, cheaply (sizes and config; no hashing of weights)."""
    files = {}
    for n in sorted(os.listdir(folder)):
        p = os.path.join(folder, n)
        if os.path.isfile(p) and (n.endswith(".safetensors") or n == "config.json"):
            files[n] = os.path.getsize(p)
    with open(os.path.join(folder, "config.json"), "rb") as f:
        files["config.sha256"] = hashlib.sha256(f.read()).hexdigest()
    return files


def _check_common(epochs, batch_size, max_seq_len, lr):
    for name, v in (("epochs", epochs), ("batch_size", batch_size), ("max_seq_len", max_seq_len)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InvalidInputError(f"{name}: expected an integer >= 1, got {v!r}", field=name)
    if lr is not None and (not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0):
        raise InvalidInputError(f"lr: expected a number > 0, got {lr!r}", field="lr")


def _finish(out: str | None, default_name: str, build: Callable[[str], str], lineage: dict,
            checkpoint_dir: Path | None, force: bool = False) -> tuple[str, str]:
    """Writes the output through ``build(folder)``: to the folder ``out`` when it is a path, else
    into the registry as ``out`` (or ``default_name``)."""
    if out is not None and looks_like_path(os.fspath(out)):
        folder = build(os.path.expanduser(os.fspath(out)))
        return folder, folder
    name = out or default_name

    parse_ref(name)  # a bad name fails before anything is written
    staging_root = checkpoint_dir if checkpoint_dir is not None else Path(tempfile.mkdtemp(prefix="llmos-train-"))
    staging = staging_root / "output"
    try:
        build(str(staging))
        return _publish(str(staging), name, lineage, force)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if checkpoint_dir is None:
            shutil.rmtree(staging_root, ignore_errors=True)


def _done(checkpoint_dir: Path | None) -> None:
    if checkpoint_dir is not None:
        with _suppress():
            (checkpoint_dir / STATE_FILE).unlink()
        shutil.rmtree(checkpoint_dir / SCRATCH_TOKENIZER, ignore_errors=True)
        with _suppress():
            checkpoint_dir.rmdir()


def train(model: str, data, *, out: str | None = None, lora: LoraSpec | str | None = None,
          keep_adapter: bool = False, epochs: int = 1, lr: float | None = None, max_seq_len: int = 512,
          batch_size: int = 8, eval_data=None, checkpoint_dir: str | None = None, save_every: int | None = None,
          save_every_s: float = 300.0, max_steps: int | None = None, seed: int = 0, device: str | None = None,
          save_dtype: str | None = None, warmup: int | None = None, weight_decay: float = 0.0,
          progress: bool = True, on_step: Callable[[int, float], None] | None = None,
          force: bool = False) -> TrainResult:
    """Fine-tunes ``model`` (registry name or folder) on ``data`` (.txt / .jsonl file or files).

    lora: a LoraSpec or ``"r=16,alpha=32"`` for LoRA (else every weight is trained); with
    ``keep_adapter`` the output is an adapter folder (see llmos.adapters.lora), otherwise the adapter is
    merged into the weights. out: a folder path, or a registry name (default: NAME-ft / NAME-lora).
    eval_data: file(s) whose loss is reported after training. save_dtype: dtype of the written
    weights (default: the base's). checkpoint_dir: where resumable state goes (none if None).
    force: replace the registry entry ``out`` if it exists (else it is refused before training).
    A quantized base is refused: train its float original.
    """
    torch = _torch()
    transformers = _quiet_transformers()

    _check_common(epochs, batch_size, max_seq_len, lr)
    spec = LoraSpec.parse(lora) if isinstance(lora, str) else lora
    if keep_adapter and spec is None:
        raise InvalidInputError("keep_adapter needs LoRA (lora='r=16,alpha=32')", field="keep_adapter")
    if keep_adapter and out is not None and not looks_like_path(os.fspath(out)):
        raise InvalidInputError("an adapter is written to a folder: give out as a path (e.g. ./my-adapter)",
                                field="out")
    base_dir = resolve_model(model)
    if is_adapter_dir(base_dir):
        raise InvalidInputError(f"{base_dir} is a LoRA adapter, not a model: fine-tune its base model (the one "
                                "its adapter_config.json names), or load it with the adapter merged in",
                                field="model")
    _refuse_quantized(base_dir, model)
    default = f"{_registry_stem(base_dir, os.fspath(model))}-{'lora' if spec else 'ft'}"
    if not keep_adapter:
        _refuse_existing_out(out, default, force)
    tok = Tokenizer.from_dir(base_dir)
    dataset = _load_data(data, tok, max_seq_len, "data")
    evalset = _load_data(eval_data, tok, max_seq_len, "eval") if eval_data is not None else None
    mode = "lora" if spec else "full"
    lr = lr if lr is not None else DEFAULT_LR[mode]
    dev = _pick_device(device)
    ckpt = Path(os.path.expanduser(checkpoint_dir)) if checkpoint_dir else None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = transformers.AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    # From config.json, not net.config: loading in float32 rewrites the latter.
    base_dtype = checkpoint_dtype(ConfigReader(read_json(os.path.join(base_dir, "config.json")),
                                               os.path.join(base_dir, "config.json")))
    net.config.use_cache = False
    if spec:
        add_lora(net, spec)
    net.to(dev)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    run = _Run(epochs, lr, batch_size, seed, warmup, weight_decay, max_steps, ckpt, save_every, save_every_s,
               progress, _fingerprint(base=_quick_identity(base_dir), data=dataset.sha256, mode=mode,
                                      lora=spec and (spec.r, spec.alpha, spec.targets), lr=lr, epochs=epochs,
                                      batch=batch_size, seq=max_seq_len, seed=seed, max_steps=max_steps,
                                      warmup=warmup, wd=weight_decay), on_step)
    stats = _fit(net, dataset, run, pad_id=pad, eval_data=evalset, device=dev)

    base_name = os.fspath(model)
    method = f"LoRA r={spec.r} alpha={spec.alpha:g}" if spec else "full fine-tuning"
    lineage = {"op": "train", "from": base_name, "method": method, "data": [os.path.basename(p) for p in dataset.files],
               "data_sha256": dataset.sha256, "steps": stats["steps"], "epochs": epochs, "lr": lr,
               "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    card = _card(f"Fine-tuned from {base_name}", [
        f"method: {method}, {epochs} epoch(s), {stats['steps']} steps, lr {lr:g}, batch {batch_size}, "
        f"max_seq_len {max_seq_len}",
        f"data: {', '.join(os.path.basename(p) for p in dataset.files)} (sha256 {dataset.sha256[:16]}...)",
        f"final training loss: {stats['train_loss']:.4f}" if stats["train_loss"] is not None else "no steps run",
    ] + ([f"held-out loss: {stats['eval_loss']:.4f} (perplexity {math.exp(stats['eval_loss']):.2f})"]
         if stats["eval_loss"] is not None else []) + ["trained with llmos train"])

    result_model = net
    if keep_adapter:
        default_out = os.path.join(".", f"{os.path.basename(base_dir.rstrip(os.sep))}-adapter")
        target = os.path.expanduser(os.fspath(out or default_out))
        save_adapter(net, spec, base_dir, target, base_name=base_name)
        path, ref = target, target
    else:
        def build(folder: str) -> str:
            merged_net = net
            if spec:
                merged_net = copy.deepcopy(net).cpu()
                merge_lora(merged_net)
            return save_checkpoint_folder(merged_net.cpu() if merged_net is net else merged_net, folder,
                                          carry_from=base_dir, dtype=save_dtype or base_dtype, card=card)

        path, ref = _finish(out, default, build, lineage, ckpt, force)
    _done(ckpt)
    return TrainResult(path=path, ref=ref, steps=stats["steps"], epochs=epochs, train_loss=stats["train_loss"],
                       eval_loss=stats["eval_loss"], seconds=stats["seconds"], tokens=stats["tokens"],
                       adapter=keep_adapter, model=result_model)


def _registry_stem(folder: str, given: str) -> str:
    import re

    base = given.split(":", 1)[0] if not looks_like_path(given) else os.path.basename(folder.rstrip(os.sep))
    return re.sub(r"[^a-z0-9._-]+", "-", base.lower()).strip("-._")[:60] or "model"


# ---- from scratch ---------------------------------------------------------------------------------


def _corpus_texts(paths: Sequence[str]):
    """The text in training files, for tokenizer training (chat and prompt/completion content too)."""
    for p in paths:
        if is_text_file(p):
            text = read_text(p)
            for i in range(0, len(text), 1 << 16):  # chunks keep the trainer's memory flat
                yield text[i:i + (1 << 16)]
            continue
        for _, obj in read_jsonl(p):
            if isinstance(obj.get("text"), str):
                yield obj["text"]
            for key in ("prompt", "completion"):
                if isinstance(obj.get(key), str):
                    yield obj[key]
            for m in obj.get("messages") or []:
                if isinstance(m, dict) and isinstance(m.get("content"), str):
                    yield m["content"]


def train_tokenizer(files, vocab_size: int, out_dir: str, *, chat_template: str = CHATML_TEMPLATE,
                    model_max_length: int | None = None) -> str:
    """Trains a byte-level BPE tokenizer (GPT-2 style: no unknown tokens, bytes as the base
    alphabet) of ``vocab_size`` tokens on ``files`` and saves it with a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    transformers = _quiet_transformers()
    paths = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    paths = [os.fspath(p) for p in paths]
    for p in paths:
        if not os.path.isfile(p):
            raise DatasetError(f"{p}: no such data file (--tokenizer-from)", file=p)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(SCRATCH_SPECIAL_TOKENS) + 1:
        raise InvalidInputError(f"vocab_size: a byte-level tokenizer needs more than {len(alphabet) + 3} tokens, "
                                f"got {vocab_size}", field="vocab_size")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SCRATCH_SPECIAL_TOKENS),
                                  initial_alphabet=alphabet, min_frequency=2, show_progress=False)
    tok.train_from_iterator(_corpus_texts(paths), trainer=trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        unk_token=None, model_max_length=model_max_length or (1 << 30))
    fast.chat_template = chat_template
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    return str(out)


_SCRATCH_DEFAULTS = dict(model_type="llama", hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                         num_attention_heads=4, max_position_embeddings=512, rms_norm_eps=1e-5,
                         rope_theta=10000.0, tie_word_embeddings=True, vocab_size=4096,
                         initializer_range=0.02)


def read_scratch_config(path: str) -> tuple[dict, dict]:
    """(model config fields, generation config) from a small.json. Fields not given take
    `_SCRATCH_DEFAULTS`; an optional "generation" object becomes generation_config.json."""

    raw = read_json(os.fspath(path))
    cfg = dict(raw)
    gen = cfg.pop("generation", None) or {}
    if not isinstance(gen, dict):
        raise ConfigError(f"{path}: field 'generation': expected an object", file=os.fspath(path), field="generation")
    if cfg.get("model_type", "llama") != "llama":
        raise ConfigError(f"{path}: field 'model_type': --from-scratch builds Llama models, got "
                          f"{cfg.get('model_type')!r}", file=os.fspath(path), field="model_type")
    merged = {**_SCRATCH_DEFAULTS, **cfg}
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "max_position_embeddings", "vocab_size"):
        v = merged[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{path}: field '{key}': expected an integer >= 1, got {v!r}", file=os.fspath(path),
                              field=key)
    if merged["hidden_size"] % merged["num_attention_heads"]:
        raise ConfigError(f"{path}: field 'hidden_size': {merged['hidden_size']} is not divisible by "
                          f"num_attention_heads {merged['num_attention_heads']}", file=os.fspath(path),
                          field="hidden_size")
    return merged, gen


def train_from_scratch(config: str, tokenizer_from, data, *, out: str | None = None, epochs: int = 1,
                       lr: float | None = None, max_seq_len: int = 256, batch_size: int = 16, eval_data=None,
                       checkpoint_dir: str | None = None, save_every: int | None = None,
                       save_every_s: float = 300.0, max_steps: int | None = None, seed: int = 0,
                       device: str | None = None, save_dtype: str = "float32", warmup: int | None = None,
                       weight_decay: float = 0.1, progress: bool = True,
                       on_step: Callable[[int, float], None] | None = None, force: bool = False) -> TrainResult:
    """Trains a new byte-level BPE tokenizer on ``tokenizer_from`` and a new Llama model of the
    architecture in ``config`` (a JSON file of LlamaConfig fields) on ``data``."""
    torch = _torch()
    transformers = _quiet_transformers()

    _check_common(epochs, batch_size, max_seq_len, lr)
    _refuse_existing_out(out, "scratch", force)
    fields, gen = read_scratch_config(config)
    if max_seq_len > fields["max_position_embeddings"]:
        raise InvalidInputError(f"max_seq_len {max_seq_len} exceeds the model's max_position_embeddings "
                                f"{fields['max_position_embeddings']}", field="max_seq_len")
    ckpt = Path(os.path.expanduser(checkpoint_dir)) if checkpoint_dir else None
    tmp_tok = None
    if ckpt is not None:
        tok_dir = ckpt / SCRATCH_TOKENIZER
        if not (tok_dir / "tokenizer.json").is_file():  # a resumed run keeps the tokenizer it began with
            train_tokenizer(tokenizer_from, fields["vocab_size"], str(ckpt / ".tokenizer-new"),
                            model_max_length=fields["max_position_embeddings"])
            replace_dir(ckpt / ".tokenizer-new", tok_dir)
    else:
        tmp_tok = tempfile.mkdtemp(prefix="llmos-tokenizer-")
        tok_dir = Path(train_tokenizer(tokenizer_from, fields["vocab_size"], tmp_tok,
                                       model_max_length=fields["max_position_embeddings"]))
    try:
        tok = Tokenizer.from_dir(tok_dir)
        eos = tok.eos_token_id
        im_end = tok.token_to_id("<|im_end|>")
        fields = {**fields, "vocab_size": len(tok), "bos_token_id": tok.bos_token_id, "eos_token_id": eos,
                  "pad_token_id": tok.pad_token_id}
        dataset = _load_data(data, tok, max_seq_len, "data")
        evalset = _load_data(eval_data, tok, max_seq_len, "eval") if eval_data is not None else None
        lr = lr if lr is not None else DEFAULT_LR["scratch"]
        dev = _pick_device(device)
        torch.manual_seed(seed)
        cfg = transformers.LlamaConfig(**{k: v for k, v in fields.items() if k != "model_type"})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = transformers.LlamaForCausalLM(cfg)
        net.config.use_cache = False
        net.to(dev)
        n_params = sum(p.numel() for p in net.parameters())
        run = _Run(epochs, lr, batch_size, seed, warmup, weight_decay, max_steps, ckpt, save_every, save_every_s,
                   progress, _fingerprint(scratch=fields, data=dataset.sha256, lr=lr, epochs=epochs,
                                          batch=batch_size, seq=max_seq_len, seed=seed, max_steps=max_steps,
                                          warmup=warmup, wd=weight_decay,
                                          tokenizer=hashlib.sha256((tok_dir / "tokenizer.json").read_bytes())
                                          .hexdigest()), on_step)
        stats = _fit(net, dataset, run, pad_id=tok.pad_token_id or 0, eval_data=evalset, device=dev)
        eos_ids = [eos] + ([im_end] if im_end is not None else [])  # ends a text, ends a chat turn
        generation = {"bos_token_id": tok.bos_token_id, "eos_token_id": eos_ids,
                      "pad_token_id": tok.pad_token_id, **gen}
        data_names = [os.path.basename(p) for p in dataset.files]
        lineage = {"op": "train-from-scratch", "config": fields, "data": data_names,
                   "data_sha256": dataset.sha256, "steps": stats["steps"], "epochs": epochs, "lr": lr,
                   "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        card = _card("A small Llama model trained from scratch with llmos", [
            f"{n_params / 1e6:.2f}M parameters: {fields['num_hidden_layers']} layers, hidden {fields['hidden_size']}, "
            f"{fields['num_attention_heads']} heads, byte-level BPE vocabulary of {len(tok)}",
            f"data: {', '.join(data_names)} (sha256 {dataset.sha256[:16]}...), {dataset.n_tokens:,} tokens",
            f"{epochs} epoch(s), {stats['steps']} steps, lr {lr:g}, batch {batch_size} x {max_seq_len} tokens",
            f"final training loss: {stats['train_loss']:.4f}" if stats["train_loss"] is not None else "no steps run",
        ] + ([f"held-out loss: {stats['eval_loss']:.4f} (perplexity {math.exp(stats['eval_loss']):.2f})"]
             if stats["eval_loss"] is not None else []))

        def build(folder: str) -> str:
            return save_checkpoint_folder(net.cpu(), folder, carry_from=str(tok_dir), dtype=save_dtype, card=card,
                                          generation_config=generation)

        path, ref = _finish(out, "scratch", build, lineage, ckpt, force)
    finally:
        if tmp_tok is not None:
            shutil.rmtree(tmp_tok, ignore_errors=True)
    _done(ckpt)
    return TrainResult(path=path, ref=ref, steps=stats["steps"], epochs=epochs, train_loss=stats["train_loss"],
                       eval_loss=stats["eval_loss"], seconds=stats["seconds"], tokens=stats["tokens"], model=net)
