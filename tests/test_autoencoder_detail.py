"""`autoencoder_detail`: the transmission gets the photo's detail that the autoencoder's round trip loses."""

import pytest
import torch

from reflection_separation import ReflectionSeparationPipeline

from .conftest import generator
from .test_onestep import tiny

pytestmark = pytest.mark.usefixtures("single_thread")


def test_adds_what_the_round_trip_loses_to_t_only():
    pipe = tiny("v_prediction")
    image = torch.rand(3, 32, 24, generator=generator(0))
    call = {"one_step": True, "processing_resolution": 0, "match_input_resolution": False, "output_type": "pt"}
    plain = pipe(image, autoencoder_detail=False, **call)
    detailed = pipe(image, autoencoder_detail=True, **call)

    layers = pipe(image, output_type="latent", **{k: v for k, v in call.items() if k != "output_type"}).transmission
    with torch.no_grad():
        latent, features = pipe.vae.encode_with_features(image[None] * 2 - 1)
        round_trip = pipe.vae.decode(latent, mixture_features=features, fgfm_strength=0.8).sample
        transmission = pipe.decode_latents(layers, features, 0.8)  # unclamped, as the pipeline has it
    lost = (image[None] * 2 - 1) - round_trip
    assert lost.abs().mean() > 1e-2  # the tiny autoencoder loses a good part of a random image
    expected = (transmission + lost).clamp(-1, 1)
    torch.testing.assert_close(detailed.transmission, ((expected + 1) / 2), rtol=0, atol=1e-5)
    torch.testing.assert_close(detailed.reflection, plain.reflection, rtol=0, atol=0)


def test_ensemble_members_sharing_a_mixture_batch_like_single_calls():
    pipe = tiny("v_prediction")
    images = [torch.rand(3, 32, 32, generator=generator(seed)) for seed in (1, 2)]
    call = {"num_inference_steps": 2, "processing_resolution": 0, "autoencoder_detail": True, "ensemble_size": 2,
            "output_type": "pt", "composition_guidance": "off"}
    batched = pipe(images, batch_size=4, generator=[generator(seed) for seed in range(2)], **call)
    single = pipe(images, batch_size=1, generator=[generator(seed) for seed in range(2)], **call)
    torch.testing.assert_close(batched.transmission, single.transmission, rtol=0, atol=1e-5)
    torch.testing.assert_close(batched.reflection, single.reflection, rtol=0, atol=1e-5)


def test_config_default_is_saved_loaded_and_checked(tmp_path):
    pipe = tiny("v_prediction")
    image = torch.rand(3, 32, 32, generator=generator(3))
    call = {"one_step": True, "processing_resolution": 0, "output_type": "pt"}
    pipe.register_to_config(default_autoencoder_detail=True)
    pipe.save_pretrained(tmp_path)
    loaded = ReflectionSeparationPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.default_autoencoder_detail is True
    by_default = loaded(image, **call).transmission
    torch.testing.assert_close(by_default, pipe(image, autoencoder_detail=True, **call).transmission, rtol=0, atol=1e-5)
    assert (by_default - pipe(image, autoencoder_detail=False, **call).transmission).abs().max() > 1e-3
    with pytest.raises(TypeError, match="autoencoder_detail"):
        pipe(image, autoencoder_detail="yes", **call)


def _cli_transmission(tmp_path, out: str, *options: str):
    """The transmission the CLI writes for `tmp_path/a.png` with the model in `tmp_path/model`."""
    import numpy as np
    from PIL import Image

    from reflection_separation import cli

    assert cli.main(["separate", str(tmp_path / "a.png"), "-o", str(tmp_path / out), "--model",
                     str(tmp_path / "model"), "--quiet", *options]) == 0
    return np.asarray(Image.open(tmp_path / out / "a_transmission.png"))


def _saved_tiny_model_and_photo(tmp_path, size: tuple[int, int], **config):
    import numpy as np
    from PIL import Image

    pipe = tiny("v_prediction")
    pipe.register_to_config(default_processing_resolution=32, default_one_step=True, **config)
    pipe.save_pretrained(tmp_path / "model")
    photo = Image.fromarray((np.random.default_rng(0).random((*size, 3)) * 255).astype(np.uint8))
    photo.save(tmp_path / "a.png")
    return pipe, photo


def test_cli_flag_overrides_the_model_default(tmp_path):
    import numpy as np

    pipe, photo = _saved_tiny_model_and_photo(tmp_path, (32, 32), default_autoencoder_detail=True)
    np.testing.assert_array_equal(_cli_transmission(tmp_path, "default"), np.asarray(pipe(photo).transmission[0]))
    without = _cli_transmission(tmp_path, "without", "--no-autoencoder-detail")
    np.testing.assert_array_equal(without, np.asarray(pipe(photo, autoencoder_detail=False).transmission[0]))
    assert np.abs(without.astype(int) - _cli_transmission(tmp_path, "with", "--autoencoder-detail")).max() > 0


def test_cli_detail_transfer_flag_reaches_the_pipeline(tmp_path):
    import numpy as np

    from reflection_separation import cli

    pipe, photo = _saved_tiny_model_and_photo(tmp_path, (48, 64), default_detail_transfer="residual")
    highpass = _cli_transmission(tmp_path, "highpass", "--detail-transfer", "highpass")
    np.testing.assert_array_equal(highpass, np.asarray(pipe(photo, detail_transfer="highpass").transmission[0]))
    assert np.abs(highpass.astype(int) - _cli_transmission(tmp_path, "default")).max() > 0
    assert cli.main(["separate", str(tmp_path / "a.png"), "-o", str(tmp_path / "bad"), "--detail-transfer", "sharp"]) == 2
