#!/usr/bin/env bash
# GPU check for lumen-audio: one command on a GPU host without network, at most ~10 minutes.
#
#   benchmarks/gpu_check.sh OUTDIR            # on the GPU host
#   benchmarks/gpu_check.sh --cpu OUTDIR      # the same steps on the CPU at CI size (tests/test_gpu_check.py)
#
# Writes OUTDIR/gpu_check.json: the environment (torch/CUDA/onnxruntime versions and providers, GPU),
# then for SMALL_CNN and one timm CNN (MOBILENET_V3_SMALL, random weights):
#   - train_steps: steps/s of forward + backward + AdamW, GPU bf16 autocast vs CPU fp32 (same batch);
#   - lumen_train: the real CLI, one epoch (a few steps) with --accelerator gpu --precision bf16-mixed;
#   - export_fp32 / export_fp16: lumen-export of that checkpoint, parity (ORT CPU EP vs eager torch);
#   - inference: torch CUDA vs ORT CPU EP (p50 ms per batch, max |dprob|), 1 vs 2 model instances
#     through the server's batcher, and the ORT CUDA EP (fp32, fp16, CUDA graphs, bound device
#     buffers) ONLY where the installed onnxruntime has CUDAExecutionProvider; otherwise
#     "ort_cuda": {"skipped": "..."} says so. The exit status is 1 when a step that should work failed.
#
# What the host must have: Python 3.12 with torch (CUDA build), onnx and onnxruntime.
# Everything else travels as wheels (cp312, manylinux x86_64, <= 64 MB together) in a folder:
# $LUMEN_WHEELS, else wheels/ at the repository root, else OUTDIR/../wheels. If the folder exists
# they are installed with `pip install --no-index --find-links DIR` (into the user site unless a
# venv is active); nothing is fetched from the network. The carry list (what is usually missing):
#   lightning lightning-utilities torchmetrics        (training loop)
#   timm huggingface-hub safetensors                   (the timm CNN; timm imports torchvision)
#   torchvision                                        (ONLY the build matching the host's torch + CUDA)
#   tensorboardX protobuf                              (lumen-train's logger; tensorboard itself also works)
#   onnxscript onnx-ir ml-dtypes                       (torch.onnx export)
#   soundfile soxr msgspec pyyaml rich markdown-it-py mdurl pygments  (lumen common/serving side)
#   packaging typing-extensions fsspec filelock tqdm requests urllib3 idna certifi charset-normalizer
# Build the folder on a machine with network, for the host's Python:
#   pip download -d wheels --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --no-deps <the names above>
# The PyPI onnxruntime-gpu wheel (~255 MB, CUDA 12) does not fit the carry; with it already installed
# on the host the CUDA EP numbers are filled in.
set -euo pipefail

usage() { echo "usage: $0 [--cpu] OUTDIR" >&2; exit 2; }
mode=gpu
if [[ "${1:-}" == "--cpu" ]]; then mode=cpu; shift; fi
[[ $# -eq 1 ]] || usage
outdir=$1
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
for candidate in "${LUMEN_WHEELS:-}" "$root/wheels" "$outdir/../wheels"; do
    if [[ -n "$candidate" && -d "$candidate" ]] && compgen -G "$candidate/*.whl" >/dev/null; then
        echo "gpu_check: installing carried wheels from $candidate (no network)"
        user_flag=--user
        if "$python" -c 'import sys; sys.exit(0 if sys.prefix != sys.base_prefix else 1)'; then user_flag=; fi
        "$python" -m pip install --no-index --no-deps --find-links "$candidate" $user_flag "$candidate"/*.whl \
            || echo "gpu_check: some carried wheels did not install; the preflight below names what is missing"
        break
    fi
done

# Preflight: name every missing module at once instead of failing on the first import.
"$python" - <<'EOF'
import importlib.util, sys
needed = ["torch", "onnx", "onnxruntime", "numpy", "lightning", "torchmetrics", "timm", "torchvision",
          "onnxscript", "soundfile", "soxr", "msgspec", "yaml", "rich"]
missing = [m for m in needed if importlib.util.find_spec(m) is None]
if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
    missing.append("tensorboardX (or tensorboard)")
if missing:
    sys.exit(f"gpu_check: missing Python modules: {', '.join(missing)}; carry them as wheels (see the header)")
EOF

export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
# One hard stop for the whole check (the driver also budgets its own steps).
exec timeout --kill-after=20 600 "$python" "$root/benchmarks/gpu_check.py" --mode "$mode" "$outdir"
