"""The training benchmark end to end on CPU with the tiny model (the GPU numbers come from the same code)."""

import json

from .conftest import load_script, write_photos


def test_training_benchmark_runs_rows_and_summarizes(tmp_path, capsys):
    benchmark = load_script("benchmarks/benchmark_training.py")
    photos = write_photos(tmp_path / "photos")
    output = tmp_path / "training.json"
    report = benchmark.main([
        "--photos", str(photos), "--output", str(output), "--tiny", "--models", "small", "--steps", "4",
        "--workers", "0", "--small-rows", "unet:loader:eager:2,unet:device:eager:2,composition:device:eager:4",
    ])
    rows = json.loads(output.read_text())["rows"]
    assert rows == report["rows"] and [(r["stage"], r["path"]) for r in rows] == [
        ("unet", "loader"), ("unet", "device"), ("composition", "device")]
    for row in rows:
        assert "error" not in row, row
        assert row["mixtures_per_s"] > 0 and row["flops_per_step"] > 0 and row["floor_ms"] > 0
        # step time = batch / rate, and the floor fraction is floor / step time
        assert abs(row["step_ms"] * row["mixtures_per_s"] / 1e3 - row["batch"]) < 1e-6 * row["batch"]
        assert abs(row["floor_fraction"] - row["floor_ms"] / row["step_ms"]) < 1e-9
    # The UNet stage's step does the same work on both data paths.
    assert rows[0]["flops_per_step"] == rows[1]["flops_per_step"]
    capsys.readouterr()
    benchmark.main(["--summarize", str(output)])
    table = capsys.readouterr().out
    assert "| small | unet | device | no | 2 |" in table and "x loader" in table
