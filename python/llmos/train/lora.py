"""LoRA on a torch model: adding adapters to its linear layers, merging them in, and saving
them in llmos's adapter format (llmos/adapters/lora.py, which also merges them without torch)."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

from llmos.adapters.lora import ADAPTER_CONFIG, ADAPTER_FORMAT, ADAPTER_WEIGHTS, LoraSpec, base_identity, replace_dir
from llmos.errors import InvalidInputError


def _torch():
    import torch

    return torch


def _is_conv1d(module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def _lora_module_class():
    torch = _torch()
    nn = torch.nn

    class LoraLinear(nn.Module):
        """base(x) + scale * B(A(x)), with base frozen; B starts at zero so training starts from
        the base model exactly."""

        def __init__(self, base, r: int, scale: float):
            super().__init__()
            self.base = base
            conv = _is_conv1d(base)
            in_f, out_f = (base.weight.shape[0], base.weight.shape[1]) if conv else (base.in_features,
                                                                                     base.out_features)
            self.conv1d = conv
            self.scale = scale
            self.lora_A = nn.Parameter(torch.empty(r, in_f, dtype=torch.float32, device=base.weight.device))
            self.lora_B = nn.Parameter(torch.zeros(out_f, r, dtype=torch.float32, device=base.weight.device))
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            for p in self.base.parameters():
                p.requires_grad_(False)

        def forward(self, x):
            delta = (x.to(self.lora_A.dtype) @ self.lora_A.t()) @ self.lora_B.t()
            return self.base(x) + (delta * self.scale).to(x.dtype)

        def delta_weight(self):
            """The change to the base weight, in the base weight's layout."""
            d = (self.lora_B @ self.lora_A) * self.scale
            return d.t() if self.conv1d else d

    return LoraLinear


def add_lora(model, spec: LoraSpec) -> list[str]:
    """Freezes ``model`` and wraps every target projection (not the output head) with LoRA.
    Returns the adapted module names."""
    LoraLinear = _lora_module_class()
    torch = _torch()
    for p in model.parameters():
        p.requires_grad_(False)
    head = model.get_output_embeddings()
    found = []
    for name, module in list(model.named_modules()):
        leaf = name.rsplit(".", 1)[-1]
        if leaf not in spec.targets or module is head:
            continue
        if not (isinstance(module, torch.nn.Linear) or _is_conv1d(module)):
            continue
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        setattr(parent, leaf, LoraLinear(module, spec.r, spec.scale))
        found.append(name)
    if not found:
        raise InvalidInputError(f"--lora: no module named {', '.join(spec.targets)} in this model",
                                field="lora")
    return found


def lora_modules(model) -> dict:
    return {name: m for name, m in model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base")}


def merge_lora(model) -> None:
    """Folds every adapter into its base weight and puts the plain module back."""
    torch = _torch()
    with torch.no_grad():
        for name, m in lora_modules(model).items():
            m.base.weight.add_(m.delta_weight().to(m.base.weight.dtype))
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], m.base)


def save_adapter(model, spec: LoraSpec, base_dir: str, out_dir: str, *, base_name: str | None = None,
                 identity: dict | None = None) -> str:
    """Writes the adapter of ``model`` (wrapped by `add_lora`) to ``out_dir`` (atomically)."""
    from safetensors.torch import save_file

    tensors = {}
    for name, m in lora_modules(model).items():
        tensors[f"{name}.lora_A.weight"] = m.lora_A.detach().float().cpu().contiguous()
        tensors[f"{name}.lora_B.weight"] = m.lora_B.detach().float().cpu().contiguous()
    config = {
        "format": ADAPTER_FORMAT, "version": 1, "r": spec.r, "lora_alpha": spec.alpha,
        "target_modules": sorted({n.rsplit(".", 1)[-1] for n in lora_modules(model)}),
        "modules": sorted(lora_modules(model)),
        # GPT-2's Conv1D stores weights as [in, out]: their delta is merged transposed.
        "transposed_modules": sorted(n for n, m in lora_modules(model).items() if m.conv1d),
        "base_model": {"name_or_path": base_name or os.path.abspath(base_dir), "path": os.path.abspath(base_dir),
                       **(identity or base_identity(base_dir))},
    }
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(out)
