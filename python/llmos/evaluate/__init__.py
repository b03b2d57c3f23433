"""Measuring a model: perplexity from its logits (`perplexity`), and BLEU / chrF / ROUGE /
exact match of its generations against references (`metrics`); `evaluate` runs one metric
over a JSONL file, as `llmos eval` does."""

from llmos.evaluate.metrics import CJKTokenizer, SCORERS, bleu, chrf, cjk_tokenize, exact, rouge
from llmos.evaluate.perplexity import perplexity, token_nll
from llmos.evaluate.run import (DEFAULT_MAX_NEW_TOKENS, GENERATION_METRICS, METRICS, evaluate, format_result,
                                generate_all, read_prediction_records, read_reference_records, read_text_records)

__all__ = ["evaluate", "perplexity", "token_nll", "bleu", "chrf", "rouge", "exact", "cjk_tokenize", "CJKTokenizer",
           "SCORERS", "METRICS", "GENERATION_METRICS", "DEFAULT_MAX_NEW_TOKENS", "format_result", "generate_all",
           "read_prediction_records", "read_reference_records", "read_text_records"]
