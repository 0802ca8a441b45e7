"""Compare training logs of the same stage run on different numbers of GPUs with the same global batch.

Reads the JSONL logs the training stack writes (``<output_dir>/<stage>/log.jsonl``) and reports, per run,
the throughput (images/s in all and per GPU, without the first logging window, which holds the start-up),
the peak memory of the first process, and the loss at the steps the runs share, with the relative
difference to the first run named. Example:

    python benchmarks/multi_gpu_summary.py --log 4gpu=benchmarks/results/multi_gpu/unet_4gpu.jsonl \\
        --log 1gpu=benchmarks/results/multi_gpu/unet_1gpu.jsonl --output benchmarks/results/multi_gpu_unet.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any


def read_log(path: Path) -> list[dict[str, Any]]:
    """The training records (those with a loss) of a log, in step order."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted((r for r in records if "loss" in r), key=lambda r: r["step"])


def summarize_run(records: list[dict[str, Any]]) -> dict[str, Any]:
    if len(records) < 2:
        raise ValueError("A log needs at least two logged windows (the first one holds the start-up).")
    steady = records[1:]
    processes = {r["processes"] for r in records}
    images_per_s = statistics.median(r["images_per_s"] for r in steady)
    return {
        "processes": sorted(processes),
        "steps": [records[0]["step"], records[-1]["step"]],
        "images_per_s": images_per_s,
        "images_per_s_per_gpu": images_per_s / max(processes),
        "it_per_s": statistics.median(r["it_per_s"] for r in steady),
        "peak_memory_gib_first_process": max(r["memory_gib"] for r in records),
    }


def compare(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    names = list(runs)
    shared = sorted(set.intersection(*({r["step"] for r in records} for records in runs.values())))
    losses = {name: {r["step"]: r["loss"] for r in records} for name, records in runs.items()}
    reference = names[0]
    relative = {
        name: [losses[name][s] / losses[reference][s] - 1 for s in shared] for name in names[1:]
    }
    return {
        "shared_steps": shared,
        "loss": {name: [losses[name][s] for s in shared] for name in names},
        f"relative_loss_difference_to_{reference}": {
            name: {"per_step": values, "mean": statistics.fmean(values), "max_abs": max(map(abs, values))}
            for name, values in relative.items()
        },
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", action="append", required=True, help="NAME=PATH of a log.jsonl; two or more")
    parser.add_argument("--note", default="", help="what differs between the runs besides the GPU count")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    if len(args.log) < 2 or any("=" not in entry for entry in args.log):
        parser.error("pass two or more --log NAME=PATH")
    runs = {name: read_log(Path(path)) for name, path in (entry.split("=", 1) for entry in args.log)}
    report = {
        "logs": dict(entry.split("=", 1) for entry in args.log),
        "note": args.note,
        "runs": {name: summarize_run(records) for name, records in runs.items()},
        "loss_curves": compare(runs),
    }
    first, *others = report["runs"]
    for name in others:
        report["runs"][name]["throughput_ratio_to_" + first] = (
            report["runs"][name]["images_per_s"] / report["runs"][first]["images_per_s"]
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
