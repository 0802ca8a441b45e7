"""Training throughput end to end (photo files on disk -> optimizer step), peak memory and the compute floor.

Each row runs the real training loop (`reflection_separation.training.train_stage`) for a few steps in a temporary
folder and reads its log: mixtures per second over the steps after the first log interval (which holds
`torch.compile`'s warm-up and cuDNN's autotuning), peak memory, and whether compilation fell back to eager.
Rows differ in
  path      `loader`: per-sample PIL decoding and synthesis in DataLoader workers (the path every run used before);
            `device`: `BatchedSynthesis`, photos decoded once and mixtures made on the training device
  compile   eager, or the stage's `torch.compile`
  batch     the global batch
The compute floor of a row is the FLOPs of one training step (forward + backward of the stage's objective,
counted by `torch.utils.flop_counter`) over the bf16 matmul rate measured in the same run; `floor_fraction` is
floor time / measured step time. Models: `small` (the shipped model's architecture, examples/configs/small_model.json,
at 256 px, every stage) and `sd21` (the Stable Diffusion 2.1 architecture with random weights, built in code as
in benchmark_gpu.py, UNet stage at 512 px).

    python benchmarks/benchmark_training.py --photos data/pack --output benchmarks/results/training_h200.json
    python benchmarks/benchmark_training.py --summarize benchmarks/results/training_h200.json
    python benchmarks/benchmark_training.py --photos PHOTOS --tiny --output /tmp/t.json      # CPU smoke run
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from reflection_separation.training import TrainingConfig, train_stage, training_step

ROOT = Path(__file__).resolve().parents[1]
SMALL_CONFIG = ROOT / "examples/configs/small_model.json"


def load_sibling(name: str) -> Any:
    """A module from this folder (``benchmarks/``), which is not a package."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_bench = load_sibling("benchmark_gpu")


def parse_rows(text: str) -> list[tuple[str, str, bool, int]]:
    """`stage:path:compile:batch,...` -> rows, e.g. `unet:loader:eager:64,unet:device:compiled:256`."""
    rows = []
    for item in text.split(","):
        stage, path, mode, batch = item.split(":")
        if path not in ("loader", "device") or mode not in ("eager", "compiled"):
            raise ValueError(f"Row {item!r}: path must be loader|device and mode eager|compiled.")
        rows.append((stage, path, mode == "compiled", int(batch)))
    return rows


def run_config(model: dict[str, Any], photos: Path, folder: Path, resolution: int, stage: str, path: str,
               compiled: bool, batch: int, steps: int, workers: int, synthesis: dict[str, Any]) -> TrainingConfig:
    log_steps = max(1, steps // 4)
    return TrainingConfig.from_dict({
        "output_dir": str(folder), "photos": str(photos), "model": model, "resolution": resolution,
        "mixed_precision": "bf16" if torch.cuda.is_available() else "no", "num_samples": 1_000_000,
        "validation_fraction": 0.15, "synthesis": synthesis, "batched_synthesis": path == "device",
        "stages": {stage: {"steps": steps, "batch_size": batch, "learning_rate": 1e-4, "checkpointing_steps": 10**9,
                           "validation_steps": 10**9, "log_steps": log_steps, "num_workers": workers,
                           "compile": compiled, "ema_decay": 0.999 if stage == "unet" else None}},
    })


def step_flops(config: TrainingConfig, stage: str, batch: int, device: torch.device) -> int:
    """FLOPs of one training step of `stage` (the objective's forward and backward) at this batch size."""
    step, objective = training_step(config, stage, batch, device)
    flops, _ = gpu_bench.count_flops(step)
    del step, objective
    gpu_bench.clear_memory()
    return flops


def measure_row(config: TrainingConfig, stage: str) -> dict[str, Any]:
    start = time.perf_counter()
    train_stage(config, stage)
    wall = time.perf_counter() - start
    log = [json.loads(line) for line in (Path(config.output_dir) / stage / "log.jsonl").read_text().splitlines()]
    intervals = [record for record in log if "images_per_s" in record]
    timed = intervals[1:] or intervals  # the first interval holds the warm-up
    seconds = sum(config.stages[stage].log_steps / r["it_per_s"] for r in timed)
    images = sum(config.stages[stage].log_steps / r["it_per_s"] * r["images_per_s"] for r in timed)
    return {
        "mixtures_per_s": images / seconds,
        "step_ms": 1e3 * seconds / (len(timed) * config.stages[stage].log_steps),
        "first_interval_s": config.stages[stage].log_steps / intervals[0]["it_per_s"],
        "peak_memory_gib": max(r["memory_gib"] for r in intervals),
        "wall_s_incl_setup": wall,
        "compile_fallback": [r["error"] for r in log if r.get("event") == "compile_fallback"],
        "final_loss": intervals[-1]["loss"],
    }


def models(args: argparse.Namespace, scratch: Path, device: torch.device) -> dict[str, tuple[dict[str, Any], int]]:
    """Model name -> (TrainingConfig.model entry, resolution)."""
    small = json.loads(SMALL_CONFIG.read_text())
    chosen: dict[str, tuple[dict[str, Any], int]] = {}
    if "small" in args.models:
        model = {"from_scratch": {}} if args.tiny else small["model"]
        chosen["small"] = (model, 32 if args.tiny else 256)
    if "sd21" in args.models:
        folder = scratch / "sd21_random"
        gpu_bench.build_sd21_pipeline(2, device, torch.float32).save_pretrained(folder, remote_code=False)
        chosen["sd21"] = ({"pipeline": str(folder)}, 512)
    return chosen


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    runtime = gpu_bench.Runtime(device, torch.bfloat16 if device.type == "cuda" else torch.float32, 2, 5)
    matmul = gpu_bench.measure_matmul(runtime, 8192 if device.type == "cuda" else 256)
    rate = matmul["tflops"] * 1e12
    synthesis = json.loads(SMALL_CONFIG.read_text()).get("synthesis", {})
    report: dict[str, Any] = {
        "description": __doc__.split("\n\n")[0],
        "environment": gpu_bench.environment(runtime),
        "matmul": matmul,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "synthesis": synthesis,
        "rows": [],
    }
    with tempfile.TemporaryDirectory() as scratch:
        for name, (model, resolution) in models(args, Path(scratch), device).items():
            rows = parse_rows(args.small_rows if name == "small" else args.sd21_rows)
            flops_cache: dict[tuple[str, int], int] = {}
            for index, (stage, path, compiled, batch) in enumerate(rows):
                folder = Path(scratch) / f"{name}_{index}"
                config = run_config(model, args.photos, folder, resolution, stage, path, compiled, batch, args.steps,
                                    args.workers, synthesis)
                row: dict[str, Any] = {"model": name, "stage": stage, "path": path, "compile": compiled,
                                       "batch": batch, "resolution": resolution}
                try:
                    if (stage, batch) not in flops_cache:
                        flops_cache[stage, batch] = step_flops(config, stage, batch, device)
                    row.update(measure_row(config, stage))
                    row["flops_per_step"] = flops_cache[stage, batch]
                    row["floor_ms"] = 1e3 * row["flops_per_step"] / rate
                    row["floor_fraction"] = row["floor_ms"] / row["step_ms"]
                except Exception as error:  # noqa: BLE001 - one failed row (e.g. out of memory) is reported, not fatal
                    row["error"] = f"{type(error).__name__}: {str(error)[:500]}"
                gpu_bench.clear_memory()
                report["rows"].append(row)
                print(json.dumps(row), flush=True)
                args.output.parent.mkdir(parents=True, exist_ok=True)
                args.output.write_text(json.dumps(report, indent=2) + "\n")
    return report


def markdown(report: dict[str, Any]) -> str:
    """Table of every row, with its speed relative to the `loader`/eager row of the same model and stage."""
    lines = [
        f"GPU: {report['environment'].get('gpu', report['environment']['cpu'])}, torch {report['environment']['torch']}, "
        f"bf16 matmul {report['matmul']['tflops']:.0f} TFLOP/s",
        "",
        "| model | stage | path | compile | batch | mixtures/s | x loader | step ms | floor % | peak GiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        if "error" in row:
            lines.append(f"| {row['model']} | {row['stage']} | {row['path']} | {row['compile']} | {row['batch']} | "
                         f"failed: {row['error'][:60]} | | | | |")
            continue
        base = next((r for r in report["rows"] if r["model"] == row["model"] and r["stage"] == row["stage"]
                     and r["path"] == "loader" and not r["compile"] and "error" not in r), None)
        ratio = f"{row['mixtures_per_s'] / base['mixtures_per_s']:.1f}x" if base else "-"
        compile_note = "yes" if row["compile"] and not row["compile_fallback"] else ("fell back" if row["compile"] else "no")
        lines.append(
            f"| {row['model']} | {row['stage']} | {row['path']} | {compile_note} | {row['batch']} | "
            f"{row['mixtures_per_s']:.0f} | {ratio} | {row['step_ms']:.1f} | {100 * row['floor_fraction']:.1f} | "
            f"{row['peak_memory_gib']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, help="photo folder (e.g. the training pack)")
    parser.add_argument("--output", type=Path, help="JSON report path")
    parser.add_argument("--models", default="small,sd21", help="comma list of small, sd21")
    parser.add_argument("--small-rows", default=(
        "unet:loader:eager:64,unet:device:eager:64,unet:device:eager:256,unet:device:compiled:256,"
        "unet:device:compiled:512,vae:loader:eager:16,vae:device:eager:64,composition:loader:eager:32,"
        "composition:device:compiled:256,fgfm:loader:eager:16,fgfm:device:eager:64,control:loader:eager:32,"
        "control:device:eager:256"), help="stage:path:eager|compiled:batch,...")
    parser.add_argument("--sd21-rows", default="unet:loader:eager:16,unet:device:eager:16,unet:device:compiled:32")
    parser.add_argument("--steps", type=int, default=24, help="training steps per row (a quarter are warm-up)")
    parser.add_argument("--workers", type=int, default=8, help="DataLoader workers of the loader rows")
    parser.add_argument("--tiny", action="store_true", help="the test suite's tiny model at 32 px (CPU smoke runs)")
    parser.add_argument("--summarize", type=Path, metavar="JSON", help="print the Markdown table of a report")
    args = parser.parse_args(argv)
    if args.summarize:
        print(markdown(json.loads(args.summarize.read_text())))
        return None
    if args.photos is None or args.output is None:
        parser.error("--photos and --output are needed to run (or --summarize JSON)")
    args.models = [name for name in args.models.split(",") if name]
    report = run(args)
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
