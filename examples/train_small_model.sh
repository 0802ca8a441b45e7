#!/usr/bin/env bash
# Trains our shipped small model from scratch, all four stages, on one GPU (or several: set LAUNCH).
# Usage: bash examples/train_small_model.sh [CONFIG] [EXPORT_DIR]
#   CONFIG      training config (default examples/configs/small_model.json; photos from examples/gather_photos.py)
#   EXPORT_DIR  where the fp16 pipeline is written (default reflection_separation/default_model)
# Several GPUs: LAUNCH="accelerate launch --multi_gpu --num_processes 4" bash examples/train_small_model.sh
set -euo pipefail
CONFIG=${1:-examples/configs/small_model.json}
EXPORT=${2:-reflection_separation/default_model}
LAUNCH=${LAUNCH:-python3}
$LAUNCH -m reflection_separation.training --config "$CONFIG" --stage vae unet composition fgfm --export-fp16 "$EXPORT"
