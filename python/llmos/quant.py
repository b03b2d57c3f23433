"""Quantization names: "int8", "int4", "int4-asym", with an optional group size suffix
("int4-g64", "int8-g128"). Values match QuantType in cpp/quant/qformat.h; int6 (Q6) is
only used for the embedding and LM head under int4, not offered for the layers."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidInputError

TYPES = {"int8": 1, "int4": 2, "int4-asym": 3}
Q6 = 4  # QuantType::Q6: 6-bit codes, the embedding / LM head of int4 models
GROUPS = (32, 64, 128)


@dataclass(frozen=True)
class QuantChoice:
    name: str        # canonical, e.g. "int4-g64"
    type: int        # QuantType of the layers
    group: int
    head_type: int   # QuantType of the embedding and LM head

    @property
    def base(self) -> str:
        return next(k for k, v in TYPES.items() if v == self.type)


def parse_quant(quant: str | None) -> QuantChoice | None:
    if quant is None or quant in ("none", "float"):
        return None
    m = re.fullmatch(r"(int8|int4|int4-asym)(?:-g(\d+))?", str(quant))
    if not m or (m.group(2) and int(m.group(2)) not in GROUPS):
        raise InvalidInputError(
            f"quant: expected int8, int4 or int4-asym, optionally with -g32/-g64/-g128, got {quant!r}", field="quant")
    base, group = m.group(1), int(m.group(2) or 32)
    # The embedding and LM head get 6 bits under int4 (int8 under int8), as llama.cpp keeps
    # its output matrix at Q6_K under Q4_0 (Q8_0 where the width is not a multiple of 256):
    # the logits are the most sensitive product. At 6.5 bits per weight the head, the
    # largest matrix of small models, reads 24% fewer bytes per token than at int8.
    name = base if group == 32 else f"{base}-g{group}"
    head = TYPES["int8"] if base == "int8" else Q6
    return QuantChoice(name=name, type=TYPES[base], group=group, head_type=head)
