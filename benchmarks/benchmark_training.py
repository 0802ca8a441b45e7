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

Before the rows, `--breakdown unet:256` takes one step of the small model apart (making the batch, the encodes,
forward + backward; wall and GPU-busy time, host syncs) and `--loss-curve unet:300:64` trains the same short run
on the old and the new path with two seeds each, to show that the new path trains the same.

    python benchmarks/benchmark_training.py --photos data/pack --output benchmarks/results/training_h200.json
    python benchmarks/benchmark_training.py --photos data/pack --models small --small-rows "" \
        --breakdown unet:256 --loss-curve unet:300:64 --output OUT.json
    python benchmarks/benchmark_training.py --summarize benchmarks/results/training_h200.json
    python benchmarks/benchmark_training.py --photos PHOTOS --tiny --output /tmp/t.json      # CPU smoke run
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.autograd import DeviceType

from reflection_separation.data import BatchedSynthesis, ReflectionSynthesizer, SyntheticReflectionDataset
from reflection_separation.training import BatchSource, TrainingConfig, train_stage, training_step

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
    for item in filter(None, text.split(",")):
        stage, path, mode, batch = item.split(":")
        if path not in ("loader", "device") or mode not in ("eager", "compiled"):
            raise ValueError(f"Row {item!r}: path must be loader|device and mode eager|compiled.")
        rows.append((stage, path, mode == "compiled", int(batch)))
    return rows


def parse_breakdowns(text: str) -> list[tuple[str, int]]:
    """`stage:batch,...` -> [(stage, batch)], e.g. `unet:256`."""
    return [(stage, int(batch)) for stage, batch in (item.split(":") for item in text.split(",") if item)]


def run_config(model: dict[str, Any], photos: Path, folder: Path, resolution: int, stage: str, path: str,
               compiled: bool | None, batch: int, steps: int, workers: int, synthesis: dict[str, Any],
               log_steps: int | None = None, seed: int = 0) -> TrainingConfig:
    log_steps = log_steps or max(1, steps // 4)
    return TrainingConfig.from_dict({
        "output_dir": str(folder), "photos": str(photos), "model": model, "resolution": resolution, "seed": seed,
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


def timed_part(part: Callable[[], Any], device: torch.device, repeats: int) -> dict[str, Any]:
    """Milliseconds per call of ``part`` until the device has finished it (mean over ``repeats`` back-to-back calls
    after one warm-up) and, on CUDA, the milliseconds its kernels keep the GPU busy (profiled over one call: well
    under ``ms`` means the host is the limit), how many synchronizing CUDA calls one call makes, and where the
    first one is."""
    part()
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    synchronize()
    result: dict[str, Any] = {}
    if device.type == "cuda":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                part()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        result["host_syncs"] = sum("synchroniz" in str(w.message) for w in caught)
        if result["host_syncs"]:
            torch.cuda.set_sync_debug_mode("error")
            try:
                part()
            except RuntimeError:
                result["first_sync"] = traceback.format_exc(limit=-6)[-1500:]
            finally:
                torch.cuda.set_sync_debug_mode("default")
        synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profiler:
            part()
            synchronize()
        result["busy_ms"] = sum(e.device_time_total for e in profiler.events()
                                if e.device_type == DeviceType.CUDA and not e.is_user_annotation) / 1e3
    start = time.perf_counter()
    for _ in range(repeats):
        part()
    synchronize()
    result["ms"] = 1e3 * (time.perf_counter() - start) / repeats
    return result


def measure_breakdown(config: TrainingConfig, stage: str, batch: int, device: torch.device, repeats: int,
                      compiled: bool, layouts: list[str]) -> dict[str, Any]:
    """Where a step of ``stage`` spends its time: making a batch of mixtures on the device (`BatchedSynthesis`),
    the three VAE encodes alone, and the objective's forward + backward on a fixed batch, eager and with
    ``torch.compile``, in NCHW and channels-last layout."""
    torch.backends.cudnn.benchmark = device.type == "cuda"  # as in training
    step, objective = training_step(config, stage, batch, device)
    dataset = SyntheticReflectionDataset(config.photos, resolution=config.resolution, num_samples=10**6,
                                         synthesizer=ReflectionSynthesizer.from_dict(config.synthesis))
    source = BatchSource(dataset, batch, config.seed, 0, 1, BatchedSynthesis(dataset, device))
    steps = itertools.count()
    data = source.batch(0, 0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.stage_precision(stage) == "bf16")

    def encode() -> Any:
        with autocast:
            return objective.encode(data["mixture"], data["transmission"], data["reflection"])

    report: dict[str, Any] = {"stage": stage, "batch": batch, "resolution": config.resolution, "repeats": repeats,
                              "make_batch": timed_part(lambda: source.batch(next(steps), 0), device, repeats)}
    convolutional = [m for m in (objective.pipe.vae, objective.pipe.unet, objective.trainable) if m is not None]
    modes = [False, True] if compiled else [False]
    for layout in layouts:
        for module in convolutional:
            module.to(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)
        for mode in modes:
            modules = objective.compiled_modules()
            if mode:
                for module in modules:
                    module.compile()
            name = f"{layout}_{'compiled' if mode else 'eager'}"
            try:
                start = time.perf_counter()
                step()
                first_s = time.perf_counter() - start
                report[name] = {"encode": timed_part(encode, device, repeats),
                                "forward_backward": timed_part(step, device, repeats), "first_call_s": first_s}
            except Exception as error:  # noqa: BLE001 - a failed form (inductor, memory) is reported, not fatal
                report[name] = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
            gpu_bench.uncompile(*modules)
            print(json.dumps({name: report[name]}), flush=True)
    return report


def loss_curves(model: dict[str, Any], photos: Path, scratch: Path, resolution: int, stage: str, steps: int,
                batch: int, workers: int, synthesis: dict[str, Any]) -> dict[str, Any]:
    """The same short run on the old path (`loader`, eager) and the new one (`device`, compiled on CUDA), each with two
    seeds: the loss every 20th of the run, and the mean loss over its second half. The old-new difference at one
    seed is compared with the difference between two seeds of one path (the run-to-run noise)."""
    runs: dict[str, Any] = {}
    for path, compiled in (("loader", False), ("device", None)):  # None: compiled on CUDA
        for seed in (0, 1):
            name = f"{path}_seed{seed}"
            config = run_config(model, photos, scratch / f"curve_{name}", resolution, stage, path, compiled, batch,
                                steps, workers, synthesis, log_steps=max(1, steps // 20), seed=seed)
            start = time.perf_counter()
            train_stage(config, stage)
            log = [json.loads(line) for line in (Path(config.output_dir) / stage / "log.jsonl").read_text().splitlines()]
            losses = [(r["step"], r["loss"]) for r in log if "loss" in r]
            late = [loss for step, loss in losses if step > steps // 2]
            runs[name] = {"losses": losses, "second_half_mean": sum(late) / len(late),
                          "wall_s": time.perf_counter() - start}
            print(json.dumps({name: runs[name]["second_half_mean"]}), flush=True)
    mean = {name: run["second_half_mean"] for name, run in runs.items()}
    return {
        "stage": stage, "steps": steps, "batch": batch, "resolution": resolution, "runs": runs,
        "old_minus_new": [mean[f"loader_seed{s}"] - mean[f"device_seed{s}"] for s in (0, 1)],
        "seed_spread": [mean["loader_seed0"] - mean["loader_seed1"], mean["device_seed0"] - mean["device_seed1"]],
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


def save_report(report: dict[str, Any], path: Path) -> None:
    """Rewrite the JSON report: after every part, so that a run stopped by a time limit keeps what it measured."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


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
            for stage, batch in parse_breakdowns(args.breakdown if name == "small" else ""):
                config = run_config(model, args.photos, Path(scratch) / f"{name}_breakdown", resolution, stage,
                                    "device", False, batch, args.steps, 0, synthesis)
                report.setdefault("breakdowns", []).append(
                    {"model": name, **measure_breakdown(config, stage, batch, device, args.breakdown_repeats,
                                                        not args.tiny, args.breakdown_layouts.split(","))})
                gpu_bench.clear_memory()
                save_report(report, args.output)
            if args.loss_curve and name == "small":
                stage, steps, batch = args.loss_curve.split(":")
                report["loss_curves"] = loss_curves(model, args.photos, Path(scratch), resolution, stage, int(steps),
                                                    int(batch), args.workers, synthesis)
                save_report(report, args.output)
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
                save_report(report, args.output)
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
    parser.add_argument("--breakdown", default="", help="stage:batch,... of the small model to take apart first "
                        "(make_batch, encode, forward + backward; eager and compiled, NCHW and channels-last)")
    parser.add_argument("--breakdown-repeats", type=int, default=10)
    parser.add_argument("--breakdown-layouts", default="nchw,channels_last", help="comma list of nchw, channels_last")
    parser.add_argument("--loss-curve", default="", metavar="STAGE:STEPS:BATCH", help="a short run of the small "
                        "model on the old and the new path, two seeds each, to compare their losses")
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
