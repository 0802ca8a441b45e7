"""The ablation script runs every row on held-out mixtures and writes its JSON and table."""

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from reflection_separation import ReflectionSeparationPipeline
from reflection_separation.components import build_pipeline
from reflection_separation.data import is_validation_file
from reflection_separation.evaluation import psnr
from reflection_separation.synthesis import ReflectionSynthesizer
from reflection_separation.training import build_control_regressor

from .conftest import load_script, write_photos


def test_ablation_rows_on_tiny_models(tmp_path):
    photos = write_photos(tmp_path / "photos")
    main = build_pipeline()
    main.save_pretrained(tmp_path / "main")
    baseline = build_pipeline(seed=1)
    baseline.register_to_config(cross_layer_attention=False)
    baseline.save_pretrained(tmp_path / "baseline")
    build_control_regressor((8, 16)).save_pretrained(tmp_path / "control")
    onestep = build_pipeline(seed=2)
    onestep.register_to_config(default_one_step=True)
    onestep.save_pretrained(tmp_path / "onestep")

    output = tmp_path / "ablation.json"
    report = load_script("benchmarks/ablation.py").main([
        "--pipeline", str(tmp_path / "main"), "--baseline", str(tmp_path / "baseline"),
        "--control", str(tmp_path / "control"), "--onestep-pipeline", str(tmp_path / "onestep"),
        "--photos", str(photos), "--validation-fraction", "0.4",
        "--num-images", "3", "--resolution", "32", "--steps", "2", "--batch-size", "2", "--device", "cpu",
        "--output", str(output),
    ])
    names = [row["name"] for row in report["rows"]]
    assert names == ["mixture as T", "control regressor", "baseline (fine-tune only)", "+CLSA",
                     "+CLSA +latent guidance", "full (+disjoint, +FGFM)", "full without FGFM", "one-step",
                     "one-step, fine-tuned", "one-step, fine-tuned, +autoencoder detail"]
    for row in report["rows"]:
        assert row["metrics"]["count"] == 3 and np.isfinite(row["metrics"]["t_psnr"])
    assert "r_psnr" not in report["rows"][0]["metrics"] and np.isfinite(report["rows"][1]["metrics"]["r_psnr"])
    # different parts really change the numbers
    clsa, full = report["rows"][3]["metrics"], report["rows"][5]["metrics"]
    assert clsa["t_psnr"] != full["t_psnr"]
    assert json.loads(output.read_text())["rows"][3]["settings"]["composition_guidance"] == "off"
    one_step, fine_tuned, detailed = report["rows"][7:]
    assert one_step["settings"] == fine_tuned["settings"] == {"one_step": True, "fgfm_strength": 0.8,
                                                             "autoencoder_detail": False, "num_inference_steps": 1}
    assert detailed["settings"] == {**fine_tuned["settings"], "autoencoder_detail": True}
    assert one_step["metrics"]["t_psnr"] != fine_tuned["metrics"]["t_psnr"]  # another UNet
    assert detailed["metrics"]["t_psnr"] != fine_tuned["metrics"]["t_psnr"]
    assert detailed["metrics"]["r_psnr"] == pytest.approx(fine_tuned["metrics"]["r_psnr"], abs=1e-4)  # R as it was
    assert one_step["metrics"]["t_psnr"] != full["t_psnr"]
    assert output.with_suffix(".md").read_text().startswith("| Row")


def test_ablation_per_recipe_with_a_training_configs_recipes(tmp_path):
    photos = write_photos(tmp_path / "photos")
    build_pipeline().save_pretrained(tmp_path / "main")
    build_control_regressor((8, 16)).save_pretrained(tmp_path / "control")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"synthesis": {"recipes": {"screen": 1, "glass_tint": 1}, "jpeg_probability": 0.5}}))
    report = load_script("benchmarks/ablation.py").main([
        "--pipeline", str(tmp_path / "main"), "--control", str(tmp_path / "control"), "--photos", str(photos),
        "--validation-fraction", "0.4", "--num-images", "2", "--resolution", "32", "--steps", "2",
        "--batch-size", "2", "--device", "cpu", "--output", str(tmp_path / "ablation.json"),
        "--synthesis-config", str(config), "--per-recipe", "2", "--ensemble-size", "3",
    ])
    rows = {row["name"]: row for row in report["rows"]}
    assert list(rows)[-3:] == ["full without FGFM", "one-step", "full, ensemble of 3"]
    full, ensemble = rows["full (+disjoint, +FGFM)"], rows["full, ensemble of 3"]
    assert ensemble["settings"] == {**full["settings"], "ensemble_size": 3}
    assert ensemble["metrics"]["count"] == 2 and ensemble["metrics"]["t_psnr"] != full["metrics"]["t_psnr"]
    assert report["synthesis"]["recipes"] == {"screen": 1.0, "glass_tint": 1.0}
    assert set(report["per_recipe"]) == {"screen", "glass_tint"}
    for rows in report["per_recipe"].values():
        assert [row["name"] for row in rows] == ["mixture as T", "control regressor", "full (+disjoint, +FGFM)"]
        assert all(row["metrics"]["count"] == 2 for row in rows)
    # the glass dims the scene, so the input is further from the true T than under the screen blend
    screen, glass = (report["per_recipe"][name][0]["metrics"]["t_psnr"] for name in ("screen", "glass_tint"))
    assert screen != glass
    assert "glass_tint (2 mixtures)" in (tmp_path / "ablation.md").read_text()


def test_ablation_selected_rows_dtype_and_an_earlier_control_row(tmp_path):
    photos = write_photos(tmp_path / "photos")
    build_pipeline().save_pretrained(tmp_path / "main")
    build_control_regressor((8, 16)).save_pretrained(tmp_path / "control")
    ablation = load_script("benchmarks/ablation.py")
    common = ["--pipeline", str(tmp_path / "main"), "--photos", str(photos), "--validation-fraction", "0.4",
              "--num-images", "2", "--resolution", "32", "--steps", "2", "--batch-size", "2", "--device", "cpu"]
    first = ablation.main([*common, "--control", str(tmp_path / "control"), "--rows", "+CLSA",
                           "--output", str(tmp_path / "first.json")])
    assert [row["name"] for row in first["rows"]] == ["mixture as T", "control regressor", "+CLSA"]

    second = ablation.main([*common, "--control-row-from", str(tmp_path / "first.json"), "--rows", "+CLSA",
                            "--dtype", "bfloat16", "--output", str(tmp_path / "second.json")])
    assert second["rows"][1] == {**first["rows"][1], "from": str(tmp_path / "first.json")}
    clsa, clsa_bf16 = first["rows"][2]["metrics"], second["rows"][2]["metrics"]
    assert clsa_bf16["t_psnr"] != clsa["t_psnr"] and abs(clsa_bf16["t_psnr"] - clsa["t_psnr"]) < 1.0

    with pytest.raises(ValueError, match="seed differ"):
        ablation.main([*common, "--seed", "7", "--control-row-from", str(tmp_path / "first.json"), "--rows", "+CLSA",
                       "--output", str(tmp_path / "third.json")])
    with pytest.raises(SystemExit):
        ablation.main([*common, "--rows", "no such row", "--output", str(tmp_path / "fourth.json")])
    with pytest.raises(SystemExit):  # one control row or the other, not both
        ablation.main([*common, "--control", str(tmp_path / "control"), "--control-row-from",
                       str(tmp_path / "first.json"), "--output", str(tmp_path / "fifth.json")])


@pytest.mark.parametrize("split", ["validation", "train"])
def test_ablation_split_takes_its_mixtures_from_that_split_only(tmp_path, split):
    photos = tmp_path / "photos"
    photos.mkdir()
    colours = {}
    for i in range(30):  # one flat colour per photo, so a mixture's transmission names its photo
        colour = (8 * i, 255 - 8 * i, 100)
        Image.fromarray(np.full((48, 48, 3), colour, dtype=np.uint8)).save(photos / f"photo_{i:02d}.png")
        colours[colour] = f"photo_{i:02d}.png"
    args = argparse.Namespace(photos=str(photos), resolution=32, seed=0, split=split, validation_fraction=0.4)
    items, _ = load_script("benchmarks/ablation.py").held_out_items(args, ReflectionSynthesizer(), 6)
    names = {colours[tuple(int(v) for v in (item.transmission[0, 0] * 255).round())] for item in items}
    assert len(names) > 1
    assert all(is_validation_file(name, 0.4) == (split == "validation") for name in names)


def test_ablation_clean_photos_score_the_photo_given_back(tmp_path):
    photos = write_photos(tmp_path / "photos")
    build_pipeline().save_pretrained(tmp_path / "main")
    build_control_regressor((8, 16)).save_pretrained(tmp_path / "control")
    ablation = load_script("benchmarks/ablation.py")
    report = ablation.main([
        "--pipeline", str(tmp_path / "main"), "--onestep-pipeline", str(tmp_path / "main"), "--control",
        str(tmp_path / "control"), "--photos", str(photos), "--validation-fraction", "0.4", "--num-images", "2",
        "--resolution", "32", "--batch-size", "2", "--device", "cpu", "--rows", "one-step, fine-tuned",
        "--clean", "3", "--output", str(tmp_path / "ablation.json"),
    ])
    assert [row["name"] for row in report["clean_photos"]] == ["control regressor", "one-step, fine-tuned"]
    args = argparse.Namespace(photos=str(photos), resolution=32, seed=1234, split="validation", validation_fraction=0.4)
    items = ablation.clean_photo_items(args, 3)
    assert all(np.array_equal(item.mixture, item.transmission) and not item.reflection.any() for item in items)
    pipe = ReflectionSeparationPipeline.from_pretrained(tmp_path / "main")
    out = pipe([item.mixture for item in items], **ablation.ONE_STEP, processing_resolution=0, output_type="np",
               generator=[torch.Generator().manual_seed(1234 + i) for i in range(3)], batch_size=2)
    metrics = report["clean_photos"][1]["metrics"]
    assert metrics["count"] == 3
    assert metrics["t_psnr"] == pytest.approx(np.mean([psnr(t, i.transmission) for t, i in zip(out.transmission, items)]))
    assert metrics["r_mean"] == pytest.approx(np.mean([r.mean() for r in out.reflection]), rel=1e-5)
    assert metrics["changed_below_psnr"] == ablation.CHANGED_PSNR
    assert metrics["changed"] == np.mean([psnr(t, i.transmission) < ablation.CHANGED_PSNR
                                          for t, i in zip(out.transmission, items)])
    assert "Clean photos (3 crops" in (tmp_path / "ablation.md").read_text()
