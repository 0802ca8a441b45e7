"""benchmarks/cpu_timing.py on the tiny model: the JSON records the times, the defaults and the output size."""

import json

from reflection_separation.components import build_pipeline

from .conftest import load_script

cpu_timing = load_script("benchmarks/cpu_timing.py")


def test_cpu_timing_writes_its_report(tmp_path):
    pipe = build_pipeline(seed=0)
    pipe.register_to_config(default_processing_resolution=32, default_denoising_steps=2)
    pipe.save_pretrained(tmp_path / "model")
    output = tmp_path / "timing.json"
    report = cpu_timing.main(["--model", str(tmp_path / "model"), "--size", "40", "--repeats", "2",
                              "--threads", "1", "--processing-resolutions", "16", "48", "--output", str(output)])
    assert json.loads(output.read_text()) == report
    assert len(report["seconds"]) == 2 and all(s > 0 for s in report["seconds"])
    assert report["median_seconds"] == sum(report["seconds"]) / 2
    assert len(report["one_step_seconds"]) == 2 and all(s > 0 for s in report["one_step_seconds"])
    assert report["one_step_median_seconds"] == sum(report["one_step_seconds"]) / 2
    assert len(report["multi_step_seconds"]) == 2 and all(s > 0 for s in report["multi_step_seconds"])
    assert report["multi_step_median_seconds"] == sum(report["multi_step_seconds"]) / 2
    assert report["settings"]["one_step"] is False
    assert report["output_size"] == [40, 40]
    assert report["settings"]["threads"] == 1 and report["settings"]["num_inference_steps"] >= 1
    assert report["settings"]["dtype"] == "float32"  # `auto` on a CPU without native bfloat16 (conftest)
    by_resolution = report["one_step_by_processing_resolution"]
    assert sorted(by_resolution) == ["16", "48"]
    assert all(len(entry["seconds"]) == 2 and entry["median_seconds"] > 0 for entry in by_resolution.values())
