"""Quantization names: "int8", "int4", "int4-asym", with an optional group size suffix
("int4-g64", "int8-g128"). Values match QuantType in cpp/quant/qformat.h."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidInputError

TYPES = {"int8": 1, "int4": 2, "int4-asym": 3}
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
    # The embedding and LM head stay at int8 under int4, as llama.cpp keeps its output matrix
    # at higher precision: the logits are the most sensitive product.
    name = base if group == 32 else f"{base}-g{group}"
    return QuantChoice(name=name, type=TYPES[base], group=group, head_type=TYPES["int8"])
