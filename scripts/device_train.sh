#!/usr/bin/env bash
# Train MVMICNet's context model on a lent GPU (the `device` tool) and bring the checkpoint back.
#
# Here, once:  echo /.whl/ >> .git/info/exclude; echo /.device/ >> .git/info/exclude
#              pip download --no-deps -d .whl pydicom==3.0.2
#              copy the train and val entries of data/corpus (and a manifest of just them) to .device/corpus
# Then run it through the device tool with carry [".whl", ".device"]:
#              bash scripts/device_train.sh MINUTES_FAST MINUTES_SLOW
# It resumes checkpoints/codec.pt, trains at learning rate 1e-3 then 2.5e-4 with batches of 32
# crops, and leaves the checkpoint in $OUT (fit tables and export here: `mvmic train codec --export`).
set -euo pipefail
fast=${1:-5}
slow=${2:-2.5}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
device=cuda
python3 -c "import torch; assert torch.cuda.is_available()" || device=cpu
nvidia-smi --query-gpu=name,memory.used --format=csv || true
for run in "$fast 1e-3" "$slow 2.5e-4"; do
  set -- $run
  python3 -m mvmic.cli train codec --resume --device "$device" --batch 32 --minutes "$1" --learning-rate "$2" \
    --corpus .device/corpus --checkpoint checkpoints/codec.pt
  cp checkpoints/codec.pt "${OUT:-/tmp}/codec.pt"
done
