#!/usr/bin/env bash
# How the shipped model, its ablation baseline and the control were trained: one 4-GPU machine, ~9 minutes.
# The small models are too small for data parallelism to pay (see benchmarks/results/multi_gpu_unet.json),
# so after the VAE (4-GPU DDP) the independent runs share the machine, one GPU each:
#   GPU 0  shipped model: UNet with CLSA -> composition net C -> FGFM -> fp16 export into the package
#   GPU 1  ablation baseline: the same UNet budget without CLSA, beside the same VAE
#   GPU 2  control: pixel-space U-Net regressor, the same number of steps and batch
#   GPU 3  multi-GPU check: the UNet stage on 1 GPU, then resumed on 2 GPUs and again on 1
# then the ablation. Usage: bash examples/train_shipped_model_4gpu.sh [RESULTS_DIR]
set -uo pipefail
RESULTS=${1:-runs/results}
mkdir -p "$RESULTS"
TRAIN="-m reflection_separation.training"
MAIN=examples/configs/small_model.json
on() { local gpu=$1; shift; CUDA_VISIBLE_DEVICES=$gpu OMP_NUM_THREADS=8 "$@"; }
export_fp16() {  # export_fp16 PIPELINE_DIR TARGET
    python3 -c "import sys, torch; from reflection_separation import ReflectionSeparationPipeline as P; \
P.from_pretrained(sys.argv[1]).to(torch.float16).save_pretrained(sys.argv[2], remote_code=False)" "$1" "$2"
}

accelerate launch --multi_gpu --num_processes 4 --num_machines 1 --mixed_precision no --dynamo_backend no \
    $TRAIN --config $MAIN --stage vae || exit 1

( on 0 python3 $TRAIN --config $MAIN --stage unet composition fgfm \
    && export_fp16 runs/small_model/pipeline reflection_separation/default_model ) > "$RESULTS/main.log" 2>&1 &
main=$!
( on 1 python3 $TRAIN --config examples/configs/small_model_baseline.json --stage unet \
    && export_fp16 runs/small_model_baseline/pipeline runs/baseline_fp16 ) > "$RESULTS/baseline.log" 2>&1 &
baseline=$!
( on 2 python3 $TRAIN --config $MAIN --stage control && python3 -c "import torch; from diffusers import UNet2DModel; \
UNet2DModel.from_pretrained('runs/small_model/control').to(torch.float16).save_pretrained('runs/control_fp16')" \
) > "$RESULTS/control.log" 2>&1 &
control=$!
(
    on 3 python3 $TRAIN --config examples/configs/scaling_unet.json --stage unet --stop-after 1000
    wait $control 2>/dev/null || while kill -0 $control 2>/dev/null; do sleep 2; done
    on 2,3 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \
        $TRAIN --config examples/configs/scaling_unet.json --stage unet --stop-after 1100
    on 3 python3 $TRAIN --config examples/configs/scaling_unet.json --stage unet --stop-after 1200
) > "$RESULTS/scaling.log" 2>&1 &
scaling=$!

wait $main $baseline $control
on 0 python3 benchmarks/ablation.py --pipeline reflection_separation/default_model --baseline runs/baseline_fp16 \
    --control runs/small_model/control --photos data/photos --num-images 96 --batch-size 16 \
    --output "$RESULTS/ablation_small_model.json" > "$RESULTS/ablation.log" 2>&1
wait $scaling
