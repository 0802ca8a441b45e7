"""Tests of the synthetic and paired reflection data (CPU, small images written to tmp_path)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from reflection_separation.data import (
    PairedReflectionDataset,
    ReflectionSynthesizer,
    SynthesisParameters,
    SyntheticReflectionDataset,
    gaussian_blur,
    is_validation_file,
    random_crop_flip,
    shift_image,
)


def _photo(seed: int, size: tuple[int, int] = (48, 40)) -> np.ndarray:
    """A textured color image (H, W, 3) uint8: smooth gradients plus noise, different for every seed."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width] / max(size)
    channels = [
        np.sin(2 * math.pi * (rng.uniform(0.5, 3) * x + rng.uniform(0.5, 3) * y + rng.uniform())) for _ in "rgb"
    ]
    image = 0.5 + 0.3 * np.stack(channels, axis=-1) + 0.2 * rng.uniform(-1, 1, (height, width, 3))
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def _write_photos(root: Path, count: int, size: tuple[int, int] = (48, 40)) -> None:
    """Writes `count` photos in PNG, JPEG and WebP, half of them in a subfolder."""
    for index in range(count):
        extension = (".png", ".jpg", ".webp")[index % 3]
        path = root / ("nested" if index % 2 else "") / f"photo_{index:02d}{extension}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_photo(index, size)).save(path, quality=95)


def _high_frequency_energy(image: torch.Tensor) -> float:
    return float(
        (image[:, 1:, :] - image[:, :-1, :]).pow(2).mean() + (image[:, :, 1:] - image[:, :, :-1]).pow(2).mean()
    )


def _tensor(seed: int, size: tuple[int, int] = (64, 64)) -> torch.Tensor:
    return torch.from_numpy(_photo(seed, size)).permute(2, 0, 1).float() / 255


# ---------------------------------------------------------------------------------------------- synthesizer


def test_mixture_is_sum_of_layers_where_not_clipped() -> None:
    transmission, reflection = _tensor(0), _tensor(1)
    synthesizer = ReflectionSynthesizer()
    clipped_fractions = []
    for seed in range(10):
        mixture, out_transmission, layer = synthesizer(transmission, reflection, seed)
        for tensor in (mixture, out_transmission, layer):
            assert tensor.shape == (3, 64, 64) and tensor.dtype == torch.float32
            assert tensor.min() >= 0 and tensor.max() <= 1
        assert torch.equal(out_transmission, transmission)  # T is returned unchanged.
        total = out_transmission + layer
        unclipped = total <= 1
        assert unclipped.float().mean() > 0.5
        torch.testing.assert_close(mixture[unclipped], total[unclipped], atol=1e-6, rtol=0)
        # Where clipping happened, the mixture is saturated: I = min(T + R', 1) everywhere.
        torch.testing.assert_close(mixture, total.clamp(max=1), atol=1e-6, rtol=0)
        clipped_fractions.append(1 - unclipped.float().mean().item())
    assert max(clipped_fractions) < 0.3


def test_overflow_compensation_reduces_clipping() -> None:
    transmission = 0.35 + 0.6 * _tensor(2)  # Bright scene: T + R overflows a lot.
    reflection = _tensor(3)
    no_compensation = ReflectionSynthesizer(ghost_probability=0, overflow_factor_range=(0, 0))
    compensation = ReflectionSynthesizer(ghost_probability=0)
    _, _, raw = no_compensation(transmission, reflection, 7)
    mixture, _, layer = compensation(transmission, reflection, 7)
    clipped_raw = (transmission + raw > 1).float().mean()
    clipped = (transmission + layer > 1).float().mean()
    assert clipped_raw > 0.2
    assert clipped < 0.7 * clipped_raw
    # The compensation only darkens the reflection (per-channel constant subtraction, then clipping at 0).
    assert torch.all(layer <= raw + 1e-6)
    assert (raw - layer).mean() > 0.02
    assert mixture.max() <= 1


def test_same_seed_same_triplet_different_seed_differs() -> None:
    transmission, reflection = _tensor(4), _tensor(5)
    synthesizer = ReflectionSynthesizer()
    first = synthesizer(transmission, reflection, 123)
    second = synthesizer(transmission, reflection, torch.Generator().manual_seed(123))
    other = synthesizer(transmission, reflection, 124)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    assert (first[0] - other[0]).abs().mean() > 1e-3
    assert synthesizer.sample_parameters(torch.Generator().manual_seed(1)) != synthesizer.sample_parameters(
        torch.Generator().manual_seed(2)
    )


def test_parameters_stay_in_configured_ranges() -> None:
    synthesizer = ReflectionSynthesizer(
        sigma_range=(2.0, 3.0), attenuation_range=(0.5, 0.6), ghost_probability=0.5, ghost_offset_range=(4.0, 6.0)
    )
    draws = [synthesizer.sample_parameters(torch.Generator().manual_seed(seed)) for seed in range(200)]
    assert all(2.0 <= p.sigma <= 3.0 and 0.5 <= p.attenuation <= 0.6 for p in draws)
    ghosted = [p for p in draws if p.ghost_offset is not None]
    assert 70 <= len(ghosted) <= 130  # ghost_probability = 0.5 of 200
    assert all(3.0 <= math.hypot(*p.ghost_offset) <= 6.0 + math.sqrt(0.5) for p in ghosted)
    with pytest.raises(ValueError, match="sigma_range"):
        ReflectionSynthesizer(sigma_range=(3.0, 1.0))
    with pytest.raises(ValueError, match="ghost_probability"):
        ReflectionSynthesizer(ghost_probability=1.5)


def test_blur_removes_high_frequencies() -> None:
    reflection = _tensor(6)
    synthesizer = ReflectionSynthesizer(sigma_range=(3.0, 3.0), attenuation_range=(1.0, 1.0), ghost_probability=0)
    _, _, layer = synthesizer(torch.zeros_like(reflection), reflection, 0)  # T = 0: no overflow, R' = blur(R).
    assert _high_frequency_energy(layer) < 0.05 * _high_frequency_energy(reflection)
    assert abs(layer.mean().item() - reflection.mean().item()) < 0.01  # Blur keeps the brightness.
    torch.testing.assert_close(layer, gaussian_blur(reflection, 3.0))
    assert torch.equal(gaussian_blur(reflection, 0.0), reflection)


def test_attenuation_scales_reflection() -> None:
    reflection = _tensor(7)
    synthesizer = ReflectionSynthesizer(sigma_range=(0, 0), attenuation_range=(0.4, 0.4), ghost_probability=0)
    mixture, _, layer = synthesizer(torch.zeros_like(reflection), reflection, 0)
    torch.testing.assert_close(layer, 0.4 * reflection)
    torch.testing.assert_close(mixture, 0.4 * reflection)


def test_ghost_adds_shifted_attenuated_copy() -> None:
    reflection = torch.zeros(3, 40, 40)
    reflection[:, 20, 20] = 1.0  # A point light shows the ghost kernel directly.
    synthesizer = ReflectionSynthesizer(
        sigma_range=(0, 0),
        attenuation_range=(1.0, 1.0),
        ghost_probability=1.0,
        ghost_offset_range=(5.0, 5.0),
        ghost_attenuation_range=(0.5, 0.5),
    )
    parameters = synthesizer.sample_parameters(torch.Generator().manual_seed(3))
    dy, dx = parameters.ghost_offset
    assert 4 <= math.hypot(dy, dx) <= 6
    _, _, layer = synthesizer.apply(torch.zeros_like(reflection), reflection, parameters)
    assert layer[0, 20, 20].item() == pytest.approx(1 / 1.5)
    assert layer[0, 20 + dy, 20 + dx].item() == pytest.approx(0.5 / 1.5)
    assert layer.sum().item() == pytest.approx(3.0)  # (1 + 0.5) / 1.5 per channel: brightness kept.
    # Same draws with ghosting off leave the point alone.
    _, _, plain = synthesizer.apply(
        torch.zeros_like(reflection), reflection, SynthesisParameters(0.0, 1.0, None, 0.5, 1.1)
    )
    assert torch.equal(plain, reflection)


def test_shift_image_moves_content_without_wrapping() -> None:
    image = torch.arange(25, dtype=torch.float32).view(1, 5, 5)
    shifted = shift_image(image, 2, -1)
    torch.testing.assert_close(shifted[:, 2:, :4], image[:, :3, 1:])
    torch.testing.assert_close(shifted[:, :2, :4], image[:, :1, 1:].expand(1, 2, 4))  # Replicated top row.


# ---------------------------------------------------------------------------------------------- crop and flip


def test_random_crop_flip_is_deterministic_and_upscales_small_images() -> None:
    image = Image.fromarray(_photo(8, (40, 24)))  # Short side 24 < 32: upscaled to 53 x 32 first.
    crop = random_crop_flip([image], 32, torch.Generator().manual_seed(0), flip_probability=0.0)[0]
    again = random_crop_flip([image], 32, torch.Generator().manual_seed(0), flip_probability=0.0)[0]
    flipped = random_crop_flip([image], 32, torch.Generator().manual_seed(0), flip_probability=1.0)[0]
    other = random_crop_flip([image], 32, torch.Generator().manual_seed(5), flip_probability=0.0)[0]
    assert crop.shape == (3, 32, 32) and 0 <= crop.min() and crop.max() <= 1
    assert torch.equal(crop, again)
    assert torch.equal(flipped, crop.flip(-1))  # Same crop position, mirrored.
    assert not torch.equal(crop, other)

    large = Image.fromarray(_photo(9, (64, 48)))
    (patch,) = random_crop_flip([large], 32, torch.Generator().manual_seed(1), flip_probability=0.0)
    source = torch.from_numpy(np.array(large)).permute(2, 0, 1).float() / 255
    matches = [
        (top, left)
        for top in range(17)
        for left in range(33)
        if torch.equal(source[:, top : top + 32, left : left + 32], patch)
    ]
    assert len(matches) == 1  # A native-scale crop of the larger image.


# ---------------------------------------------------------------------------------------------- synthetic dataset


def test_synthetic_dataset_items_and_determinism(tmp_path: Path) -> None:
    _write_photos(tmp_path, 6)
    dataset = SyntheticReflectionDataset(tmp_path, resolution=32, num_samples=10, seed=3)
    assert len(dataset.photos) == 6 and len(dataset) == 10
    item = dataset[4]
    assert set(item) == {"mixture", "transmission", "reflection"}
    for value in item.values():
        assert value.shape == (3, 32, 32) and value.min() >= 0 and value.max() <= 1
    unclipped = item["transmission"] + item["reflection"] <= 1
    torch.testing.assert_close(item["mixture"][unclipped], (item["transmission"] + item["reflection"])[unclipped])

    repeat = SyntheticReflectionDataset(tmp_path, resolution=32, num_samples=10, seed=3)
    for index in (9, 4, 0):  # Any access order gives the same items.
        for key in item:
            assert torch.equal(repeat[index][key], dataset[index][key])
    assert (dataset[4]["mixture"] - dataset[5]["mixture"]).abs().mean() > 1e-2
    reseeded = SyntheticReflectionDataset(tmp_path, resolution=32, num_samples=10, seed=4)
    assert (reseeded[4]["mixture"] - item["mixture"]).abs().mean() > 1e-2
    with pytest.raises(IndexError):
        dataset[10]


def test_synthetic_dataset_uses_two_different_photos(tmp_path: Path) -> None:
    # A red and a blue photo: every item must take one as T and the other as R.
    rng = np.random.default_rng(0)
    for name, channel in (("red.png", 0), ("blue.png", 2)):
        image = rng.integers(0, 40, (40, 40, 3))
        image[..., channel] += 180
        Image.fromarray(image.astype(np.uint8)).save(tmp_path / name)
    dataset = SyntheticReflectionDataset(tmp_path, resolution=32, num_samples=20)
    transmission_colors = []
    for index in range(20):
        item = dataset[index]
        transmission_color = int(item["transmission"].mean(dim=(1, 2)).argmax())
        reflection_color = int(item["reflection"].mean(dim=(1, 2)).argmax())
        assert {transmission_color, reflection_color} == {0, 2}
        transmission_colors.append(transmission_color)
    assert 0 in transmission_colors and 2 in transmission_colors


def test_dataloader_workers_match_direct_access(tmp_path: Path) -> None:
    _write_photos(tmp_path, 5)
    dataset = SyntheticReflectionDataset(tmp_path, resolution=32, num_samples=6, seed=11)
    batches = list(DataLoader(dataset, batch_size=3, num_workers=2))
    assert batches[0]["mixture"].shape == (3, 3, 32, 32)
    direct = torch.stack([dataset[index]["mixture"] for index in range(6)])
    assert torch.equal(torch.cat([batch["mixture"] for batch in batches]), direct)


def test_train_validation_split_is_disjoint_and_complete(tmp_path: Path) -> None:
    _write_photos(tmp_path, 16)
    every = SyntheticReflectionDataset(tmp_path, resolution=32)
    train = SyntheticReflectionDataset(tmp_path, resolution=32, split="train", validation_fraction=0.4)
    validation = SyntheticReflectionDataset(tmp_path, resolution=32, split="validation", validation_fraction=0.4)
    assert len(train.photos) >= 2 and len(validation.photos) >= 2
    assert not set(train.photos) & set(validation.photos)
    assert sorted(train.photos + validation.photos) == sorted(every.photos)
    # The assignment depends only on the relative path.
    for path in validation.photos:
        assert is_validation_file(path.relative_to(tmp_path).as_posix(), 0.4)
    with pytest.raises(ValueError, match="split"):
        SyntheticReflectionDataset(tmp_path, split="test")  # type: ignore[arg-type]


def test_broken_files_are_skipped_with_warning(tmp_path: Path) -> None:
    _write_photos(tmp_path, 3)
    (tmp_path / "broken.jpg").write_bytes(b"not an image at all" * 10)
    with pytest.warns(UserWarning, match=r"Skipping 1 unreadable image file\(s\).*broken\.jpg"):
        dataset = SyntheticReflectionDataset(tmp_path, resolution=32, num_samples=4)
    assert len(dataset.photos) == 3 and all(path.name != "broken.jpg" for path in dataset.photos)
    assert dataset[0]["mixture"].shape == (3, 32, 32)


def test_truncated_file_is_redrawn_at_load_time(tmp_path: Path) -> None:
    _write_photos(tmp_path, 3)
    truncated = tmp_path / "truncated.jpg"
    Image.fromarray(_photo(99, (96, 96))).save(truncated, quality=95)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])  # The header survives: passes PIL's verify(), fails to decode.
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # No construction warning: verify() does not see the truncation.
        dataset = SyntheticReflectionDataset(tmp_path, resolution=32, num_samples=12)
    assert truncated in dataset.photos
    with pytest.warns(UserWarning, match="Redrawing sample"):
        items = [dataset[index] for index in range(12)]
    assert all(item["mixture"].shape == (3, 32, 32) for item in items)


def test_too_few_photos_raises(tmp_path: Path) -> None:
    _write_photos(tmp_path, 1)
    with pytest.raises(ValueError, match="at least 2"):
        SyntheticReflectionDataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing"):
        SyntheticReflectionDataset(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------- paired dataset


def _write_pairs(root: Path, names: list[str], reflection: bool, size: tuple[int, int] = (40, 36)) -> None:
    for folder in ("blended", "transmission_layer") + (("reflection_layer",) if reflection else ()):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        transmission = _photo(100 + index, size).astype(np.int16)
        layer = _photo(200 + index, size).astype(np.int16) // 3
        Image.fromarray(transmission.astype(np.uint8)).save(root / "transmission_layer" / f"{name}.png")
        Image.fromarray(np.clip(transmission + layer, 0, 255).astype(np.uint8)).save(root / "blended" / f"{name}.png")
        if reflection:
            Image.fromarray(layer.astype(np.uint8)).save(root / "reflection_layer" / f"{name}.png")


def test_paired_dataset_with_reflections(tmp_path: Path) -> None:
    _write_pairs(tmp_path, ["a", "b", "c"], reflection=True)
    dataset = PairedReflectionDataset(tmp_path)
    assert dataset.has_reflection and dataset.names == ["a", "b", "c"] and len(dataset) == 3
    item = dataset[1]
    assert set(item) == {"mixture", "transmission", "reflection"}
    expected = torch.from_numpy(_photo(201, (40, 36)) // 3).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(item["reflection"], expected)
    assert item["mixture"].shape == (3, 36, 40)


def test_paired_dataset_residual_and_omit_conventions(tmp_path: Path) -> None:
    _write_pairs(tmp_path, ["x", "y"], reflection=False)
    # Real captures are not exactly additive: make the mixture darker than T in the left half.
    blended = np.array(Image.open(tmp_path / "blended" / "x.png"))
    blended[:, :20] = np.array(Image.open(tmp_path / "transmission_layer" / "x.png"))[:, :20] // 2
    Image.fromarray(blended).save(tmp_path / "blended" / "x.png")
    residual = PairedReflectionDataset(tmp_path)[0]
    difference = residual["mixture"] - residual["transmission"]
    assert difference[:, :, :20].max() <= 0 and difference[:, :, :20].mean() < -0.1
    assert torch.equal(residual["reflection"][:, :, :20], torch.zeros(3, 36, 20))
    torch.testing.assert_close(residual["reflection"][:, :, 20:], difference[:, :, 20:])
    assert residual["reflection"][:, :, 20:].mean() > 0.05
    omitted = PairedReflectionDataset(tmp_path, missing_reflection="omit")[0]
    assert set(omitted) == {"mixture", "transmission"}


def test_paired_dataset_crops_all_layers_alike(tmp_path: Path) -> None:
    _write_pairs(tmp_path, ["p", "q"], reflection=True, size=(64, 48))
    dataset = PairedReflectionDataset(tmp_path, resolution=32, flip_probability=0.5, seed=2)
    batch = next(iter(DataLoader(dataset, batch_size=2)))
    assert batch["mixture"].shape == (2, 3, 32, 32)
    # The files satisfy blended = min(T + R, 255); the crops must still satisfy it, so they are aligned.
    total = ((batch["transmission"] + batch["reflection"]) * 255).round().clamp(max=255)
    torch.testing.assert_close(batch["mixture"] * 255, total, atol=1e-3, rtol=0)
    fresh = PairedReflectionDataset(tmp_path, resolution=32, flip_probability=0.5, seed=2)
    assert torch.equal(fresh[1]["mixture"], batch["mixture"][1])


def test_paired_dataset_reports_missing_folder(tmp_path: Path) -> None:
    _write_pairs(tmp_path, ["a"], reflection=False)
    for file in (tmp_path / "transmission_layer").iterdir():
        file.unlink()
    (tmp_path / "transmission_layer").rmdir()
    with pytest.raises(FileNotFoundError, match="transmission_layer"):
        PairedReflectionDataset(tmp_path)


def test_paired_dataset_reports_mismatched_names(tmp_path: Path) -> None:
    _write_pairs(tmp_path, ["a", "b"], reflection=False)
    (tmp_path / "transmission_layer" / "b.png").rename(tmp_path / "transmission_layer" / "b_gt.png")
    with pytest.raises(ValueError, match=r"blended/ lacks b_gt; transmission_layer/ lacks b$"):
        PairedReflectionDataset(tmp_path)


def test_paired_dataset_reports_size_mismatch(tmp_path: Path) -> None:
    _write_pairs(tmp_path, ["a"], reflection=False)
    Image.fromarray(_photo(5, (20, 20))).save(tmp_path / "transmission_layer" / "a.png")
    with pytest.raises(ValueError, match="different sizes"):
        PairedReflectionDataset(tmp_path)
