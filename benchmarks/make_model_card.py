"""Write `model_card.md` (the Hub model card) from the measured results under `benchmarks/results/`.

Every number in the card comes from a committed JSON file: the ablation (`ablation*.json`, written by
`benchmarks/ablation.py`) and the GPU benchmark (`h200*.json`, by `benchmarks/benchmark_gpu.py`). Figures of
the paper are quoted as the paper's, with the citation.

    python benchmarks/make_model_card.py            # rewrites model_card.md
    python benchmarks/make_model_card.py --check    # exit 1 if model_card.md is out of date
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

import reflection_separation
from reflection_separation.evaluation import format_markdown_table
from reflection_separation.synthesis import FAINT_ATTENUATION

ROOT = Path(__file__).resolve().parents[1]
# The training budget of the control whose row the ablation JSON holds (from its log folder).
CONTROL_BUDGET = "345,600 mixtures, 22.9 minutes of one H200; `examples/logs/2026-12-04_control_longer/`"

FRONT_MATTER = """---
license: apache-2.0
library_name: diffusers
pipeline_tag: image-to-image
{base_model}tags:
  - reflection-removal
  - reflection-separation
  - image-restoration
  - latent-diffusion
---
"""

INTRO = """# reflection-separation

A `ReflectionSeparationPipeline` for diffusers: it separates a photo taken through glass into the
transmission (the scene behind the glass) and the reflection, following "Reflection Separation from a
Single Image via Joint Latent Diffusion" (CVPR 2026, arXiv 2606.04107).

## Usage

```python
import torch
from PIL import Image
import reflection_separation
from reflection_separation import ReflectionSeparationPipeline

pipe = ReflectionSeparationPipeline.from_pretrained(reflection_separation.DEFAULT_MODEL)  # or a folder / Hub id
out = pipe(Image.open("photo.jpg"), generator=torch.Generator().manual_seed(0))
out.transmission[0].save("transmission.png")
out.reflection[0].save("reflection.png")
```

Without this package: `DiffusionPipeline.from_pretrained(folder_or_repo, trust_remote_code=True)` (the code of
the custom classes is saved beside the weights).

## Method

One UNet conditioned on the mixture latent and on two fixed prompts ("Transmission", "Reflection") generates
both layers together; cross-layer self-attention lets each layer's queries attend to both layers' keys;
disjoint sampling pushes the two noise estimates apart (k = 0.2); an FGFM decoder restores fidelity with the
mixture's encoder features (w = 0.8); a learned latent composition network guides the latents at test time so
the two layers recombine into the input.
"""

PAPER = """## The paper's results (quoted, not reproduced here)

Transmission: Real20 PSNR 25.32, LPIPS 0.107; SIR2 PSNR 25.35, SSIM 0.911, LPIPS 0.075. SIR2 reflection:
PSNR 21.14, LPIPS 0.373 (Stable Diffusion 2.1 base model, 960x960 inference).
"""

LIMITATIONS = """## Limitations

- The generative prior may hallucinate content where the reflection hides the scene: outputs are plausible,
  not measurements. Do not use them for forensics or as evidence.
- Trained on synthetic mixtures (eight recipes: additive with overflow compensation, screen, vignette, sharp,
  ghost, glass tint, disk defocus, strong reflections; sensor noise and JPEG); real reflections can differ.
"""

TRAINING_DATA = """## Training data

Synthetic mixtures made on the training GPU from the training pack (`examples/gather_photos.py --pack`): 265 real
photographs from scikit-image, Debian packages (GCompris, kphotoalbum, Tux Paint, Tux Typing, OpenCV, LXQt,
LibreOffice, Scribus and others) and one PyPI wheel, each with its package, path and licence in the pack's
`manifest.json`; 42 of them, split by file-name hash, are held out for validation and never trained on. The VAE
was trained earlier on 79 images (scikit-image and desktop wallpapers) with the additive recipe; C and FGFM, first
trained there too, were retrained on the training pack on 2026-12-04.

## Citation

```bibtex
@inproceedings{reflection_separation_joint_latent_diffusion_2026,
  title     = {Reflection Separation from a Single Image via Joint Latent Diffusion},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2026},
  note      = {arXiv:2606.04107}
}
```
"""


def _shown(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name


def ablation_section(path: Path) -> str:
    report = json.loads(path.read_text())
    settings = report["settings"]
    table = format_markdown_table([(row["name"], row["metrics"]) for row in report["rows"]], label="Row")
    return (
        f"## Ablation ({_shown(path)})\n\n"
        f"{report['description']} {settings['num_images']} mixtures at {settings['resolution']} px, seed {settings['seed']}, "
        f"device {report['device']}, torch {report['versions']['torch']}, diffusers "
        f"{report['versions']['diffusers']}. Made by `benchmarks/ablation.py`.\n\n{table}"
    )


SHIPPED = """## The shipped small model

`reflection_separation.DEFAULT_MODEL` (inside the package): the whole method at a small size, trained from
scratch on synthetic mixtures because no pretrained diffusion weights can be downloaded where it is built:
{parameters}. Stored as fp16 safetensors ({megabytes:.1f} MB); diffusers loads the UNet, VAE and C in
float32 (the text encoder too). Defaults: {resolution} px processing resolution, {mode}, {schedule}.
Trained on H200 GPUs: the VAE (1500 steps) with `examples/train_shipped_model_4gpu.sh`, C and FGFM first (300 steps
each) with `examples/train_shipped_model_1gpu.sh`; the UNet retrained from scratch on 2026-12-03 with
`examples/train_shipped_model.sh` (281,600 synthetic mixtures of 223 real photographs and eight mixing recipes,
1100 steps of batch 256; `examples/configs/small_model.json`, logs in
`examples/logs/2026-12-03_shipped_model_retrain/`), trained further with `examples/continue_shipped_model.sh`
(332,800 more, 614,400 in all; `examples/logs/2026-12-03_shipped_model_continued/`; 358,400 more on 2026-12-04,
972,800 in all, `examples/logs/2026-12-04_unet_1M_and_onestep/`; 537,600 more the same day, 1,510,400 in all), then
fine-tuned for one-step separation by the `onestep` stage (1200 steps of batch 64 through the FGFM decoder) after
FGFM (2000 steps of batch 64) and C (600 steps of batch 256) were retrained on the training pack's photos and eight
recipes (`examples/logs/2026-12-04_fgfm_composition_retrain/`).

{quality}
"""


def quality_sentence(path: Path, one_step: bool, autoencoder_detail: bool = False) -> str:
    """How the shipped model compares with its input and with the control, from the ablation JSON: its one-step
    row (the ablation's fine-tuned one-step pipeline, with autoencoder detail when the model turns that on) when
    the model defaults to one step, else the full method."""
    if not path.exists():
        return "It has not been measured on held-out mixtures yet."
    rows = {row["name"]: row["metrics"] for row in json.loads(path.read_text())["rows"]}
    full, mixture = rows["full (+disjoint, +FGFM)"], rows["mixture as T"]
    name = "one-step, fine-tuned" + (", +autoencoder detail" if autoencoder_detail else "")
    shipped = rows.get(name) if one_step else None
    measured = shipped or full
    sentence = (f"A small model with a short training budget, it separates only partly: on {measured['count']} "
                f"held-out mixtures its transmission scores {measured['t_psnr']:.2f} dB PSNR / "
                f"{measured['t_ssim']:.3f} SSIM (reflection {measured['r_psnr']:.2f} dB) against "
                f"{mixture['t_psnr']:.2f} dB / {mixture['t_ssim']:.3f} for the input itself")
    if shipped is not None:
        sentence += (f"; the multi-step full method with the UNet before its one-step fine-tune scores "
                     f"{full['t_psnr']:.2f} dB / {full['t_ssim']:.3f}")
    if "control regressor" in rows:
        control = rows["control regressor"]
        sentence += (f", and the control, a pixel-space U-Net regressor trained on the same photos and recipes "
                     f"({CONTROL_BUDGET}), "
                     f"reaches {control['t_psnr']:.2f} dB / {control['t_ssim']:.3f} (reflection "
                     f"{control['r_psnr']:.2f} dB)")
    lost = "Its layers lose fine structure at 256 px and reflections" if measured["t_ssim"] < mixture["t_ssim"] \
        else "Reflections"
    return sentence + (f". {lost} stay visible, fainter. Use it to try the tools, not for results; the ablation "
                       "below has every row.")


def shipped_section(folder: Path, ablation: Path) -> str:
    from safetensors import safe_open

    counts, size = {}, 0
    for path in sorted(folder.rglob("*.safetensors")):
        size += path.stat().st_size
        with safe_open(path, "pt") as weights:
            counts[path.parent.name] = sum(math.prod(weights.get_slice(key).get_shape()) for key in weights.keys())
    config = json.loads((folder / "model_index.json").read_text())
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    schedule = scheduler["prediction_type"].replace("_", "-") + (
        " on a zero-terminal-SNR schedule" if scheduler.get("rescale_betas_zero_snr") else " on Stable Diffusion's schedule"
    )
    parameters = ", ".join(f"{name} {count / 1e6:.2f} M" for name, count in counts.items())
    parameters += f" parameters ({sum(counts.values()) / 1e6:.1f} M in all)"
    one_step = config.get("default_one_step", False)
    steps = config["default_denoising_steps"]
    defaults = (f"one UNet call (one-step mode; `one_step=False` samples {steps} DDIM steps)" if one_step
                else f"{steps} DDIM steps")
    autoencoder_detail = config.get("default_autoencoder_detail", False)
    if autoencoder_detail:
        defaults += ", autoencoder detail (T gets what the VAE round trip of the photo loses)"
    return SHIPPED.format(parameters=parameters, megabytes=size / 1e6, resolution=config["default_processing_resolution"],
                          mode=defaults, schedule=schedule, quality=quality_sentence(ablation, one_step, autoencoder_detail))


def cpu_section(path: Path) -> str:
    report = json.loads(path.read_text())
    settings = report["settings"]
    return (
        f"## CPU time ({_shown(path)})\n\n"
        f"{report['description']} {report['median_seconds']:.1f} s (median of {len(report['seconds'])}) on "
        f"{settings['threads']} threads of an {report['cpu']}, torch {report['versions']['torch']}, "
        f"{settings.get('dtype', 'float32')}: "
        f"{settings['processing_resolution']} px, {mode_label(settings, settings.get('one_step'))}, {guidance(settings)}. "
        f"{other_mode_time(report)}{resolution_times(report)}"
        f"Made by `benchmarks/cpu_timing.py`.\n"
    )


def resolution_times(report: dict[str, Any]) -> str:
    """The one-step times at other processing resolutions, where the report has them."""
    times = report.get("one_step_by_processing_resolution") or {}
    if not times:
        return ""
    listed = ", ".join(f"{size} px {entry['median_seconds']:.1f} s" for size, entry in times.items())
    return f"One step by processing resolution: {listed}. "


def mode_label(settings: dict[str, Any], one_step: bool) -> str:
    return "one step" if one_step else f"{settings['num_inference_steps']} steps"


def guidance(settings: dict[str, Any]) -> str:
    """One-step calls run composition guidance only when a call asks for it; the defaults do not."""
    if settings.get("one_step"):
        return "no composition guidance"
    return f"composition guidance {settings['composition_guidance']}"


def other_mode_time(report: dict[str, Any]) -> str:
    """The time of the mode that is not the default, where the report has it."""
    one_step = not report["settings"].get("one_step")
    key = "one_step" if one_step else "multi_step"
    if f"{key}_median_seconds" not in report:
        return ""
    return f"{mode_label(report['settings'], one_step).capitalize()}: {report[f'{key}_median_seconds']:.1f} s. "


def benchmark_section(path: Path) -> str:
    spec = importlib.util.spec_from_file_location("benchmark_gpu", Path(__file__).with_name("benchmark_gpu.py"))
    benchmark_gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark_gpu)
    summary = benchmark_gpu.markdown_summary(json.loads(path.read_text()))
    return f"## Speed ({_shown(path)})\n\nMeasured by `benchmarks/benchmark_gpu.py`: {summary}"


SHIPPED_ROW = "one-step, fine-tuned, +autoencoder detail"  # the ablation's row of the shipped defaults


def _measured_rows(path: Path, section: str) -> dict[str, dict[str, Any]]:
    """The metrics of an ablation JSON's ``section`` by row name (empty when the file does not exist)."""
    if not path.exists():
        return {}
    return {row["name"]: row["metrics"] for row in json.loads(path.read_text())[section]}


def clean_photos_limitation(path: Path) -> str:
    """A limitation line from `benchmarks/ablation.py --clean`: what the shipped defaults do to photos without any
    reflection (empty when that has not been measured)."""
    shipped = _measured_rows(path, "clean_photos").get(SHIPPED_ROW)
    if shipped is None:
        return ""
    return (f"- It invents a reflection in photos that hold none: on {shipped['count']} held-out crops without any "
            f"reflection its transmission is {shipped['t_psnr']:.2f} dB PSNR / {shipped['t_ssim']:.3f} SSIM from the "
            f"photo (mean reflection {shipped['r_mean']:.3f}; {shipped['changed']:.0%} of them below "
            f"{shipped['changed_below_psnr']:g} dB; `{_shown(path)}`). It was trained only on mixtures that hold a "
            "reflection.\n")


def faint_reflections_limitation(path: Path) -> str:
    """A limitation line from `benchmarks/ablation.py` on mixtures of the `faint` recipe alone: the shipped defaults'
    transmission against the photo's own score (empty when that has not been measured)."""
    rows = _measured_rows(path, "rows")
    shipped, photo = rows.get(SHIPPED_ROW), rows.get("mixture as T")
    if shipped is None or photo is None:
        return ""
    low, high = FAINT_ATTENUATION
    return (f"- It takes far too much out of photos with a faint reflection: on {shipped['count']} held-out mixtures "
            f"of the `faint` recipe (attenuation {low:g}-{high:g}) its transmission is {shipped['t_psnr']:.2f} dB "
            f"PSNR / {shipped['t_ssim']:.3f} SSIM from the true scene, the photo itself {photo['t_psnr']:.2f} dB / "
            f"{photo['t_ssim']:.3f} (`{_shown(path)}`).\n")


def build_card(results: Path, base_model: str | None) -> str:
    base = f"base_model: {base_model}\n" if base_model else ""
    sections = [FRONT_MATTER.format(base_model=base), INTRO, shipped_section(Path(reflection_separation.DEFAULT_MODEL), results / "ablation_small_model.json")]
    ablations = sorted(results.glob("ablation*.json"))
    benchmarks = sorted(results.glob("h200*.json"))
    if not ablations:
        sections.append(
            "## Results\n\nNo trained model has been measured yet: `benchmarks/results/` holds no ablation. "
            "This card is regenerated from the measured JSON files when they exist.\n"
        )
    sections += [ablation_section(path) for path in ablations]
    sections += [benchmark_section(path) for path in benchmarks]
    sections += [cpu_section(path) for path in sorted(results.glob("cpu_timing*.json"))]
    sections += [PAPER, LIMITATIONS + clean_photos_limitation(results / "clean_photos_small_model.json")
                 + faint_reflections_limitation(results / "faint_reflections_small_model.json"), TRAINING_DATA]
    return "\n".join(sections)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write model_card.md from benchmarks/results/*.json.")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--output", type=Path, default=ROOT / "model_card.md")
    parser.add_argument("--base-model", default=None, help="Hub id of the base model, if fine-tuned from one")
    parser.add_argument("--check", action="store_true", help="exit 1 if the card differs from what would be written")
    args = parser.parse_args(argv)
    card = build_card(args.results, args.base_model)
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != card:
            print(f"{args.output} is out of date: run python benchmarks/make_model_card.py", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(card)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
