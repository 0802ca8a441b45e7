"""The ablation script runs every row on held-out mixtures and writes its JSON and table."""

import importlib.util
import json
from pathlib import Path

import numpy as np
from PIL import Image

from reflection_separation.components import build_pipeline
from reflection_separation.training import build_control_regressor

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("ablation", ROOT / "benchmarks" / "ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ablation_rows_on_tiny_models(tmp_path):
    rng = np.random.default_rng(0)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(30):
        ramp = np.linspace(0, 1, 48)[None, :, None] * rng.random(3)
        image = np.clip(ramp + rng.random((48, 48, 3)) * 0.3, 0, 1)
        Image.fromarray((image * 255).astype(np.uint8)).save(photos / f"photo_{i:02d}.png")
    main = build_pipeline()
    main.save_pretrained(tmp_path / "main")
    baseline = build_pipeline(seed=1)
    baseline.register_to_config(cross_layer_attention=False)
    baseline.save_pretrained(tmp_path / "baseline")
    build_control_regressor((8, 16)).save_pretrained(tmp_path / "control")

    output = tmp_path / "ablation.json"
    report = load_script().main([
        "--pipeline", str(tmp_path / "main"), "--baseline", str(tmp_path / "baseline"),
        "--control", str(tmp_path / "control"), "--photos", str(photos), "--validation-fraction", "0.4",
        "--num-images", "3", "--resolution", "32", "--steps", "2", "--batch-size", "2", "--device", "cpu",
        "--output", str(output),
    ])
    names = [row["name"] for row in report["rows"]]
    assert names == ["mixture as T", "control regressor", "baseline (fine-tune only)", "+CLSA",
                     "+CLSA +latent guidance", "full (+disjoint, +FGFM)", "full without FGFM"]
    for row in report["rows"]:
        assert row["metrics"]["count"] == 3 and np.isfinite(row["metrics"]["t_psnr"])
    assert "r_psnr" not in report["rows"][0]["metrics"] and np.isfinite(report["rows"][1]["metrics"]["r_psnr"])
    # different parts really change the numbers
    clsa, full = report["rows"][3]["metrics"], report["rows"][5]["metrics"]
    assert clsa["t_psnr"] != full["t_psnr"]
    assert json.loads(output.read_text())["rows"][3]["settings"]["guidance_mode"] == "off"
    assert output.with_suffix(".md").read_text().startswith("| Row")
