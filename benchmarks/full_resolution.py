"""Full-resolution output: plain upsampling against the detail-preserving modes, on held-out mixtures at full size.

Mixtures are made at the photos' own size (>= 1024 px on the long side with the gathered corpus) from the
validation split (file-name hash, as in training) with a training config's recipes; the pipeline separates each
at its `processing_resolution` and resizes back with every `detail_transfer` mode, without and with
`autoencoder_detail` (at the processing resolution, before the resize). With `--processing-resolutions` it also
separates them with the model's default settings at each of those processing resolutions (how the shipped model's
default is chosen; `--no-mode-rows` runs only this sweep). Reported per row: PSNR / SSIM of T and R (the evaluation
harness's metrics), the mean |T + R - I|, the seconds the row took, and each mixture's T and R PSNR (for paired
comparisons of rows).

    python benchmarks/full_resolution.py --photos data/photos --synthesis-config examples/configs/small_model.json \
        --output benchmarks/results/full_resolution_small_model.json
    python benchmarks/full_resolution.py --photos data/photos --synthesis-config examples/configs/small_model.json \
        --num-images 40 --processing-resolutions 256 320 384 448 512 --no-mode-rows --device cpu \
        --output benchmarks/results/processing_resolution_small_model.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import reflection_separation
from reflection_separation import ReflectionSeparationPipeline
from reflection_separation.data import ReflectionSynthesizer, is_validation_file, list_images, load_image, pil_to_tensor
from reflection_separation.evaluation import BenchmarkItem, format_markdown_table, image_metrics, summarize
from reflection_separation.image_processing import DETAIL_TRANSFER_MODES


def held_out_mixtures(args: argparse.Namespace, synthesizer: ReflectionSynthesizer) -> list[BenchmarkItem]:
    """Pairs of validation photos of one size class, cropped to a common size, mixed by the recipes."""
    photos = [p for p in list_images(args.photos)
              if is_validation_file(p.relative_to(args.photos).as_posix(), args.validation_fraction)]
    images = [pil_to_tensor(load_image(p)) for p in photos]
    images = [image for image in images if max(image.shape[-2:]) >= args.min_long_side]
    items = []
    for index in range(min(args.num_images, len(images) - 1)):
        transmission, reflection = images[index], images[(index + 1) % len(images)]
        height = min(transmission.shape[1], reflection.shape[1])
        width = min(transmission.shape[2], reflection.shape[2])
        generator = torch.Generator().manual_seed(args.seed + index)
        mixture, transmission, reflection = synthesizer(transmission[:, :height, :width], reflection[:, :height, :width],
                                                        generator)
        items.append(BenchmarkItem(photos[index].name, *(t.permute(1, 2, 0).numpy() for t in
                                                         (mixture, transmission, reflection))))
    if not items:
        raise ValueError(f"No validation photos with a long side >= {args.min_long_side} under {args.photos}.")
    return items


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default=reflection_separation.DEFAULT_MODEL)
    parser.add_argument("--photos", type=Path, required=True)
    parser.add_argument("--synthesis-config", type=Path, help="training config whose `synthesis` recipes mix")
    parser.add_argument("--validation-fraction", type=float, default=0.15)
    parser.add_argument("--min-long-side", type=int, default=1024)
    parser.add_argument("--num-images", type=int, default=12)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--processing-resolutions", type=int, nargs="*", default=[],
                        help="also separate at each of these processing resolutions with the default settings")
    parser.add_argument("--no-mode-rows", action="store_true", help="skip the detail_transfer x autoencoder_detail rows")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)

    synthesis = json.loads(args.synthesis_config.read_text()).get("synthesis", {}) if args.synthesis_config else {}
    items = held_out_mixtures(args, ReflectionSynthesizer.from_dict(synthesis))
    pipe = ReflectionSeparationPipeline.from_pretrained(args.pipeline, torch_dtype=torch.float32).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    rows = [{"name": "mixture as T", "metrics": summarize([image_metrics(i, i.mixture, None) for i in items])}]
    runs = [] if args.no_mode_rows else [
        (f"detail_transfer={mode}" + (", autoencoder_detail" if detail else ""),
         {"detail_transfer": mode, "autoencoder_detail": detail})
        for detail in (False, True) for mode in DETAIL_TRANSFER_MODES
    ]
    runs += [(f"processing_resolution={size}", {"processing_resolution": size}) for size in args.processing_resolutions]
    for name, settings in runs:
        start = time.perf_counter()
        outputs = [pipe(item.mixture, generator=torch.Generator().manual_seed(args.seed), output_type="np", **settings)
                   for item in items]
        seconds = time.perf_counter() - start
        transmissions = [out.transmission[0] for out in outputs]
        reflections = [out.reflection[0] for out in outputs]
        per_item = [image_metrics(i, t, r) for i, t, r in zip(items, transmissions, reflections)]
        metrics = summarize(per_item)
        consistency = float(np.mean([np.abs(t + r - i.mixture).mean()
                                     for i, t, r in zip(items, transmissions, reflections)]))
        rows.append({"name": name, "settings": settings, "metrics": metrics, "t_plus_r_error": consistency,
                     "seconds": seconds, "t_psnr_per_item": [m["t_psnr"] for m in per_item],
                     "r_psnr_per_item": [m["r_psnr"] for m in per_item]})
    report = {
        "description": __doc__.split("\n\n")[0],
        "settings": {k: str(v) for k, v in vars(args).items()},
        "synthesis": synthesis,
        "sizes": [list(item.mixture.shape[:2]) for item in items],
        "processing_resolution": pipe.config.default_processing_resolution,
        "defaults": {"detail_transfer": pipe.config.default_detail_transfer,
                     "autoencoder_detail": pipe.config.default_autoencoder_detail,
                     "one_step": pipe.config.default_one_step},
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu",
        "versions": {"torch": torch.__version__},
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    table = format_markdown_table([(row["name"], row["metrics"]) for row in rows], label="Row")
    table += "\n" + "\n".join(f"{row['name']}: mean |T + R - I| = {row['t_plus_r_error']:.4f}, {row['seconds']:.1f} s"
                              for row in rows if "t_plus_r_error" in row) + "\n"
    args.output.with_suffix(".md").write_text(table)
    print(table)
    return report


if __name__ == "__main__":
    main()
