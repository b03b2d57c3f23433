"""Quantization names: "int8", "int4", "int4-asym", with an optional group size suffix
("int4-g64", "int8-g128") and an optional "-h6" that stores the embedding / LM head as
int6 (Q6) instead of int8 ("int4-h6"). The formats are the core's QuantType
(cpp/quant/qformat.h); int6 is offered for the head only."""

from __future__ import annotations

import re
from dataclasses import dataclass

from llmos._core import QuantType
from llmos.errors import InvalidInputError

TYPES = {"int8": QuantType.Q8, "int4": QuantType.Q4, "int4-asym": QuantType.Q4Asym}
GROUPS = (32, 64, 128)


@dataclass(frozen=True)
class QuantChoice:
    name: str        # canonical, e.g. "int4-g64"
    type: QuantType         # of the layers
    group: int
    head_type: QuantType | None  # of the embedding and LM head; None: as the checkpoint stores them

    @property
    def base(self) -> str:
        return next(k for k, v in TYPES.items() if v == self.type)


def parse_quant(quant: str | None) -> QuantChoice | None:
    if quant is None or quant in ("none", "float"):
        return None
    m = re.fullmatch(r"(int8|int4|int4-asym)(?:-g(\d+))?(-h6)?", str(quant))
    if not m or (m.group(2) and int(m.group(2)) not in GROUPS):
        raise InvalidInputError(
            f"quant: expected int8, int4 or int4-asym, optionally with -g32/-g64/-g128 and -h6, got {quant!r}",
            field="quant")
    base, group, h6 = m.group(1), int(m.group(2) or 32), bool(m.group(3))
    # The embedding and LM head stay int8 by default: the logits are the most sensitive
    # product, and with prefetching row kernels the head's extra bytes cost little decode
    # speed (Qwen2.5-0.5B-shaped int4: ~55 tok/s with an int8 head, ~62 with int6), while
    # int6 measurably moved int4 logits further from float32 than llama.cpp Q4_0's
    # (SmolLM2-shaped: relative L2 0.421 vs 0.406). "-h6" trades that for 24% fewer head bytes.
    name = (base if group == 32 else f"{base}-g{group}") + ("-h6" if h6 else "")
    return QuantChoice(name=name, type=TYPES[base], group=group, head_type=QuantType.Q6 if h6 else QuantType.Q8)
