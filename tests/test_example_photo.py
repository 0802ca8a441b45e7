"""benchmarks/example_photo.py on the tiny model: its scores are the harness's metrics of the layers it saves."""

import json

import numpy as np
from PIL import Image

from reflection_separation.components import build_pipeline
from reflection_separation.evaluation import psnr, ssim
from reflection_separation.training import build_control_regressor

from .conftest import load_script

example_photo = load_script("benchmarks/example_photo.py")


def test_example_photo_scores_the_saved_layers_against_the_truth(tmp_path):
    pipe = build_pipeline(seed=0)
    pipe.register_to_config(default_processing_resolution=32, default_denoising_steps=2)
    pipe.save_pretrained(tmp_path / "model")
    rng = np.random.default_rng(0)
    transmission, reflection = (rng.integers(0, 256, (24, 40, 3), dtype=np.uint8) for _ in range(2))
    mixture = np.clip(transmission.astype(int) + reflection // 2, 0, 255).astype(np.uint8)
    paths = {name: tmp_path / f"{name}.png" for name in ("mixture", "t", "r")}
    for name, array in zip(paths, (mixture, transmission, reflection)):
        Image.fromarray(array).save(paths[name])
    build_control_regressor((8, 16)).save_pretrained(tmp_path / "control")
    output = tmp_path / "report.json"
    report = example_photo.main(["--model", str(tmp_path / "model"), "--photo", str(paths["mixture"]),
                                 "--truth", str(paths["t"]), str(paths["r"]), "--save-dir", str(tmp_path / "out"),
                                 "--control", str(tmp_path / "control"), "--output", str(output)])
    assert json.loads(output.read_text()) == report
    read = example_photo.read_float
    saved_t, saved_r = (read(tmp_path / "out" / f"mixture_{layer}.png") for layer in ("transmission", "reflection"))
    truth_t, truth_r, photo = read(paths["t"]), read(paths["r"]), read(paths["mixture"])
    assert report["size"] == [40, 24]
    assert np.isclose(report["separated"]["t_psnr"], psnr(saved_t, truth_t), atol=1e-4)
    assert np.isclose(report["separated"]["t_ssim"], ssim(saved_t, truth_t), atol=1e-4)
    assert np.isclose(report["separated"]["r_psnr"], psnr(saved_r, truth_r), atol=1e-4)
    assert np.isclose(report["input"]["t_psnr"], psnr(photo, truth_t), atol=1e-4)
    assert "r_psnr" not in report["input"]
    control_t, control_r = (read(tmp_path / "out" / f"mixture_control_{layer}.png") for layer in ("transmission", "reflection"))
    assert np.isclose(report["control"]["t_psnr"], psnr(control_t, truth_t), atol=1e-4)
    assert np.isclose(report["control"]["r_psnr"], psnr(control_r, truth_r), atol=1e-4)
    assert report["control"]["t_psnr"] != report["separated"]["t_psnr"]
