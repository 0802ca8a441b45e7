#!/usr/bin/env bash
# Retrains the shipped model on one GPU from the training pack (examples/gather_photos.py --pack), in commands of
# under 10 minutes: each call does what is left, stops with status 75 before its deadline (checkpointed), and the
# same call continues. After every step it packs the results (logs, JSON, the trained pipeline, the fp16 export)
# into OUT_DIR as pieces of < 16 MiB (`cat OUT_DIR/results.tgz.* | tar xz` unpacks them), so that a command killed
# at its limit, or a machine given back, loses no finished stage. The limit does not cover loading and compilation
# before a stage's first step: keep a minute or two of margin (MINUTES_PER_CALL below the command's limit).
#
#   bash examples/train_shipped_model.sh OUT_DIR [MINUTES_PER_CALL]
#
# Order (each step skipped once done):
#   1. training benchmark (benchmarks/benchmark_training.py; its UNet rate sizes step 3), skipped when
#      benchmarks/results/training_h200.json (a committed run on the same GPU) exists
#   2. seed: the pipeline of examples/configs/small_model.json with the shipped model's VAE (not retrained)
#   3. unet: as many steps of batch 256 as UNET_MINUTES of the measured rate give (at most the config's)
#   4. control: the pixel-space regressor on the same data, recipes and seed, for the same GPU time as the UNet
#      stage: its steps come from its rate, measured by a short run of its stage on the same GPU (its mixtures cost
#      about twice the UNet stage's FLOPs: 267 against 138 GFLOP at 256 px, so it sees fewer of them)
#   5. composition net C, then FGFM; fp16 export into reflection_separation/default_model
#   6. ablation on held-out mixtures (42 validation photos never trained on), overall and per recipe
set -uo pipefail
OUT=$1
MINUTES=${2:-9}
UNET_MINUTES=${UNET_MINUTES:-8}
START=$(date +%s)
RUN=${RUN:-runs/2026-12-03_shipped_model}
RESULTS=$RUN/results
BENCHMARK=benchmarks/results/training_h200.json
CONFIG=$RUN/config.json
TRAIN="python3 -m reflection_separation.training"
mkdir -p "$RESULTS"
export OMP_NUM_THREADS=8

left() { python3 -c "print(round(max(0.5, $MINUTES - 0.6 - ($(date +%s) - $START) / 60), 2))"; }
pack() {
    rm -f "$OUT"/results.tgz.*
    local trained=()
    for folder in "$RUN/pipeline" "$RUN/control_fp16"; do [ -e "$folder" ] && trained+=("$folder"); done
    tar czf - "$RESULTS" reflection_separation/default_model "${trained[@]}" | split -b 15M - "$OUT/results.tgz."
    ls -l "$OUT"
}
stage() {  # stage NAME [extra args]: train (or continue) one stage within the time left; 75 = out of time
    local name=$1; shift
    $TRAIN --config "$CONFIG" --stage "$name" --time-limit-minutes "$(left)" "$@" >> "$RESULTS/$name.log" 2>&1
    local status=$?
    cp "$RUN/$name/log.jsonl" "$RESULTS/${name}_log.jsonl" 2>/dev/null
    if [ $status -ne 0 ]; then
        echo "stage $name: exit $status ($( [ $status -eq 75 ] && echo 'time limit: call again' || echo failed ))"
        tail -5 "$RESULTS/$name.log"
        pack
        exit $status
    fi
    echo "stage $name: done at $(( $(date +%s) - START )) s"
    pack
}

[ -e "$BENCHMARK" ] && [ ! -e "$RESULTS/training_h200.json" ] && cp "$BENCHMARK" "$RESULTS/training_h200.json"
if [ ! -e "$RESULTS/training_h200.json" ]; then
    python3 benchmarks/benchmark_training.py --photos data/pack_2026-12-02 --steps 16 \
        --small-rows "unet:loader:eager:64,unet:device:eager:256,unet:device:compiled:256,composition:loader:eager:32,composition:device:compiled:256,fgfm:loader:eager:16,fgfm:device:eager:64,control:loader:eager:32,control:device:compiled:256,vae:loader:eager:16,vae:device:eager:64" \
        --sd21-rows "unet:loader:eager:16,unet:device:eager:16,unet:device:eager:32" \
        --output "$RESULTS/training_h200.json.partial" > "$RESULTS/benchmark.log" 2>&1 \
        && mv "$RESULTS/training_h200.json.partial" "$RESULTS/training_h200.json"
    tail -25 "$RESULTS/benchmark.log"
fi

if [ ! -e "$CONFIG" ]; then  # size the UNet and control stages from the measured rate
    python3 - "$RESULTS/training_h200.json" "$CONFIG" "$UNET_MINUTES" "$RUN" <<'EOF'
import json, sys, tempfile
from pathlib import Path
import torch
sys.path.insert(0, "benchmarks")
import benchmark_training
report, target, minutes, run = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
config = json.load(open("examples/configs/small_model.json"))
config["output_dir"] = run
rows = [r for r in json.load(open(report))["rows"] if r["model"] == "small" and r["stage"] == "unet"
        and r["path"] == "device" and "error" not in r and r["batch"] == 256]
rate = max(r["mixtures_per_s"] for r in rows)
unet = config["stages"]["unet"]
steps = min(unet["steps"], int(rate * 60 * minutes / unet["batch_size"]) // 100 * 100)
control = config["stages"]["control"]
with tempfile.TemporaryDirectory() as scratch:  # the control's rate: a short run of its stage on this GPU
    settings = benchmark_training.run_config(config["model"], Path(config["photos"]), Path(scratch), config["resolution"],
        "control", "device", False, control["batch_size"], 24, 0, config["synthesis"])
    measured = benchmark_training.measure_row(settings, "control")
control_steps = max(100, int(steps * unet["batch_size"] / rate * measured["mixtures_per_s"] / control["batch_size"]) // 10 * 10)
config["stages"]["unet"]["steps"] = steps
control["steps"] = control_steps
json.dump(config, open(target, "w"), indent=2)
json.dump({"unet_mixtures_per_s": rate, "unet_minutes": minutes, "control_measured": measured,
           "steps": {"unet": steps, "control": control_steps}}, open(Path(target).parent / "results/sizing.json", "w"), indent=2)
print(f"UNet rate {rate:.0f} mixtures/s -> unet: {steps} steps of {unet['batch_size']}; control rate "
      f"{measured['mixtures_per_s']:.0f} mixtures/s -> control: {control_steps} steps of {control['batch_size']}")
EOF
    cp "$CONFIG" "$RESULTS/config.json"
fi

[ -e "$RUN/pipeline/model_index.json" ] || $TRAIN --config "$CONFIG" --vae-from reflection_separation/default_model \
    > "$RESULTS/seed.log" 2>&1 || { tail -20 "$RESULTS/seed.log"; pack; exit 1; }
stage unet
stage control --export-fp16 "$RUN/control_fp16"
stage composition
stage fgfm --export-fp16 reflection_separation/default_model

if [ ! -e "$RESULTS/ablation_small_model.json" ]; then
    timeout "$(python3 -c "print(int(60 * $(left)))")" python3 benchmarks/ablation.py --pipeline reflection_separation/default_model --control "$RUN/control_fp16" \
        --photos data/pack_2026-12-02 --validation-fraction 0.15 --num-images 96 --batch-size 32 \
        --synthesis-config "$CONFIG" --per-recipe 24 --output "$RESULTS/ablation_small_model.json" \
        > "$RESULTS/ablation.log" 2>&1
    tail -30 "$RESULTS/ablation.log"
fi
echo "all done at $(( $(date +%s) - START )) s"
pack
