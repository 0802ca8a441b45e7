"""The full-resolution benchmark runs every detail-transfer mode on held-out mixtures (tiny model, CPU)."""

import json

import numpy as np

from reflection_separation.components import build_pipeline

from .conftest import load_script, write_photos


def test_full_resolution_benchmark_rows(tmp_path):
    photos = write_photos(tmp_path / "photos")
    pipe = build_pipeline()
    pipe.register_to_config(default_processing_resolution=32, default_denoising_steps=2)
    pipe.save_pretrained(tmp_path / "model")
    report = load_script("benchmarks/full_resolution.py").main([
        "--pipeline", str(tmp_path / "model"), "--photos", str(photos), "--validation-fraction", "0.4",
        "--min-long-side", "48", "--num-images", "3", "--device", "cpu", "--output", str(tmp_path / "full.json"),
    ])
    names = [row["name"] for row in report["rows"]]
    modes = ["detail_transfer=none", "detail_transfer=highpass", "detail_transfer=residual"]
    assert names == ["mixture as T", *modes, *(f"{mode}, autoencoder_detail" for mode in modes)]
    assert report["sizes"] == [[48, 48]] * 3
    none, highpass, residual, none_detail, _, residual_detail = report["rows"][1:]
    # autoencoder detail changes the upsampled T, not R, and not the residual mode's T (the photo minus R)
    assert none_detail["metrics"]["t_psnr"] != none["metrics"]["t_psnr"]
    assert abs(none_detail["metrics"]["r_psnr"] - none["metrics"]["r_psnr"]) < 1e-4
    assert abs(residual_detail["metrics"]["t_psnr"] - residual["metrics"]["t_psnr"]) < 1e-4
    assert all(np.isfinite(row["metrics"]["t_psnr"]) and row["metrics"]["count"] == 3 for row in report["rows"])
    # the residual mode makes T + R equal the photo wherever nothing clips; plain upsampling does not
    assert residual["t_plus_r_error"] < none["t_plus_r_error"]
    assert highpass["metrics"]["r_psnr"] == none["metrics"]["r_psnr"]  # R is the same upsampled layer
    assert json.loads((tmp_path / "full.json").read_text())["rows"][0]["name"] == "mixture as T"
