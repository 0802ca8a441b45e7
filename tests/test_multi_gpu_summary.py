"""benchmarks/multi_gpu_summary.py: throughput without the start-up window, loss compared at shared steps."""

import json

import pytest

from .conftest import load_script

summary = load_script("benchmarks/multi_gpu_summary.py")


def write_log(path, processes, losses, images_per_s):
    records = [
        {"stage": "unet", "step": 10 * (i + 1), "loss": loss, "images_per_s": ips, "it_per_s": ips / 32,
         "memory_gib": 1.0 + i, "processes": processes}
        for i, (loss, ips) in enumerate(zip(losses, images_per_s))
    ]
    records.insert(1, {"stage": "unet", "step": 10, "val_psnr_t": 11.0})  # validation records are skipped
    path.write_text("\n".join(json.dumps(r) for r in records))
    return path


def test_summary_of_two_runs(tmp_path):
    one = write_log(tmp_path / "one.jsonl", 1, [1.0, 0.5, 0.4], [10.0, 100.0, 120.0])
    two = write_log(tmp_path / "two.jsonl", 2, [1.0, 0.55, 0.3, 0.2], [5.0, 150.0, 170.0, 160.0])
    report = summary.main(["--log", f"one={one}", "--log", f"two={two}", "--output", str(tmp_path / "r.json")])
    assert report["runs"]["one"]["images_per_s"] == pytest.approx(110.0)  # median of the windows after the first
    assert report["runs"]["two"]["images_per_s_per_gpu"] == pytest.approx(80.0)
    assert report["runs"]["two"]["throughput_ratio_to_one"] == pytest.approx(160.0 / 110.0)
    assert report["runs"]["two"]["peak_memory_gib_first_process"] == 4.0
    curves = report["loss_curves"]
    assert curves["shared_steps"] == [10, 20, 30]
    diff = curves["relative_loss_difference_to_one"]["two"]
    assert diff["per_step"] == pytest.approx([0.0, 0.1, -0.25])
    assert diff["max_abs"] == pytest.approx(0.25)
    assert json.loads((tmp_path / "r.json").read_text()) == report


def test_summary_needs_two_logs(tmp_path):
    one = write_log(tmp_path / "one.jsonl", 1, [1.0, 0.5], [10.0, 100.0])
    with pytest.raises(SystemExit):
        summary.main(["--log", f"one={one}", "--output", str(tmp_path / "r.json")])
