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


def test_breakdown_and_loss_curves_on_cpu(tmp_path):
    """The breakdown times each part; on CPU the old and the new data path train to the same losses (the batched
    synthesis equals the per-sample one), so the loss-curve comparison must find no difference beyond float noise."""
    benchmark = load_script("benchmarks/benchmark_training.py")
    photos = write_photos(tmp_path / "photos")
    report = benchmark.main([
        "--photos", str(photos), "--output", str(tmp_path / "t.json"), "--tiny", "--models", "small", "--workers", "0",
        "--small-rows", "", "--breakdown", "unet:2", "--breakdown-repeats", "1", "--loss-curve", "unet:8:2",
    ])
    (breakdown,) = report["breakdowns"]
    assert breakdown["make_batch"]["ms"] > 0 and breakdown["make_batch"].get("host_syncs") is None
    for layout in ("nchw_eager", "channels_last_eager"):
        assert breakdown[layout]["encode"]["ms"] > 0 and breakdown[layout]["forward_backward"]["ms"] > 0
    curves = report["loss_curves"]
    for name, run in curves["runs"].items():
        late = [loss for step, loss in run["losses"] if step > 4]
        assert len(run["losses"]) == 8 and run["second_half_mean"] == sum(late) / len(late), name
    assert max(abs(d) for d in curves["old_minus_new"]) < 1e-4
    assert max(abs(d) for d in curves["seed_spread"]) > 1e-3  # another seed is another run
