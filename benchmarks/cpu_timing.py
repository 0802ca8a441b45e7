"""Time one photo through a pipeline on the CPU with its default settings (the shipped model by default).

Issue 5 asks that a 512x512 photo separates in at most 20 s on 2 CPU cores with the defaults. This script
measures that: one warm-up call, then ``--repeats`` timed calls on a fixed photo (scikit-image's coffee,
resized), with torch limited to ``--threads`` threads, and writes the times with the CPU model and versions. The same
is timed in both modes whatever the default: one step (``one_step=True``: one UNet call) and the sampling loop
(``one_step=False``, the model's ``default_denoising_steps``). ``--dtype auto`` (the default) is the CLI's default:
bfloat16 on a CPU with native bfloat16, float32 elsewhere. ``--processing-resolutions`` also times the one-step mode
at each of those processing resolutions (what choosing the default costs).

    python benchmarks/cpu_timing.py --threads 2 --output benchmarks/results/cpu_timing.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import diffusers
import torch
from PIL import Image
from skimage import data as skimage_data

import reflection_separation
from reflection_separation import ReflectionSeparationPipeline
from reflection_separation.cli import DTYPE_CHOICES, resolve_dtype


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def time_calls(
    pipe: ReflectionSeparationPipeline, photo: Image.Image, repeats: int, **kwargs
) -> tuple[list[float], Any]:
    """Seconds of ``repeats`` calls after one warm-up call (each with its own seed), and the last output."""
    pipe(photo, generator=torch.Generator().manual_seed(0), **kwargs)
    seconds = []
    for repeat in range(repeats):
        start = time.perf_counter()
        out = pipe(photo, generator=torch.Generator().manual_seed(repeat), **kwargs)
        seconds.append(time.perf_counter() - start)
    return seconds, out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=reflection_separation.DEFAULT_MODEL, help="model folder or Hub id")
    parser.add_argument("--size", type=int, default=512, help="side of the square test photo")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU cores used)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help="weights dtype (default: the CLI's)")
    parser.add_argument("--processing-resolutions", type=int, nargs="*", default=[],
                        help="also time the one-step mode at each of these processing resolutions")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    dtype = resolve_dtype(args.dtype, torch.device("cpu"))
    pipe = ReflectionSeparationPipeline.from_pretrained(args.model, torch_dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    photo = Image.fromarray(skimage_data.coffee()).resize((args.size, args.size), Image.BICUBIC)

    one_step_seconds, one_step_out = time_calls(pipe, photo, args.repeats, one_step=True)
    multi_step_seconds, multi_step_out = time_calls(pipe, photo, args.repeats, one_step=False)
    by_resolution = {}
    for size in args.processing_resolutions:
        times, _ = time_calls(pipe, photo, args.repeats, one_step=True, processing_resolution=size)
        by_resolution[str(size)] = {"seconds": times, "median_seconds": statistics.median(times)}
    # the defaults are one of the two modes, so their times are that mode's, not a third run of it
    one_step = pipe.config.default_one_step
    seconds, out = (one_step_seconds, one_step_out) if one_step else (multi_step_seconds, multi_step_out)
    report = {
        "description": f"One {args.size}x{args.size} photo, the model's default settings, after one warm-up call.",
        "model": str(args.model),
        "settings": {
            "threads": args.threads,
            "dtype": str(dtype).removeprefix("torch."),
            "one_step": one_step,
            "processing_resolution": pipe.config.default_processing_resolution,
            "num_inference_steps": pipe.config.default_denoising_steps,
            "composition_guidance": pipe.config.default_composition_guidance,
            "disjoint_strength": pipe.config.default_disjoint_strength,
            "fgfm_strength": pipe.config.default_fgfm_strength,
        },
        "output_size": list(out.transmission[0].size),
        "seconds": seconds,
        "median_seconds": statistics.median(seconds),
        "one_step_seconds": one_step_seconds,
        "one_step_median_seconds": statistics.median(one_step_seconds),
        "multi_step_seconds": multi_step_seconds,
        "multi_step_median_seconds": statistics.median(multi_step_seconds),
        "one_step_by_processing_resolution": by_resolution,
        "cpu": cpu_name(),
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version()},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['median_seconds']:.2f} s (median of {args.repeats}; one step: "
          f"{report['one_step_median_seconds']:.2f} s, {report['settings']['num_inference_steps']} steps: "
          f"{report['multi_step_median_seconds']:.2f} s) on {args.threads} threads, {report['cpu']}")
    return report


if __name__ == "__main__":
    main()
