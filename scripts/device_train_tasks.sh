#!/usr/bin/env bash
# Train the task networks on a lent GPU (the `device` tool) and bring the checkpoints back.
#
# Here, once: prepare .whl and .device/corpus as for scripts/device_train.sh (train and val entries
#             of data/corpus, labels included, with a manifest of just them).
# Then run it through the device tool with carry [".whl", ".device", "checkpoints"]:
#             bash scripts/device_train_tasks.sh MINUTES_REFERENCE MINUTES_HEADS MINUTES_JOINT
# It resumes checkpoints/pixel_reference.pt (the pixel reference), checkpoints/heads.pt (stage 2)
# and checkpoints/joint.pt (stage 3) with batches of 64 crops (stage 3: 16), and leaves each
# checkpoint in $OUT as soon as its run ends, so a run cut short still brings back what finished.
# Export here: `mvmic train pixel-reference|heads --resume --minutes 0 --export ...`,
# `mvmic train joint --resume --minutes 0 --export-codec ... --export-heads ...`.
set -euo pipefail
reference=${1:-3}
heads=${2:-3}
joint=${3:-2}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
device=cuda
python3 -c "import torch; assert torch.cuda.is_available()" || device=cpu
nvidia-smi --query-gpu=name,memory.used --format=csv || true
for run in "pixel-reference pixel_reference.pt $reference 64" "heads heads.pt $heads 64" "joint joint.pt $joint 16"; do
  set -- $run
  python3 -m mvmic.cli train "$1" --resume --device "$device" --batch "$4" --minutes "$3" \
    --corpus .device/corpus --checkpoint "checkpoints/$2"
  cp "checkpoints/$2" "${OUT:-/tmp}/$2"
done
