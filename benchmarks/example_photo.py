"""Score the README's example photo: the shipped model's layers against the true layers, beside the input's score.

The example (`examples/images/coffee_through_glass.jpg`) is a synthetic mixture whose true transmission and
reflection are committed beside it, so the quick start's output can be measured, not only looked at. The photo is
separated with the model's defaults (as `reflection-separation separate --seed 0` does), the layers are rounded to
8 bits (what the CLI saves) and scored with the evaluation harness's metrics (`image_metrics`); the input scored as
its own transmission is the reference. With `--save-dir` the layers are written as the CLI names them, for
`examples/make_sheet.py`. With `--control` the ablation's control regressor (training stage `control`) separates
the same photo and is scored beside the model (its layers saved as `<photo>_control_<layer>.png`).

    python benchmarks/example_photo.py --output benchmarks/results/example_photo.json --save-dir out/
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch
from diffusers import UNet2DModel
from PIL import Image

import reflection_separation
from reflection_separation import ReflectionSeparationPipeline
from reflection_separation.evaluation import BenchmarkItem, image_metrics
from reflection_separation.training import run_control_regressor

IMAGES = Path(__file__).resolve().parent.parent / "examples" / "images"


def read_float(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=reflection_separation.DEFAULT_MODEL, help="model folder or Hub id")
    parser.add_argument("--photo", type=Path, default=IMAGES / "coffee_through_glass.jpg")
    parser.add_argument("--truth", type=Path, nargs=2, metavar=("T", "R"),
                        default=[IMAGES / "coffee_transmission_true.jpg", IMAGES / "coffee_reflection_true.jpg"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--control", help="also score this control regressor folder (training stage `control`)")
    parser.add_argument("--save-dir", type=Path, default=None, help="also write the layers here (PNG)")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)

    pipe = ReflectionSeparationPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    with Image.open(args.photo) as photo:
        out = pipe(photo.convert("RGB"), generator=torch.Generator().manual_seed(args.seed))
    layers = {"transmission": out.transmission[0], "reflection": out.reflection[0]}
    item = BenchmarkItem(args.photo.stem, read_float(args.photo), read_float(args.truth[0]), read_float(args.truth[1]))
    if args.control:
        regressor = UNet2DModel.from_pretrained(args.control).float().eval()
        with torch.no_grad():
            control_layers = run_control_regressor(regressor, torch.from_numpy(item.mixture).permute(2, 0, 1)[None])
        for name, layer in zip(("control_transmission", "control_reflection"), control_layers):
            layers[name] = Image.fromarray((layer[0].permute(1, 2, 0) * 255).round().byte().numpy())
    predicted = {name: np.asarray(layer, dtype=np.float32) / 255.0 for name, layer in layers.items()}
    report = {
        "description": "The README's example photo separated with the model's defaults, scored against its true layers.",
        "model": str(args.model),
        "photo": str(args.photo),
        "truth": [str(path) for path in args.truth],
        "settings": {"seed": args.seed, "one_step": pipe.config.default_one_step,
                     "num_inference_steps": pipe.config.default_denoising_steps,
                     "processing_resolution": pipe.config.default_processing_resolution,
                     "detail_transfer": pipe.config.default_detail_transfer},
        "size": list(layers["transmission"].size),
        "input": image_metrics(item, item.mixture, None),
        "separated": image_metrics(item, predicted["transmission"], predicted["reflection"]),
        **({"control": {"model": str(args.control), **image_metrics(
            item, predicted["control_transmission"], predicted["control_reflection"])}} if args.control else {}),
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version()},
    }
    if args.save_dir is not None:
        args.save_dir.mkdir(parents=True, exist_ok=True)
        for name, layer in layers.items():
            layer.save(args.save_dir / f"{args.photo.stem}_{name}.png")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"T {report['separated']['t_psnr']:.2f} dB / SSIM {report['separated']['t_ssim']:.3f} (input "
          f"{report['input']['t_psnr']:.2f} dB / {report['input']['t_ssim']:.3f}), R {report['separated']['r_psnr']:.2f} dB")
    return report


if __name__ == "__main__":
    main()
