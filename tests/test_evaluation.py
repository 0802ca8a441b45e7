"""Tests of the benchmark evaluation harness: metrics, loaders, evaluate(), resume, CLI, LPIPS/DISTS loading."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from reflection_separation.evaluation import (
    DISTS,
    LPIPS,
    REAL20_NAMES,
    BenchmarkSet,
    add_evaluate_arguments,
    alexnet_features,
    discover_benchmarks,
    evaluate,
    gradient_correlation,
    perceptual_distance,
    psnr,
    reflection_proxy,
    run_evaluate,
    ssim,
    vgg16_features,
)

HEIGHT, WIDTH = 40, 56
GREY = 64  # the fake pipeline's reflection, as uint8


def _texture(rng: np.random.Generator, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """A smooth random RGB image in [0, 1], quantized to 8 bits like a file on disk."""
    coarse = Image.fromarray(rng.integers(0, 256, (height // 4 + 1, width // 4 + 1, 3), dtype=np.uint8))
    return np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8)).save(path)


def _u8(array: np.ndarray) -> np.ndarray:
    """What an image reads back as after an 8-bit PNG round trip."""
    return (np.clip(array, 0, 1) * 255).round() / 255.0


def _write_set(
    folder: Path,
    names: list[str],
    rng: np.random.Generator,
    reflection: bool,
    naming: str = "same",
    mixture_suffix: str = ".png",
) -> dict[str, dict[str, np.ndarray]]:
    """Write a benchmark folder; naming "same" uses one file name for all layers, "tag" SIR2's m/g/r tokens."""
    truth = {}
    for name in names:
        t, r = _texture(rng), _texture(rng)
        m = _u8(np.clip(0.7 * t + 0.5 * r, 0, 1))
        stems = {"m": name, "g": name, "r": name}
        if naming == "tag":
            stems = {tag: name.replace("m", tag, 1) for tag in "mgr"}
        _save(m, folder / "blended" / f"{stems['m']}{mixture_suffix}")
        _save(t, folder / "transmission_layer" / f"{stems['g']}.png")
        if reflection:
            _save(r, folder / "reflection_layer" / f"{stems['r']}.png")
        truth[stems["m"]] = {"mixture": m, "transmission": t, "reflection": r if reflection else None}
    return truth


@pytest.fixture
def dsrnet_root(tmp_path: Path) -> tuple[Path, dict[str, dict[str, dict[str, np.ndarray]]]]:
    """DSRNet/DSIT/RDNet layout: test/real20_420, test/Nature, test/SIR2/*Dataset, with SIR2 naming variants."""
    rng = np.random.default_rng(0)
    root = tmp_path / "sirs"
    truth = {
        "real20": _write_set(root / "test" / "real20_420", ["3", "4", "12"], rng, reflection=False),
        "nature": _write_set(root / "test" / "Nature", ["1", "2"], rng, reflection=False, mixture_suffix=".jpg"),
        "objects": _write_set(root / "test" / "SIR2" / "SolidObjectDataset", ["a1", "a2"], rng, reflection=True),
        "postcard": _write_set(
            root / "test" / "SIR2" / "PostcardDataset", ["ab-10-m-3", "ab-11-m-3"], rng, reflection=True, naming="tag"
        ),
        "wild": _write_set(
            root / "test" / "SIR2" / "WildSceneDataset", ["1_m", "2_m"], rng, reflection=True, naming="tag"
        ),
    }
    return root, truth


class FakePipeline:
    """Returns the mixture as T (NHWC float array) and a flat grey R (list of PIL), and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.kwargs: list[dict] = []

    def __call__(self, image: Image.Image, *, output_type: str, generator: torch.Generator, **kwargs):
        assert output_type == "np" and isinstance(generator, torch.Generator)
        self.calls += 1
        self.kwargs.append(kwargs)
        transmission = np.asarray(image, dtype=np.float32)[None] / 255.0
        reflection = [Image.new("RGB", image.size, (GREY, GREY, GREY))]
        return SimpleNamespace(transmission=transmission, reflection=reflection)


# ---------------------------------------------------------------------------------------------------------------
# Pixel metrics
# ---------------------------------------------------------------------------------------------------------------


def test_psnr_identical_is_inf_not_capped():
    image = _texture(np.random.default_rng(1))
    assert psnr(image, image) == math.inf


def test_psnr_of_gaussian_noise_matches_formula():
    rng = np.random.default_rng(2)
    target = np.full((256, 256, 3), 0.5)
    sigma = 0.01
    noisy = target + rng.normal(0, sigma, target.shape)
    # 10 log10(1 / sigma^2) = 40 dB in expectation; exactly 10 log10(1 / mse_c), averaged over channels.
    mse = ((noisy - target) ** 2).reshape(-1, 3).mean(axis=0)
    assert psnr(noisy, target) == pytest.approx(np.mean(10 * np.log10(1 / mse)), abs=1e-9)
    assert psnr(noisy, target) == pytest.approx(40.0, abs=0.1)


def test_psnr_hand_computed_bandwise():
    target = np.zeros((2, 2, 3))
    prediction = target.copy()
    prediction[0, 0, 0] = 0.1  # channel 0: MSE 0.01/4 -> 26.0206 dB
    prediction[..., 1] = 0.1  # channel 1: MSE 0.01 -> 20 dB
    prediction[1, 1, 2] = 0.2  # channel 2: MSE 0.04/4 -> 20 dB
    expected = (10 * math.log10(400) + 20 + 20) / 3
    assert expected == pytest.approx(22.00686, abs=1e-5)
    assert psnr(prediction, target) == pytest.approx(expected, abs=1e-9)


def test_ssim_is_one_for_identical_and_decreases_with_noise():
    rng = np.random.default_rng(3)
    image = _texture(rng, 64, 64).astype(np.float64)
    assert ssim(image, image) == pytest.approx(1.0, abs=1e-12)
    scores = [ssim(np.clip(image + rng.normal(0, s, image.shape), 0, 1), image) for s in (0.01, 0.05, 0.2)]
    assert 1.0 > scores[0] > scores[1] > scores[2] > 0.0
    assert scores[0] > 0.99 and scores[2] < 0.8


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="one shape"):
        psnr(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))


def test_leakage_high_when_transmission_contains_reflection():
    rng = np.random.default_rng(4)
    transmission, reflection = _texture(rng, 96, 96), _texture(rng, 96, 96)
    clean = gradient_correlation(transmission, reflection)
    leaky = gradient_correlation(0.6 * transmission + 0.4 * reflection, reflection)
    assert abs(clean) < 0.15
    assert leaky > 0.4
    assert gradient_correlation(reflection, reflection) == pytest.approx(1.0)


def test_reflection_proxy_scores_true_transmission_clean_and_mixture_leaky():
    rng = np.random.default_rng(10)
    transmission, reflection = _texture(rng, 96, 96), _texture(rng, 96, 96)
    mixture = 0.7 * transmission + 0.5 * reflection  # the glass dims T: M - T would contain -0.3 T
    proxy = reflection_proxy(mixture, transmission)
    assert gradient_correlation(proxy, reflection) > 0.9
    assert abs(gradient_correlation(transmission, proxy)) < 0.1
    assert gradient_correlation(mixture, proxy) > 0.4
    assert gradient_correlation(transmission, mixture - transmission) < -0.3  # why the plain residual is not used


# ---------------------------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------------------------


def test_discover_dsrnet_layout_and_sir2_naming(dsrnet_root):
    root, truth = dsrnet_root
    for start in (root, root / "test"):
        sets = discover_benchmarks(start)
        assert list(sets) == ["real20", "nature", "objects", "postcard", "wild"]
    assert sets["real20"].names == ["3", "4", "12"]  # natural order
    assert sets["postcard"].names == ["ab-10-m-3", "ab-11-m-3"]
    assert sets["wild"].entries[0].transmission.name == "1_g.png"
    assert sets["wild"].entries[0].reflection.name == "1_r.png"
    assert not sets["real20"].has_reflection and sets["objects"].has_reflection
    for key, bench in sets.items():
        for index, name in enumerate(bench.names):
            item = bench[index]
            assert item.name == name
            assert item.mixture.shape == (HEIGHT, WIDTH, 3) and item.mixture.dtype == np.float32
            np.testing.assert_allclose(item.transmission, _u8(truth[key][name]["transmission"]), atol=1e-6)
            if truth[key][name]["reflection"] is None:
                assert item.reflection is None
            else:
                np.testing.assert_allclose(item.reflection, _u8(truth[key][name]["reflection"]), atol=1e-6)
            if key != "nature":  # Nature's mixtures are JPEG, lossy
                np.testing.assert_allclose(item.mixture, truth[key][name]["mixture"], atol=1e-6)


def test_discover_errnet_xreflection_layout(tmp_path):
    rng = np.random.default_rng(5)
    for folder, reflection in (("real20", False), ("objects", True), ("postcard", True), ("wild", True)):
        _write_set(tmp_path / folder, ["1", "2"], rng, reflection)
    sets = discover_benchmarks(tmp_path)
    assert list(sets) == ["real20", "objects", "postcard", "wild"]
    assert [len(bench) for bench in sets.values()] == [2, 2, 2, 2]
    single = discover_benchmarks(tmp_path / "wild")  # one benchmark folder as the root
    assert list(single) == ["wild"]


def test_real20_cut_to_standard_twenty(tmp_path):
    rng = np.random.default_rng(6)
    _write_set(tmp_path / "real20", [*REAL20_NAMES, "1", "2"], rng, reflection=False)
    assert BenchmarkSet("real20", tmp_path / "real20").names == list(REAL20_NAMES)


def test_align_multiple_resizes_all_layers(dsrnet_root):
    root, _ = dsrnet_root
    item = discover_benchmarks(root, align_multiple=32)["objects"][0]
    assert item.mixture.shape == item.transmission.shape == item.reflection.shape == (32, 32, 3)


def test_missing_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No benchmark found"):
        discover_benchmarks(tmp_path)
    (tmp_path / "wild" / "blended").mkdir(parents=True)
    _save(np.zeros((8, 8, 3)), tmp_path / "wild" / "blended" / "1.png")
    with pytest.raises(FileNotFoundError, match=r"no transmission folder.*transmission_layer"):
        discover_benchmarks(tmp_path)


def test_mismatched_names_error(tmp_path):
    rng = np.random.default_rng(7)
    _write_set(tmp_path / "nature", ["1", "2"], rng, reflection=False)
    (tmp_path / "nature" / "transmission_layer" / "2.png").rename(tmp_path / "nature" / "transmission_layer" / "7.png")
    with pytest.raises(ValueError, match=r"no matching layer file: \['2.png'\].*unpaired.*\['7.png'\]"):
        BenchmarkSet("nature", tmp_path / "nature")


# ---------------------------------------------------------------------------------------------------------------
# evaluate()
# ---------------------------------------------------------------------------------------------------------------


def test_evaluate_pipeline_end_to_end(dsrnet_root, tmp_path):
    root, truth = dsrnet_root
    # A broken file: reported and skipped, the other images still scored.
    (root / "test" / "Nature" / "blended" / "2.jpg").write_bytes(b"not an image")
    pipeline = FakePipeline()
    out = tmp_path / "out"
    report = evaluate(root, out, pipeline=pipeline, sheet_rows=2)

    assert pipeline.calls == 10
    summary = report["summary"]
    assert list(summary) == ["real20", "nature", "objects", "postcard", "wild", "SIR2", "all"]
    assert summary["nature"]["count"] == 1 and summary["nature"]["failed"] == 1
    assert report["failures"]["nature"][0]["name"] == "2"
    assert "input" in report["failures"]["nature"][0]["error"]

    # The fake separation is T = mixture, R = flat grey: check the numbers against a direct computation.
    grey = np.full((HEIGHT, WIDTH, 3), GREY, dtype=np.float32) / 255.0
    for key in ("real20", "objects", "wild"):
        t_psnr = [psnr(g["mixture"], _u8(g["transmission"])) for g in truth[key].values()]
        assert summary[key]["t_psnr"] == pytest.approx(np.mean(t_psnr), abs=1e-9)
    r_psnr = [psnr(grey, _u8(g["reflection"])) for g in truth["objects"].values()]
    assert summary["objects"]["r_psnr"] == pytest.approx(np.mean(r_psnr), abs=1e-9)
    assert "r_psnr" not in summary["real20"]  # no reflection ground truth
    assert summary["real20"]["leak_r"] == pytest.approx(0.0)  # a flat R holds no structure of T
    assert summary["real20"]["leak_t"] > 0.2  # T = mixture still holds the reflection
    sir2 = [
        r["t_psnr"]
        for key in ("objects", "postcard", "wild")
        for r in json.loads((out / key / "metrics.json").read_text())["images"]
    ]
    assert summary["SIR2"]["count"] == 6 and summary["SIR2"]["t_psnr"] == pytest.approx(np.mean(sir2))
    assert summary["all"]["count"] == 10

    # Files: predictions, per-set and total JSON/Markdown, sheets.
    saved = np.asarray(Image.open(out / "predictions" / "wild" / "1_m_transmission.png"))
    np.testing.assert_array_equal(saved, (truth["wild"]["1_m"]["mixture"] * 255).round().astype(np.uint8))
    assert json.loads((out / "metrics.json").read_text())["summary"]["wild"]["count"] == 2
    table = (out / "metrics.md").read_text()
    assert "| Set | N | T PSNR↑ | T SSIM↑ | R PSNR↑ | R SSIM↑ | Leak R→T↓ | Leak T→R↓ |" in table
    assert "| SIR2 Objects | 2 |" in table and "| SIR2 | 6 |" in table and "| All | 10 |" in table
    assert "- 2: input:" in (out / "nature" / "metrics.md").read_text()
    worst = Image.open(out / "objects" / "sheet_worst.png")
    assert worst.width > 5 * 192 and worst.height > 2 * 192


def test_evaluate_resume_skips_done_images(dsrnet_root, tmp_path):
    root, _ = dsrnet_root
    out = tmp_path / "out"
    first = FakePipeline()
    partial = evaluate(root, out, pipeline=first, sets=["real20", "objects"], limit=1, sheet_rows=0)
    assert first.calls == 2 and partial["summary"]["real20"]["count"] == 1

    second = FakePipeline()
    full = evaluate(root, out, pipeline=second, sets=["real20", "objects"], sheet_rows=0)
    assert second.calls == 3  # 5 images, 2 already done
    assert full["summary"]["real20"]["count"] == 3

    third = FakePipeline()
    again = evaluate(root, out, pipeline=third, sets=["real20", "objects"], sheet_rows=0)
    assert third.calls == 0
    assert again["summary"] == full["summary"]


def test_evaluate_predictions_folder(dsrnet_root, tmp_path):
    root, truth = dsrnet_root
    predictions = tmp_path / "other_method"
    for name, layers in truth["objects"].items():
        _save(layers["transmission"] + 0.03, predictions / "objects" / f"{name}_transmission.png")
    _save(truth["objects"]["a1"]["reflection"], predictions / "objects" / "a1_reflection.jpg")
    _save(truth["real20"]["3"]["transmission"], predictions / "real20" / "3_transmission.png")
    (predictions / "real20" / "4_transmission.png").write_bytes(b"broken")

    report = evaluate(root, tmp_path / "out", predictions_dir=predictions, sets=["objects", "real20"])
    objects = json.loads((tmp_path / "out" / "objects" / "metrics.json").read_text())
    for record in objects["images"]:
        t = _u8(truth["objects"][record["name"]]["transmission"])
        assert record["t_psnr"] == pytest.approx(psnr(_u8(t + 0.03), t), abs=1e-9)
    a1 = objects["images"][0]
    jpeg = np.asarray(Image.open(predictions / "objects" / "a1_reflection.jpg"), dtype=np.float32) / 255.0
    assert a1["name"] == "a1"
    assert a1["r_psnr"] == pytest.approx(psnr(jpeg, _u8(truth["objects"]["a1"]["reflection"])), abs=1e-9)
    assert "r_psnr" not in objects["images"][1]  # no reflection prediction for a2
    real20 = report["summary"]["real20"]
    assert real20["count"] == 1 and real20["failed"] == 2
    assert real20["t_psnr"] is None  # exact match: inf PSNR, written as null in JSON
    errors = {f["name"]: f["error"] for f in report["failures"]["real20"]}
    assert errors["4"].startswith("prediction:") and "no 12_transmission" in errors["12"]


def test_evaluate_needs_exactly_one_source(dsrnet_root, tmp_path):
    root, _ = dsrnet_root
    with pytest.raises(ValueError, match="exactly one"):
        evaluate(root, tmp_path, pipeline=None, predictions_dir=None)
    with pytest.raises(ValueError, match=r"`sets` \['nature'\] not found"):
        evaluate(root / "test" / "SIR2", tmp_path, predictions_dir=tmp_path, sets=["nature"])


# ---------------------------------------------------------------------------------------------------------------
# LPIPS / DISTS from local weights (random weights of the real architectures)
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory) -> dict[str, Path]:
    """Random trunk weights saved the way torchvision names them, heads the way lpips / DISTS_pytorch do."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("weights")
    paths = {"alex": folder / "alexnet.safetensors", "vgg": folder / "vgg16.safetensors"}
    for net, features in (("alex", alexnet_features()), ("vgg", vgg16_features())):
        save_file({f"features.{k}": v.contiguous() for k, v in features.state_dict().items()}, paths[net])
    lins = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 192, 384, 256, 256))}
    torch.save(lins, folder / "alex_lin.pth")
    torch.save({"alpha": torch.rand(1, 1475, 1, 1), "beta": torch.rand(1, 1475, 1, 1)}, folder / "dists.pt")
    return {**paths, "alex_lin": folder / "alex_lin.pth", "dists": folder / "dists.pt"}


def test_lpips_from_local_weights(random_weights, tmp_path):
    rng = np.random.default_rng(8)
    a, b = _texture(rng, 64, 64), _texture(rng, 64, 64)
    lpips = LPIPS.from_weights([random_weights["alex"], random_weights["alex_lin"]], net="alex")
    distance = perceptual_distance(lpips, a, b)
    assert math.isfinite(distance) and distance > 0
    assert perceptual_distance(lpips, a, a) == 0.0
    # The lpips package's own names (net.sliceK.N.*, lins.K.model.1.*) load to the same network.
    renamed = {}
    slices = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}
    for key, value in lpips.state_dict().items():
        if key.startswith("features."):
            index = int(key.split(".")[1])
            renamed[f"net.slice{slices[index]}.{key.split('.', 1)[1]}"] = value
        else:
            renamed[key.replace(".weight", ".model.1.weight")] = value
    torch.save(renamed, tmp_path / "lpips_full.pth")
    assert perceptual_distance(LPIPS.from_weights([tmp_path / "lpips_full.pth"]), a, b) == pytest.approx(distance)


def test_dists_from_local_weights(random_weights):
    rng = np.random.default_rng(9)
    a, b = _texture(rng, 64, 64), _texture(rng, 64, 64)
    dists = DISTS.from_weights([random_weights["vgg"], random_weights["dists"]])
    distance = perceptual_distance(dists, a, b)
    assert math.isfinite(distance) and distance > 1e-4
    assert perceptual_distance(dists, a, a) == pytest.approx(0.0, abs=1e-5)


def test_perceptual_metrics_without_weights_explain_what_to_pass(random_weights):
    with pytest.raises(ValueError, match=r"LPIPS \(alex\) needs local weights.*--lpips-weights.*alexnet"):
        LPIPS.from_weights(None)
    with pytest.raises(ValueError, match=r"DISTS needs local weights.*--dists-weights.*vgg16"):
        DISTS.from_weights([])
    with pytest.raises(ValueError, match=r"lack 5 tensor\(s\).*lins.0.weight"):
        LPIPS.from_weights([random_weights["alex"]])


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------


def test_run_evaluate_with_injected_loader(dsrnet_root, tmp_path, random_weights, capsys):
    root, _ = dsrnet_root
    parser = add_evaluate_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        [
            "--dataset-root",
            str(root),
            "--pipeline",
            "some/folder",
            "--output",
            str(tmp_path / "out"),
            "--sets",
            "wild",
            "--limit",
            "1",
            "--device",
            "cpu",
            "--dtype",
            "bfloat16",
            "--lpips-weights",
            str(random_weights["alex"]),
            str(random_weights["alex_lin"]),
            "--pipeline-arg",
            "num_inference_steps=2",
            "--pipeline-arg",
            "guidance_mode=fast",
        ]
    )
    pipeline, loaded = FakePipeline(), []

    def loader(path, device, dtype):
        loaded.append((path, device, dtype))
        return pipeline

    report = run_evaluate(args, pipeline_loader=loader)
    assert loaded == [("some/folder", "cpu", torch.bfloat16)]
    assert pipeline.kwargs == [{"num_inference_steps": 2, "guidance_mode": "fast"}]
    assert report["lpips_net"] == "alex" and report["summary"]["wild"]["t_lpips"] > 0
    assert "T LPIPS↓" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parser.parse_args(["--dataset-root", str(root), "--output", "x"])  # no source


def test_output_has_the_short_form_o_as_in_separate(tmp_path):
    parser = add_evaluate_arguments(argparse.ArgumentParser())
    short = parser.parse_args(["--dataset-root", "data", "--pipeline", "model", "-o", str(tmp_path / "out")])
    long = parser.parse_args(["--dataset-root", "data", "--pipeline", "model", "--output", str(tmp_path / "out")])
    assert short.output == long.output == tmp_path / "out"


def test_evaluate_command_with_a_real_tiny_pipeline(dsrnet_root, tmp_path):
    from reflection_separation.cli import main
    from reflection_separation.components import build_pipeline

    root, _ = dsrnet_root
    pipe = build_pipeline()
    pipe.register_to_config(default_denoising_steps=2, default_processing_resolution=32)
    pipe.save_pretrained(tmp_path / "model")
    out = tmp_path / "eval"
    argv = ["evaluate", "--dataset-root", str(root), "--pipeline", str(tmp_path / "model"), "--output", str(out),
            "--sets", "real20", "objects"]
    assert main(argv) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert set(report["summary"]) >= {"real20", "objects"}
    assert np.isfinite(report["summary"]["objects"]["r_psnr"]) and report["summary"]["objects"]["count"] == 2
    assert (out / "predictions" / "objects" / "a1_transmission.png").exists()
    assert (out / "metrics.md").read_text().startswith("| Set")
