#!/usr/bin/env bash
# Trains the shipped model further on one GPU, one stage per command of under 10 minutes, starting from the
# package's fp16 folder (reflection_separation/default_model, or the folder in PIPELINE_FROM) so that a fresh machine
# needs nothing but the repository, the training pack and the wheels: the GPU machine keeps a run folder only while
# it stays warm. Each stage exports its fp16 pipeline to $RUN/<stage>_fp16; the package folder is left as it was (copy
# an export over it once its held-out evaluation beats the shipped model).
#
#   bash examples/continue_shipped_model.sh OUT_DIR STAGE STEPS [MINUTES]
#
#   unet     STEPS more steps of the UNet stage (a new run with its own warm-up and cosine decay, batch and
#            recipes of examples/configs/small_model.json)
#   onestep  the `onestep` stage (STEPS steps): the UNet fine-tuned for one-step separation
#   control  the ablation's control regressor trained from scratch (STEPS steps of the config's control stage) on
#            the same photos, recipes and seed; with CONTROL_FROM (a saved regressor, e.g. an earlier run's
#            control_fp16) trained on from there with a new optimizer and schedule. It uses no weights of the
#            pipeline: unless PIPELINE_FROM is set, the package folder is not read, so it need not travel
#   fgfm, composition
#            STEPS more steps of that stage (they train FGFM's fusions and C on the shipped VAE)
#
# SEED (default: the config's) sets the run's seed, which draws its mixtures: a second seed of a stage measures the
# run-to-run spread. UNET_TRANSFORMER_LAYERS deepens the starting UNet to that many transformer layers per
# attention block (`unet_transformer_layers`; the new layers start as the identity) before the stage trains it.
# EXTRA_RECIPES (JSON, e.g. '{"faint": 0.1, "none": 0.1}') adds mixing recipes with those shares of the mixtures,
# the config's recipes keeping their proportions in the rest. PHOTOS replaces the config's training pack (e.g.
# data/pack_2026-12-04; its split by file-name hash keeps the earlier pack's validation photos held out).
#
# A run folder left by an earlier command on a still-warm machine is continued (same command, same RUN); a command
# stopped by MINUTES (status 75) has checkpointed. The results (logs, the config, the fp16 pipeline) are packed into
# OUT_DIR as pieces of < 16 MiB: `cat OUT_DIR/results.tgz.* | tar xz` unpacks them into the working tree.
set -uo pipefail
OUT=$1
STAGE=$2
STEPS=$3
MINUTES=${4:-8.5}
RUN=${RUN:-runs/$(date +%F)_shipped_model_$STAGE}
FROM=${PIPELINE_FROM:-reflection_separation/default_model}
BASE=${BASE_CONFIG:-examples/configs/small_model.json}  # the config whose model, data and stage settings the run takes
RESULTS=$RUN/results
mkdir -p "$RESULTS" "$OUT"
export OMP_NUM_THREADS=8

EXPORT=$RUN/${STAGE}_fp16
case $STAGE in
    unet | onestep | control | fgfm | composition) ;;
    *) echo "STAGE must be unet, onestep, control, fgfm or composition, got '$STAGE'" >&2; exit 2 ;;
esac

python3 - "$BASE" "$RUN" "$STAGE" "$STEPS" "${SEED:-}" "${UNET_TRANSFORMER_LAYERS:-}" "${EXTRA_RECIPES:-}" \
    "${PHOTOS:-}" <<'EOF'
import json, sys
base, run, stage, steps, seed, layers, extra, photos = sys.argv[1:4] + [int(sys.argv[4])] + sys.argv[5:]
config = json.load(open(base))
config["output_dir"] = run
if photos:
    config["photos"] = photos
if seed:
    config["seed"] = int(seed)
if layers:
    config["unet_transformer_layers"] = int(layers)
if extra:
    extra = json.loads(extra)
    recipes = config.setdefault("synthesis", {}).get("recipes", {"additive": 1.0})
    if not 0 <= sum(extra.values()) < 1 or set(extra) & set(recipes):
        sys.exit(f"EXTRA_RECIPES must be new recipes with shares summing to less than 1, got {extra}")
    rest = (1 - sum(extra.values())) / sum(recipes.values())
    config["synthesis"]["recipes"] = {**{name: weight * rest for name, weight in recipes.items()}, **extra}
settings = config["stages"][stage]
settings["steps"] = steps
settings["lr_warmup_steps"] = min(settings["lr_warmup_steps"], steps // 10)
settings["checkpointing_steps"] = min(settings["checkpointing_steps"], max(steps // 3, 1))
json.dump(config, open(f"{run}/results/config.json", "w"), indent=2)
EOF

STARTS=(--pipeline-from "$FROM")
if [ "$STAGE" = control ]; then
    STARTS=(${PIPELINE_FROM:+--pipeline-from "$PIPELINE_FROM"} ${CONTROL_FROM:+--control-from "$CONTROL_FROM"})
fi
python3 -m reflection_separation.training --config "$RESULTS/config.json" --stage "$STAGE" \
    "${STARTS[@]}" --time-limit-minutes "$MINUTES" \
    --export-fp16 "$EXPORT" >> "$RESULTS/$STAGE.log" 2>&1
STATUS=$?
cp "$RUN/$STAGE/log.jsonl" "$RESULTS/${STAGE}_log.jsonl" 2>/dev/null
tail -8 "$RESULTS/$STAGE.log"
rm -f "$OUT"/results.tgz.*
FOLDERS=("$RESULTS")
[ $STATUS -eq 0 ] && FOLDERS+=("$EXPORT")
tar czf - "${FOLDERS[@]}" | split -b 15M - "$OUT/results.tgz."
ls -l "$OUT"
exit $STATUS
