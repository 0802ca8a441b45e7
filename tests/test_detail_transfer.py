"""Full-resolution detail transfer: the photo's fine detail goes to the transmission (CPU, small tensors)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reflection_separation.image_processing import resize, transfer_detail

from .conftest import FAST, generator


def detailed_scene(size: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A transmission with fine texture and a smooth reflection, (3, size, size) each."""
    g = torch.Generator().manual_seed(seed)
    coarse = F.interpolate(torch.rand(1, 3, 6, 6, generator=g), size=(size, size), mode="bicubic", align_corners=True)
    transmission = (0.5 * coarse[0] + 0.3 * torch.rand(3, size, size, generator=g)).clamp(0, 0.8)
    smooth = F.interpolate(torch.rand(1, 3, 3, 3, generator=g), size=(size, size), mode="bicubic", align_corners=True)
    return transmission, (0.2 * smooth[0]).clamp(0, 0.2)


def low_resolution_separation(transmission, reflection, low):
    """What a perfect model at `low` px returns, resized back: the true layers' low-resolution versions."""
    size = transmission.shape[-2:]
    return torch.stack([resize(resize(layer[None], (low, low)), size)[0] for layer in (transmission, reflection)])


def psnr(a, b):
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


def test_highpass_restores_the_transmissions_detail_and_keeps_t_plus_r():
    transmission, reflection = detailed_scene()
    photo = transmission + reflection  # additive, no clipping
    layers = low_resolution_separation(transmission, reflection, 24)
    none = transfer_detail(layers, photo, (24, 24), "none")
    highpass = transfer_detail(layers, photo, (24, 24), "highpass")
    assert torch.equal(none, layers)
    assert psnr(highpass[0], transmission) > psnr(none[0], transmission) + 6
    torch.testing.assert_close(highpass[1], layers[1])
    # the low-resolution layers add up to the low-resolution photo, so the full-resolution ones add up to the photo
    torch.testing.assert_close(highpass[0] + highpass[1], photo, rtol=0, atol=2e-2)
    residual = transfer_detail(layers, photo, (24, 24), "residual")
    torch.testing.assert_close(residual[0], (photo - layers[1]).clamp(0, 1))


def test_nothing_changes_at_the_processing_size_and_bad_modes_are_refused():
    transmission, reflection = detailed_scene(32)
    layers = torch.stack([transmission, reflection])
    assert torch.equal(transfer_detail(layers, transmission + reflection, (32, 32), "highpass"), layers)
    with pytest.raises(ValueError, match="detail_transfer"):
        transfer_detail(layers, transmission, (16, 16), "sharpen")


def test_pipeline_detail_transfer_modes(tiny_pipe, rng):
    photo = rng.random((96, 80, 3), dtype=np.float32)
    settings = {**FAST, "processing_resolution": 32}
    none = tiny_pipe(photo, generator=generator(0), detail_transfer="none", **settings)
    highpass = tiny_pipe(photo, generator=generator(0), detail_transfer="highpass", **settings)
    default = tiny_pipe(photo, generator=generator(0), **settings)
    np.testing.assert_array_equal(default.transmission, none.transmission)  # the config default is "none"
    np.testing.assert_array_equal(highpass.reflection, none.reflection)
    expected = transfer_detail(
        torch.from_numpy(np.stack([none.transmission[0], none.reflection[0]])).permute(0, 3, 1, 2),
        torch.from_numpy(photo).permute(2, 0, 1), (32, 27), "highpass",
    )
    np.testing.assert_allclose(highpass.transmission[0], expected[0].permute(1, 2, 0).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="detail_transfer"):
        tiny_pipe(photo, detail_transfer="sharp", **settings)


def test_residual_transfer_decodes_only_the_reflection(tiny_pipe, rng, monkeypatch):
    """With "residual" transfer after a resize, T is the photo minus R, so the pipeline decodes R alone (and skips the
    autoencoder detail, which only T gets): the layers equal those of the full decode, from a third of its rows."""
    rows = []
    decode = tiny_pipe.vae.decode

    def counting(latents, *args, **kwargs):
        rows.append(latents.shape[0])
        return decode(latents, *args, **kwargs)

    monkeypatch.setattr(tiny_pipe.vae, "decode", counting)
    photo = rng.random((96, 80, 3), dtype=np.float32)
    settings = {**FAST, "processing_resolution": 32, "autoencoder_detail": True}
    full = tiny_pipe(photo, generator=generator(0), detail_transfer="none", **settings)
    assert rows == [1, 2]  # the photo's round trip, then [T; R]
    rows.clear()
    residual = tiny_pipe(photo, generator=generator(0), detail_transfer="residual", **settings)
    assert rows == [1]
    np.testing.assert_allclose(residual.reflection[0], full.reflection[0], atol=1e-6)
    np.testing.assert_allclose(residual.transmission[0], np.clip(photo - full.reflection[0], 0, 1), atol=1e-6)
    rows.clear()
    pil = {**settings, "output_type": "pil"}
    tiny_pipe([photo, photo[:32, :32]], generator=generator(0), detail_transfer="residual", batch_size=2, **pil)
    assert rows == [1, 1, 2]  # two batches: R alone; the 32 px photo, not resized, keeps its own T (and its detail)
    rows.clear()
    tiny_pipe([photo[:64, :64], photo[:32, :32]], generator=generator(0), detail_transfer="residual", batch_size=2, **pil)
    assert rows == [2, 4]  # one batch of 32 px inputs, one of them resized: both layers of both decoded
