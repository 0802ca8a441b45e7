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


def test_processing_resolution_sweep(tmp_path):
    """Each sweep row is the default call at that processing resolution: at the model's own resolution it scores
    exactly what the mode row with the model's default settings scores, at another one it does not."""
    photos = write_photos(tmp_path / "photos")
    pipe = build_pipeline()
    pipe.register_to_config(default_processing_resolution=32, default_denoising_steps=2, default_detail_transfer="residual")
    pipe.save_pretrained(tmp_path / "model")
    common = ["--pipeline", str(tmp_path / "model"), "--photos", str(photos), "--validation-fraction", "0.4",
              "--min-long-side", "48", "--num-images", "2", "--device", "cpu"]
    report = load_script("benchmarks/full_resolution.py").main(
        [*common, "--processing-resolutions", "32", "48", "--output", str(tmp_path / "sweep.json")])
    rows = {row["name"]: row for row in report["rows"]}
    assert report["defaults"]["detail_transfer"] == "residual" and report["defaults"]["autoencoder_detail"] is False
    default, at_32, at_48 = rows["detail_transfer=residual"], rows["processing_resolution=32"], rows["processing_resolution=48"]
    assert at_32["metrics"] == default["metrics"]
    assert at_48["metrics"]["r_psnr"] != at_32["metrics"]["r_psnr"]
    assert at_48["settings"] == {"processing_resolution": 48} and at_48["seconds"] > 0
    assert np.mean(at_48["t_psnr_per_item"]) == at_48["metrics"]["t_psnr"] and len(at_48["r_psnr_per_item"]) == 2
    only = load_script("benchmarks/full_resolution.py").main(
        [*common, "--processing-resolutions", "48", "--no-mode-rows", "--output", str(tmp_path / "only.json")])
    assert [row["name"] for row in only["rows"]] == ["mixture as T", "processing_resolution=48"]
    assert only["rows"][1]["metrics"] == at_48["metrics"]
