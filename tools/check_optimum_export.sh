#!/usr/bin/env bash
# Manual check, not part of the test suite: llmos runs an ONNX decoder exported by optimum.
#
# optimum-onnx 0.1.0 pins transformers < 4.58 while llmos tests against transformers 5, so the
# export runs in a separate virtual environment made here; the project's own environment is
# left as it is. The venv sees the system's site-packages (torch, onnx) but installs its own
# transformers and optimum-onnx on top.
#
#   tools/check_optimum_export.sh [KIND ...]      # default: llama qwen2 gpt2
#   WORK=/tmp/optimum-check tools/check_optimum_export.sh   # keep the venv and exports
#
# For each KIND (tests/checkpoints.py) it builds a random-weight checkpoint (config.json in
# the transformers-4 layout), exports it with `optimum-cli export onnx --task
# text-generation-with-past`, then, with the project's python: llmos.load() of the export
# must match the llmos core (logits within 1e-4, greedy tokens identical), and
# llmos.convert_onnx() of it must give a checkpoint the core runs with the same logits.
# Exit status 0 when every kind passes.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"
WORK="${WORK:-$(mktemp -d -t llmos-optimum-XXXXXX)}"
VENV="$WORK/venv"
KINDS=("$@")
[ ${#KINDS[@]} -eq 0 ] && KINDS=(llama qwen2 gpt2)

echo "work folder: $WORK"
if [ ! -x "$VENV/bin/optimum-cli" ]; then
  "$PY" -m venv --system-site-packages "$VENV"
  "$VENV/bin/python" -m pip install --quiet "optimum-onnx==0.1.0" "transformers>=4.45,<4.58"
fi
"$VENV/bin/python" -c "import transformers, optimum; print('optimum venv: transformers', transformers.__version__)"

status=0
for kind in "${KINDS[@]}"; do
  ckpt="$WORK/$kind"
  out="$WORK/$kind-onnx"
  echo "== $kind"
  rm -rf "$ckpt"
  "$PY" "$ROOT/tools/make_checkpoint.py" "$kind" "$ckpt" --legacy-config >/dev/null
  rm -rf "$out"
  if ! "$VENV/bin/optimum-cli" export onnx --model "$ckpt" --task text-generation-with-past "$out" \
      >"$WORK/$kind-export.log" 2>&1; then
    echo "   optimum export failed (see $WORK/$kind-export.log)"; status=1; continue
  fi
  # optimum saves the tokenizer only when transformers 4 can read it back (tokenizer files
  # written by transformers 5 may not be): the checkpoint's own files serve then.
  for f in tokenizer.json tokenizer_config.json; do
    [ -f "$out/$f" ] || cp "$ckpt/$f" "$out/$f"
  done
  if ! "$PY" - "$ckpt" "$out" "$WORK/$kind-converted" <<'EOF'
import sys

import numpy as np

import llmos

ckpt, out, converted = sys.argv[1:4]
core = llmos.load(ckpt, threads=1)
onnx_model = llmos.load(out, threads=1)
ids = [(11 * i + 5) % 300 + 5 for i in range(24)]
diff = float(np.abs(onnx_model.logits(ids) - core.logits(ids)).max())
a = core.generate(ids, max_new_tokens=24, eos_token_id=[]).token_ids
b = onnx_model.generate(ids, max_new_tokens=24, eos_token_id=[]).token_ids
back = llmos.load(llmos.convert_onnx(out, converted), threads=1)
diff_back = float(np.abs(back.logits(ids) - core.logits(ids)).max())
print(f"   {onnx_model!r}")
print(f"   logits vs core {diff:.2e}, greedy identical {a == b}, converted logits vs core {diff_back:.2e}")
sys.exit(0 if diff <= 1e-4 and a == b and diff_back <= 1e-4 else 1)
EOF
  then
    status=1
  fi
done
exit $status
