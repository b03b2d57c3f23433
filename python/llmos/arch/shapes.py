"""config.json checked against the tensors a checkpoint really has, before anything is allocated.

The core sizes every weight from the config's numbers; a config that claims 10^9 layers or a
hidden size of 10^9 would have it allocate that much before the first tensor is copied. Here
each number is compared with the shapes in the safetensors headers (no tensor data is read),
and a disagreement is a ConfigError naming the config field: the tensors are what is really
there, so the memory the load needs is then no more than the checkpoint holds.
"""

from __future__ import annotations

import dataclasses

from llmos.arch.families import Architecture, Family
from llmos.errors import ConfigError, TensorError
from llmos.io.checkpoint import find

# Architecture attribute -> the config.json key it was read from, where the names differ.
_CONFIG_KEYS = {
    "gpt2": {"hidden_size": "n_embd", "num_layers": "n_layer", "num_heads": "n_head", "num_kv_heads": "n_head",
             "intermediate_size": "n_inner", "max_position_embeddings": "n_positions",
             "head_dim": "n_head"},
}
_DEFAULT_KEYS = {"num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
                 "num_kv_heads": "num_key_value_heads", "expert_intermediate_size": "moe_intermediate_size",
                 "shared_expert_size": "shared_expert_intermediate_size"}
_MOE_KEYS = {"num_experts": "num_local_experts", "expert_intermediate_size": "intermediate_size"}
_CONFIG_KEYS["mixtral"] = {**_DEFAULT_KEYS, **_MOE_KEYS}
_CONFIG_KEYS["olmoe"] = {**_DEFAULT_KEYS, "expert_intermediate_size": "intermediate_size"}


def config_key(family: str, attr: str) -> str:
    """The config.json field an Architecture attribute comes from, for error messages."""
    return _CONFIG_KEYS.get(family, _DEFAULT_KEYS).get(attr, _DEFAULT_KEYS.get(attr, attr))


def _expected(arch: Architecture, role: str, n_parts: int) -> tuple[list[tuple[int, str]], tuple[int, str] | None]:
    """([(rows, attribute) per part], (cols, attribute) or None for a vector) of a weight role."""
    a = arch
    q, kv = a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim
    heads = "head_dim" if a.family != "gpt2" and a.head_dim * a.num_heads != a.hidden_size else "num_heads"
    kind, _, _ = role.partition(".")
    hidden = (a.hidden_size, "hidden_size")
    if role in ("embed", "lm_head"):
        return [(a.vocab_size, "vocab_size")], hidden
    if role == "pos_embed":
        return [(a.max_position_embeddings, "max_position_embeddings")], hidden
    if kind in ("final_norm", "attn_norm", "ffn_norm", "attn_post_norm", "ffn_post_norm") or \
            role in ("o.bias", "down.bias"):
        return [hidden], None
    if kind in ("q_norm", "k_norm"):
        if a.qk_norm_across_heads:  # OLMo 2: one weight over every head's q (k)
            return [(q, heads) if kind == "q_norm" else (kv, "num_kv_heads")], None
        return [(a.head_dim, "head_dim")], None
    cols = hidden if role.endswith(".weight") else None
    if role == "router.weight":
        return [(a.num_experts, "num_experts")], hidden
    if role == "router.bias":
        return [(a.num_experts, "num_experts")], None
    if role == "sinks":
        return [(a.num_heads, "num_heads")], None
    if role == "shared_gate.weight":
        return [(1, "shared_expert_gate")], hidden
    if kind == "experts":  # experts.E.up.weight / experts.E.down.weight
        n = (a.expert_intermediate_size, "expert_intermediate_size")
        if role.endswith(".up.weight"):
            return [n] * 2 if n_parts == 2 else [(2 * n[0], n[1])], cols
        return [hidden], n
    if kind == "up" and a.num_experts:  # the shared expert
        n = a.shared_expert_size
        rows = [(n, "shared_expert_size")] * 2 if n_parts == 2 else [(2 * n, "shared_expert_size")]
        return rows, cols
    if role == "down.weight" and a.num_experts:
        return [hidden], (a.shared_expert_size, "shared_expert_size")
    if kind == "qkv":
        rows = [(q, heads), (kv, "num_kv_heads"), (kv, "num_kv_heads")] if n_parts == 3 else [(q + 2 * kv, heads)]
        return rows, cols
    if kind == "up":
        n = a.intermediate_size
        rows = [(n, "intermediate_size")] * 2 if n_parts == 2 else [((2 if a.gated_mlp else 1) * n, "intermediate_size")]
        return rows, cols
    if role == "o.weight":
        return [hidden], (q, heads)
    if role == "down.weight":
        return [hidden], (a.intermediate_size, "intermediate_size")
    raise AssertionError(f"no expected shape for weight role {role!r}")


def check_against_tensors(config_path: str, family: Family, arch: Architecture, shapes: dict[str, list[int]],
                          locations: dict[str, str], skip=frozenset()) -> None:
    """Raises where `arch` disagrees with the tensors of the checkpoint; `shapes` maps each
    tensor name to its header shape, `locations` to its file. Roles in `skip` ((role, layer)
    pairs: pre-quantized blocks) are not compared.

    Who is at fault: a dimension that no tensor confirms is the config's (ConfigError naming
    the field); one that other tensors confirm makes the odd tensor out the fault
    (TensorError naming it). A tensor that is missing is left to the loader's TensorError,
    except a whole layer: that is the layer count's fault."""
    def config_error(attr: str, what: str) -> ConfigError:
        key = config_key(arch.family, attr)
        return ConfigError(f"{config_path}: field '{key}': {what}", file=config_path, field=key)

    # One layer more than the config says: tensors for it mean the config has too few layers.
    probe = dataclasses.replace(arch, num_layers=arch.num_layers + 1)
    first_of_layer: dict[int, tuple[str, str]] = {}
    for role, layer, parts in family.tensors(probe):
        if layer >= 0 and layer not in first_of_layer:
            first_of_layer[layer] = (role, parts[0][0])
    present = {layer for layer, (role, name) in first_of_layer.items()
               if (role, layer) in skip or find(shapes, name) is not None}
    n = arch.num_layers
    if n in present:
        raise config_error("num_layers", f"{n}, but the checkpoint has tensors for layer {n} too "
                                         f"('{first_of_layer[n][1]}'): the config does not describe these weights")
    missing = next((i for i in range(n) if i not in present), None)
    if 0 in present and missing is not None:
        raise config_error("num_layers", f"{n}, but the checkpoint has no tensors for layer {missing} "
                                         f"('{first_of_layer[missing][1]}'; it has {len(present)} layers)")

    # (attribute, expected, found, tensor, what) for every dimension of every tensor present.
    checks: list[tuple[str, int, int, str, str]] = []
    for role, layer, parts in family.tensors(arch):
        if (role, layer) in skip:
            continue
        found = [find(shapes, name) for name, _ in parts]
        if any(f is None for f in found):
            continue  # the loader names the missing tensor
        rows, cols = _expected(arch, role, len(parts))
        for (_, transpose), (_, tensor), (want_rows, rows_attr) in zip(parts, found, rows):
            shape = shapes[tensor]
            if cols is None:
                if len(shape) == 1:
                    checks.append((rows_attr, want_rows, shape[0], tensor, "entries"))
                continue
            if len(shape) != 2:
                continue  # the loader reports a tensor of the wrong rank
            r, c = (shape[1], shape[0]) if transpose else (shape[0], shape[1])
            checks.append((cols[1], cols[0], c, tensor, "columns"))
            checks.append((rows_attr, want_rows, r, tensor, "rows"))
    confirmed = {attr for attr, want, got, _, _ in checks if want == got}
    for attr, want, got, tensor, what in checks:
        if want == got:
            continue
        if attr in confirmed:
            file = locations.get(tensor, "")
            raise TensorError(f"{file}: '{tensor}': shape {shapes[tensor]} does not fit {arch.family}: "
                              f"{config_key(arch.family, attr)} = {getattr(arch, attr)} gives {want} {what}, "
                              f"as the other tensors have", file=file or None, field=tensor)
        raise config_error(attr, f"{getattr(arch, attr)} gives {want} {what} for '{tensor}', but the tensor "
                                 f"has shape {shapes[tensor]} (and no tensor has {want})")
