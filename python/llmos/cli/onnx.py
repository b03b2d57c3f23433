"""The ONNX verbs of the `llmos` command line: export-onnx and convert-onnx.

Wired in by llmos.cli with `add_onnx_commands(subparsers)`; each verb sets `run`, which
returns the exit code (llmos.cli turns LlmosError into exit code 2).
"""

from __future__ import annotations

import argparse
import sys

from llmos.cli.progress import bar
from llmos.extras import require


def _export(args) -> int:
    require("onnx", "llmos export-onnx")
    from llmos.registry import operations as registry

    with bar("exporting", "stage", quiet=args.quiet) as progress:
        path = registry.export_onnx(args.model, args.out_dir, adapter=args.adapter, precision=args.precision,
                                    opset=args.opset, block_size=args.block_size,
                                    external_data=True if args.external_data else None, progress=progress)
    print(path, file=sys.stdout)
    return 0


def _convert(args) -> int:
    require("onnx", "llmos convert-onnx")
    from llmos.onnx.convert import convert_onnx

    print(convert_onnx(args.onnx_model, args.out_dir, verify=not args.no_verify), file=sys.stdout)
    return 0


def add_onnx_commands(subparsers: argparse._SubParsersAction) -> None:
    # Only onnx-free modules here: `llmos` must start without the onnx extra installed.
    from llmos.backends.onnx.layout import DEFAULT_OPSET, PRECISIONS
    from llmos.onnx.quant import DEFAULT_BLOCK_SIZE

    e = subparsers.add_parser(
        "export-onnx", help="write a checkpoint as an ONNX decoder with KV cache (optimum's layout)",
        description="Writes MODEL (a checkpoint folder) as OUT_DIR/model.onnx with inputs input_ids, "
                    "attention_mask, position_ids, past_key_values.N.key/value and outputs logits, "
                    "present.N.key/value, plus config, tokenizer files and llmos_onnx.json.")
    e.add_argument("model", help="registry name or checkpoint folder (config.json, *.safetensors, tokenizer.json)")
    e.add_argument("out_dir", help="output folder")
    e.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 / fp16 (standard ONNX ops) or int4 (onnxruntime MatMulNBits); default fp32")
    e.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    e.add_argument("--block-size", type=int, default=None,
                   help="int4 quantization block along the input dimension (default: the group of a model "
                        f"`llmos quantize` wrote, else {DEFAULT_BLOCK_SIZE})")
    e.add_argument("--external-data", action="store_true",
                   help="store the weights in model.onnx.data (automatic past 2 GB)")
    e.add_argument("--adapter", metavar="PATH", default=None,
                   help="a LoRA adapter folder merged in first (needs the train extra; an adapter folder also "
                        "works as MODEL)")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(run=_export)

    c = subparsers.add_parser(
        "convert-onnx", help="turn an ONNX decoder into a safetensors checkpoint for the core",
        description="Reads an ONNX decoder folder (llmos export, optimum, onnxruntime-genai builder) and "
                    "writes OUT_DIR/model.safetensors + config.json + tokenizer files.")
    c.add_argument("onnx_model", help="folder (or .onnx file) of the ONNX decoder")
    c.add_argument("out_dir", help="output checkpoint folder")
    c.add_argument("--no-verify", action="store_true",
                   help="skip the check that the checkpoint's logits match the ONNX model's")
    c.set_defaults(run=_convert)
