"""Ablation of the method's parts on held-out synthetic mixtures, beside a discriminative control.

Rows (as in the paper's ablation, plus FGFM and the control):
  mixture as T                      no separation at all (reference)
  control regressor                 pixel-space U-Net trained to output T and R directly (optional)
  baseline (fine-tune only)         UNet trained without CLSA; no guidance, no disjoint, no FGFM (optional)
  +CLSA                             the trained pipeline; no guidance, no disjoint, no FGFM
  +CLSA +latent guidance            guidance "fast"
  full (+disjoint, +FGFM)           k = 0.2, guidance "fast", w = 0.8 (the defaults of the method)
  full without FGFM                 w = 0
  one-step                          the trained pipeline in one UNet call (``one_step=True``, w = 0.8)
  one-step, fine-tuned              a pipeline from the ``onestep`` training stage, one step (optional)
  ... +autoencoder detail           the same with ``autoencoder_detail=True`` (T gets what the VAE round trip loses)
  full, ensemble of N               with `--ensemble-size N`: the full method, per-pixel median of N separations

With `--synthesis-config` the mixtures follow a training config's `synthesis` recipes; `--per-recipe N` adds, for
each recipe alone, N mixtures scored for the input, the control and the full method.

The mixtures are made from the photos of the validation split (by file-name hash, the same split the training
stack uses), which no training item ever contains; those whose reflection the synthesizer's overflow
compensation removed from a whole channel are skipped (indices listed in the JSON). `--split train` makes new
mixtures of the training photos instead: how far they score above the held-out ones says whether a model overfits
its photos or underfits the task. `--clean N` scores each row on N crops without any reflection (the `none` recipe,
no degradation), where the right answer is the photo itself and a black reflection. Metrics are the evaluation harness's:
PSNR / SSIM of T and R, and the gradient-correlation leakage of true R in predicted T (and true T in R).

    python benchmarks/ablation.py --pipeline runs/small_model/pipeline --baseline runs/small_model_baseline/pipeline \
        --control runs/small_model/control --photos data/photos --output benchmarks/results/ablation_small_model.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch
from diffusers import UNet2DModel

from reflection_separation import ReflectionSeparationPipeline
from reflection_separation.cli import DTYPES
from reflection_separation.data import ReflectionSynthesizer, SyntheticReflectionDataset
from reflection_separation.evaluation import (
    BenchmarkItem,
    format_markdown_table,
    image_metrics,
    psnr,
    ssim,
    summarize,
)
from reflection_separation.training import run_control_regressor

MIN_REFLECTION = 1 / 255  # a channel's mean of the reflection in the mixture below which it is invisible
MAX_DRAWS_PER_IMAGE = 4  # validation mixtures drawn per requested image, to replace those without reflection
CHANGED_PSNR = 30.0  # a clean photo given back below this PSNR counts as visibly changed
PSNR_CAP = 60.0  # a clean photo given back unchanged has an infinite PSNR; the mean counts it at this


def _settings(disjoint_strength: float, composition_guidance: str, fgfm_strength: float) -> dict[str, Any]:
    return {"disjoint_strength": disjoint_strength, "composition_guidance": composition_guidance,
            "fgfm_strength": fgfm_strength, "autoencoder_detail": False}


ONE_STEP = {"one_step": True, "fgfm_strength": 0.8, "autoencoder_detail": False}


METHOD_ROWS: list[tuple[str, str, dict[str, Any]]] = [
    ("baseline (fine-tune only)", "baseline", _settings(0.0, "off", 0.0)),
    ("+CLSA", "main", _settings(0.0, "off", 0.0)),
    ("+CLSA +latent guidance", "main", _settings(0.0, "fast", 0.0)),
    ("full (+disjoint, +FGFM)", "main", _settings(0.2, "fast", 0.8)),
    ("full without FGFM", "main", _settings(0.2, "fast", 0.0)),
    ("one-step", "main", ONE_STEP),
    ("one-step, fine-tuned", "onestep", ONE_STEP),
    ("one-step, fine-tuned, +autoencoder detail", "onestep", {**ONE_STEP, "autoencoder_detail": True}),
]


def method_rows(ensemble_size: int) -> list[tuple[str, str, dict[str, Any]]]:
    """:data:`METHOD_ROWS`, plus the full method with an ensemble of ``ensemble_size`` when that is above 1."""
    if ensemble_size == 1:
        return METHOD_ROWS
    _, which, settings = METHOD_ROWS[3]  # the full method
    return [*METHOD_ROWS, (f"full, ensemble of {ensemble_size}", which, {**settings, "ensemble_size": ensemble_size})]


def to_hwc(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).float().cpu().numpy()


def score(items: list[BenchmarkItem], transmissions, reflections) -> dict[str, Any]:
    records = [
        image_metrics(item, t, r) for item, t, r in zip(items, transmissions, reflections)
    ]
    return summarize(records)


def clean_score(items: list[BenchmarkItem], transmissions, reflections) -> dict[str, Any]:
    """How much a separation changes photos without reflection: T against the photo (PSNR capped at `PSNR_CAP`),
    and the reflection it invents."""
    t_psnr = [min(psnr(t, item.transmission), PSNR_CAP) for item, t in zip(items, transmissions)]
    return {
        "count": len(items),
        "t_psnr": float(np.mean(t_psnr)),
        "t_ssim": float(np.mean([ssim(t, item.transmission) for item, t in zip(items, transmissions)])),
        "r_mean": float(np.mean([r.mean() for r in reflections])),
        "changed": float(np.mean([value < CHANGED_PSNR for value in t_psnr])),
        "changed_below_psnr": CHANGED_PSNR,
        "psnr_cap": PSNR_CAP,
    }


Separation = tuple[list[np.ndarray], list[np.ndarray], float]


def separate_with_pipeline(pipe, items, settings, steps, batch_size, seed) -> Separation:
    """Transmissions and reflections of ``items`` (HWC arrays) and the seconds it took."""
    start = time.perf_counter()
    out = pipe(
        [item.mixture for item in items],
        num_inference_steps=steps,
        processing_resolution=0,
        batch_size=batch_size,
        generator=[torch.Generator().manual_seed(seed + i) for i in range(len(items))],
        output_type="np",
        **settings,
    )
    return list(out.transmission), list(out.reflection), time.perf_counter() - start


def separate_with_control(regressor: UNet2DModel, items: list[BenchmarkItem], device: str) -> Separation:
    start = time.perf_counter()
    with torch.no_grad():
        mixtures = torch.stack([torch.from_numpy(item.mixture).permute(2, 0, 1) for item in items])
        transmission, reflection = run_control_regressor(regressor, mixtures.to(device))
    return [to_hwc(t) for t in transmission], [to_hwc(r) for r in reflection], time.perf_counter() - start


def run_pipeline_row(pipe, items, settings, steps, batch_size, seed) -> tuple[dict[str, Any], float]:
    transmissions, reflections, seconds = separate_with_pipeline(pipe, items, settings, steps, batch_size, seed)
    return score(items, transmissions, reflections), seconds


def run_control_row(regressor: UNet2DModel, items: list[BenchmarkItem], device: str) -> tuple[dict[str, Any], float]:
    transmissions, reflections, seconds = separate_with_control(regressor, items, device)
    return score(items, transmissions, reflections), seconds


def mixtures_of_split(
    args: argparse.Namespace, synthesizer: ReflectionSynthesizer, num_samples: int
) -> SyntheticReflectionDataset:
    return SyntheticReflectionDataset(
        args.photos,
        resolution=args.resolution,
        num_samples=num_samples,
        seed=args.seed,
        split=args.split,
        validation_fraction=args.validation_fraction,
        synthesizer=synthesizer,
        flip_probability=0.0,
    )


def as_item(index: int, sample: dict[str, torch.Tensor]) -> BenchmarkItem:
    return BenchmarkItem(str(index), *(to_hwc(sample[k]) for k in ("mixture", "transmission", "reflection")))


def clean_photo_items(args: argparse.Namespace, num_images: int) -> list[BenchmarkItem]:
    """``num_images`` crops of the split's photos with no reflection and no degradation: the mixture is the photo."""
    dataset = mixtures_of_split(args, ReflectionSynthesizer(recipes={"none": 1.0}), num_images)
    return [as_item(index, dataset[index]) for index in range(len(dataset))]


def held_out_items(
    args: argparse.Namespace, synthesizer: ReflectionSynthesizer, num_images: int
) -> tuple[list[BenchmarkItem], list[int]]:
    """The first ``num_images`` mixtures of ``args.split`` that hold a visible reflection, and the indices skipped.

    The synthesizer's overflow compensation can darken the reflection of a bright photo to nothing in one
    channel or all; such a mixture equals its T there, so the band-wise PSNR of "mixture as T" is infinite and
    the item tests no separation in that channel: it is left out.
    """
    dataset = mixtures_of_split(args, synthesizer, MAX_DRAWS_PER_IMAGE * num_images)
    items, skipped = [], []
    for index in range(len(dataset)):
        if len(items) == num_images:
            break
        sample = dataset[index]
        if sample["reflection"].mean(dim=(1, 2)).min() < MIN_REFLECTION:
            skipped.append(index)
            continue
        items.append(as_item(index, sample))
    if len(items) < num_images:
        raise ValueError(f"Only {len(items)} of {len(dataset)} {args.split} mixtures hold a visible reflection; "
                         f"lower --num-images or add {args.split} photos.")
    return items, skipped


def earlier_control_row(path: Path, args: argparse.Namespace, synthesizer: ReflectionSynthesizer) -> dict[str, Any]:
    """The control row of an earlier report, after checking that it scored the same held-out mixtures."""
    earlier = json.loads(path.read_text())
    same = ("photos", "validation_fraction", "num_images", "resolution", "seed")
    changed = [key for key in same if earlier["settings"][key] != getattr(args, key)]
    if earlier["synthesis"] != json.loads(json.dumps(synthesizer.to_dict())):
        changed.append("synthesis")
    if changed:
        raise ValueError(f"{path} scored other mixtures (its {', '.join(changed)} differ); rerun the control instead.")
    row = next((row for row in earlier["rows"] if row["name"] == "control regressor"), None)
    if row is None:
        raise ValueError(f"{path} has no control regressor row.")
    return {**row, "from": str(path)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="trained pipeline folder (with CLSA)")
    parser.add_argument("--baseline", help="pipeline folder whose UNet was trained without CLSA")
    control = parser.add_mutually_exclusive_group()
    control.add_argument("--control", help="control regressor folder (training stage `control`)")
    control.add_argument("--control-row-from", type=Path, metavar="JSON", help="take the control row from this earlier "
                        "report of the same held-out mixtures (same photos, split, count, seed and recipes) instead of "
                        "--control, e.g. when the control's weights are not at hand")
    parser.add_argument("--onestep-pipeline", help="pipeline folder from the `onestep` training stage")
    parser.add_argument("--photos", required=True, help="the photo folder the models were trained from")
    parser.add_argument("--validation-fraction", type=float, default=0.1, help="as in the training config")
    parser.add_argument("--split", choices=("validation", "train"), default="validation",
                        help="photos the mixtures are made of: the held-out ones (the ablation) or the training ones "
                        "(new mixtures of photos the model was trained on: the gap to the held-out scores says "
                        "whether the model overfits its photos or underfits the task)")
    parser.add_argument("--num-images", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=8, help="separations per batch (an ensemble member is one)")
    parser.add_argument("--ensemble-size", type=int, default=1, metavar="N",
                        help="also score the full method with an ensemble of N (per-pixel median), N > 1")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", required=True, help="JSON path; a Markdown table is written beside it")
    parser.add_argument("--synthesis-config", type=Path, help="training config whose `synthesis` recipes make the "
                        "mixtures (default: the additive recipe alone)")
    parser.add_argument("--per-recipe", type=int, default=0, metavar="N", help="also score N mixtures of each recipe")
    parser.add_argument("--clean", type=int, default=0, metavar="N", help="also score each row on N crops of the "
                        "split's photos without any reflection: T against the photo, the mean R invented, the share "
                        f"of photos given back below {CHANGED_PSNR:g} dB")
    parser.add_argument("--rows", nargs="+", metavar="NAME", help="run only these method rows (names as in the table; "
                        "the input row always, the control row when --control is given)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32",
                        help="dtype the pipelines run in (the control regressor stays float32)")
    args = parser.parse_args(argv)
    known = [name for name, _, _ in method_rows(args.ensemble_size)]
    if args.rows and set(args.rows) - set(known):
        parser.error(f"unknown --rows {sorted(set(args.rows) - set(known))}; choose from {known}")
    if args.rows and args.per_recipe and METHOD_ROWS[3][0] not in args.rows:
        parser.error(f"--per-recipe scores the row {METHOD_ROWS[3][0]!r}: add it to --rows")

    synthesis = json.loads(args.synthesis_config.read_text()).get("synthesis", {}) if args.synthesis_config else {}
    synthesizer = ReflectionSynthesizer.from_dict(synthesis)
    items, skipped = held_out_items(args, synthesizer, args.num_images)

    rows: list[dict[str, Any]] = [
        {"name": "mixture as T", "metrics": summarize([image_metrics(item, item.mixture, None) for item in items])}
    ]
    if args.control_row_from:
        rows.append(earlier_control_row(args.control_row_from, args, synthesizer))
    clean_items = clean_photo_items(args, args.clean) if args.clean else []
    clean_rows: list[dict[str, Any]] = []
    regressor = UNet2DModel.from_pretrained(args.control).to(args.device).eval() if args.control else None
    if regressor is not None:
        metrics, seconds = run_control_row(regressor, items, args.device)
        rows.append({"name": "control regressor", "metrics": metrics, "seconds": seconds})
        if clean_items:
            clean_rows.append({"name": "control regressor", "metrics": clean_score(
                clean_items, *separate_with_control(regressor, clean_items, args.device)[:2])})

    pipelines = {"main": args.pipeline, "baseline": args.baseline, "onestep": args.onestep_pipeline}
    loaded: dict[str, ReflectionSeparationPipeline] = {}
    for name, which, settings in method_rows(args.ensemble_size):
        if pipelines[which] is None or (args.rows and name not in args.rows):
            continue
        if which not in loaded:
            loaded[which] = ReflectionSeparationPipeline.from_pretrained(
                pipelines[which], torch_dtype=DTYPES[args.dtype])
            loaded[which].to(args.device).set_progress_bar_config(disable=True)
        pipe = loaded[which]
        steps = 1 if settings.get("one_step") else args.steps or pipe.config.default_denoising_steps
        metrics, seconds = run_pipeline_row(pipe, items, settings, steps, args.batch_size, args.seed)
        rows.append({"name": name, "settings": {**settings, "num_inference_steps": steps}, "metrics": metrics,
                     "seconds": seconds})
        if clean_items:
            separated = separate_with_pipeline(pipe, clean_items, settings, steps, args.batch_size, args.seed)
            clean_rows.append({"name": name, "metrics": clean_score(clean_items, *separated[:2])})

    per_recipe: dict[str, list[dict[str, Any]]] = {}
    for recipe in [recipe for recipe in synthesizer.recipes if recipe != "none"] if args.per_recipe else []:
        recipe_items, _ = held_out_items(args, synthesizer.only(recipe), args.per_recipe)
        recipe_rows = [{"name": "mixture as T",
                        "metrics": summarize([image_metrics(item, item.mixture, None) for item in recipe_items])}]
        if regressor is not None:
            metrics, seconds = run_control_row(regressor, recipe_items, args.device)
            recipe_rows.append({"name": "control regressor", "metrics": metrics, "seconds": seconds})
        name, _, settings = METHOD_ROWS[3]
        pipe = loaded["main"]
        metrics, seconds = run_pipeline_row(pipe, recipe_items, settings,
                                            args.steps or pipe.config.default_denoising_steps, args.batch_size,
                                            args.seed)
        recipe_rows.append({"name": name, "metrics": metrics, "seconds": seconds})
        per_recipe[recipe] = recipe_rows

    report = {
        "description": "Ablation on held-out synthetic mixtures (validation-split photos only)." if args.split ==
        "validation" else "The ablation's rows on new mixtures of training-split photos (not held out).",
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "synthesis": synthesizer.to_dict(),
        "per_recipe": per_recipe,
        "clean_photos": clean_rows,
        "skipped_without_reflection": skipped,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu",
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version()},
        "rows": rows,
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    table = format_markdown_table([(row["name"], row["metrics"]) for row in rows], label="Row")
    for recipe, recipe_rows in per_recipe.items():
        table += f"\n{recipe} ({args.per_recipe} mixtures)\n\n" + format_markdown_table(
            [(row["name"], row["metrics"]) for row in recipe_rows], label="Row")
    if clean_rows:
        table += (f"\nClean photos ({args.clean} crops without reflection; changed: T below {CHANGED_PSNR:g} dB against "
                  "the photo)\n\n| Row | T PSNR↑ | T SSIM↑ | mean R↓ | changed↓ |\n|---|---|---|---|---|\n")
        table += "".join(f"| {row['name']} | {row['metrics']['t_psnr']:.2f} | {row['metrics']['t_ssim']:.3f} | "
                         f"{row['metrics']['r_mean']:.3f} | {row['metrics']['changed']:.0%} |\n" for row in clean_rows)
    output.with_suffix(".md").write_text(table)
    print(table)
    return report


if __name__ == "__main__":
    main()
