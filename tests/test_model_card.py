"""The model card is generated from the measured JSON files, and the committed one is up to date."""

import json

from .conftest import load_script


def test_committed_card_is_what_the_script_writes():
    assert load_script("benchmarks/make_model_card.py").main(["--check"]) == 0


def test_card_has_hub_front_matter_and_the_ablation_table(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    script = load_script("benchmarks/make_model_card.py")
    empty = script.build_card(results, None)
    assert empty.startswith("---\nlicense: apache-2.0\nlibrary_name: diffusers\npipeline_tag: image-to-image\n")
    assert "No trained model has been measured yet" in empty and "base_model" not in empty
    report = {
        "description": "Ablation on held-out synthetic mixtures.",
        "settings": {"num_images": 2, "resolution": 64, "seed": 7},
        "device": "cpu",
        "versions": {"torch": "2.13.0", "diffusers": "0.42.1"},
        "rows": [
            {"name": "mixture as T", "metrics": {"count": 2, "t_psnr": 11.5}},
            {"name": "full (+disjoint, +FGFM)", "metrics": {"count": 2, "t_psnr": 17.25, "r_psnr": 15.5}},
        ],
    }
    (results / "ablation_small.json").write_text(json.dumps(report))
    card = script.build_card(results, "stabilityai/stable-diffusion-2-1-base")
    assert "base_model: stabilityai/stable-diffusion-2-1-base\n" in card
    assert "| full (+disjoint, +FGFM) | 2 | 17.25 |" in card and "No trained model" not in card
    assert "2 mixtures at 64 px, seed 7," in card


def test_cpu_section_lists_the_times_by_processing_resolution(tmp_path):
    script = load_script("benchmarks/make_model_card.py")
    report = {
        "description": "One 512x512 photo, the model's default settings, after one warm-up call.",
        "settings": {"threads": 2, "dtype": "bfloat16", "one_step": True, "processing_resolution": 256,
                     "num_inference_steps": 4, "composition_guidance": "fast"},
        "seconds": [0.9, 1.1], "median_seconds": 1.0, "multi_step_median_seconds": 1.6, "cpu": "AMD EPYC",
        "versions": {"torch": "2.13.0"},
        "one_step_by_processing_resolution": {"256": {"median_seconds": 1.04}, "512": {"median_seconds": 7.81}},
    }
    path = tmp_path / "cpu_timing_x.json"
    path.write_text(json.dumps(report))
    section = script.cpu_section(path)
    assert "1.0 s (median of 2) on 2 threads of an AMD EPYC" in section and "4 steps: 1.6 s. " in section
    assert "One step by processing resolution: 256 px 1.0 s, 512 px 7.8 s. " in section
    del report["one_step_by_processing_resolution"]
    path.write_text(json.dumps(report))
    assert "by processing resolution" not in script.cpu_section(path)


def test_limitations_say_what_the_model_does_to_photos_without_reflection(tmp_path):
    script = load_script("benchmarks/make_model_card.py")
    path = tmp_path / "clean_photos_small_model.json"
    assert script.clean_photos_limitation(path) == ""
    metrics = {"count": 5, "t_psnr": 24.456, "t_ssim": 0.9123, "r_mean": 0.0712, "changed": 0.6,
               "changed_below_psnr": 25.0}
    path.write_text(json.dumps({"clean_photos": [
        {"name": "control regressor", "metrics": {**metrics, "t_psnr": 1.0}},
        {"name": "one-step, fine-tuned, +autoencoder detail", "metrics": metrics},
    ]}))
    line = script.clean_photos_limitation(path)
    assert "on 5 held-out crops without any reflection its transmission is 24.46 dB PSNR / 0.912 SSIM" in line
    assert "(mean reflection 0.071; 60% of them below 25 dB;" in line
    assert "clean_photos_small_model.json" in script.build_card(tmp_path, None)


def test_limitations_say_what_the_model_does_to_faint_reflections(tmp_path):
    script = load_script("benchmarks/make_model_card.py")
    path = tmp_path / "faint_reflections_small_model.json"
    assert script.faint_reflections_limitation(path) == ""
    path.write_text(json.dumps({"rows": [
        {"name": "mixture as T", "metrics": {"count": 7, "t_psnr": 29.123, "t_ssim": 0.8761}},
        {"name": "one-step, fine-tuned, +autoencoder detail", "metrics": {"count": 7, "t_psnr": 22.567, "t_ssim": 0.8234}},
    ]}))
    line = script.faint_reflections_limitation(path)
    assert "on 7 held-out mixtures of the `faint` recipe" in line
    assert "its transmission is 22.57 dB PSNR / 0.823 SSIM from the true scene, the photo itself 29.12 dB / 0.876" in line
    assert "faint_reflections_small_model.json" in script.build_card(tmp_path, None)
