#!/usr/bin/env bash
# How the shipped model, its ablation baseline and the control were trained: a 4-GPU machine, two parts of
# under 10 minutes each (part 2 needs part 1's outputs). The small models are too small for data parallelism
# to pay (benchmarks/results/multi_gpu_unet.json), so after the VAE (4-GPU DDP) independent runs share the
# machine, one GPU each.
#   part 1  VAE (DDP on 4 GPUs), then GPU 0: shipped model (UNet with CLSA -> composition net C -> FGFM ->
#           fp16 export into the package); GPU 1: ablation baseline (same UNet budget without CLSA)
#   part 2  (2 GPUs) GPU 0: control (pixel-space U-Net regressor, same steps and batch), then the ablation;
#           GPU 1: multi-GPU check: the UNet stage on 1 GPU, its checkpoint resumed on 2 GPUs, that one
#           resumed on 1 again (the 4-GPU curve: benchmarks/results/multi_gpu/)
# Usage: bash examples/train_shipped_model_4gpu.sh part1|part2 [RESULTS_DIR]
set -uo pipefail
PART=$1
RESULTS=${2:-runs/results}
mkdir -p "$RESULTS"
TRAIN="-m reflection_separation.training"
MAIN=examples/configs/small_model.json
DDP="accelerate launch --multi_gpu --num_machines 1 --mixed_precision no --dynamo_backend no"
on() { local gpus=$1; shift; CUDA_VISIBLE_DEVICES=$gpus OMP_NUM_THREADS=8 "$@"; }

if [ "$PART" = part1 ]; then
    $DDP --num_processes 4 $TRAIN --config $MAIN --stage vae || exit 1
    on 0 python3 $TRAIN --config $MAIN --stage unet composition fgfm \
        --export-fp16 reflection_separation/default_model > "$RESULTS/main.log" 2>&1 &
    on 1 python3 $TRAIN --config examples/configs/small_model_baseline.json --stage unet \
        --export-fp16 runs/baseline_fp16 > "$RESULTS/baseline.log" 2>&1 &
    wait
elif [ "$PART" = part2 ]; then
    ( on 0 python3 $TRAIN --config $MAIN --stage control --export-fp16 runs/control_fp16 \
        && on 0 python3 benchmarks/ablation.py --pipeline reflection_separation/default_model \
            --baseline runs/baseline_fp16 --control runs/control_fp16 --photos data/photos --num-images 96 \
            --batch-size 16 --output "$RESULTS/ablation_small_model.json" ) > "$RESULTS/control_ablation.log" 2>&1 &
    first=$!
    SCALING=examples/configs/scaling_unet.json
    (
        on 1 python3 $TRAIN --config $SCALING --stage unet --stop-after 400
        while kill -0 $first 2>/dev/null; do sleep 2; done
        on 0,1 $DDP --num_processes 2 $TRAIN --config $SCALING --stage unet --stop-after 500
        on 1 python3 $TRAIN --config $SCALING --stage unet --stop-after 600
    ) > "$RESULTS/scaling.log" 2>&1
    wait
else
    echo "usage: $0 part1|part2 [RESULTS_DIR]" >&2
    exit 2
fi
