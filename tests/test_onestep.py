"""One-step separation: one UNet call on a zero start latent at the last timestep, and its training stage."""

import json

import numpy as np
import pytest
import torch

from reflection_separation import ReflectionSeparationPipeline
from reflection_separation.components import ModelSizeConfig, build_pipeline, make_scheduler
from reflection_separation.composition import composition_loss
from reflection_separation.data import SyntheticReflectionDataset
from reflection_separation.training import TrainingConfig, build_objective, main

from .conftest import generator, random_image, write_photos

pytestmark = pytest.mark.usefixtures("single_thread")

ONE_STEP = {"processing_resolution": 64, "output_type": "np"}


def tiny(prediction_type: str = "epsilon", seed: int = 0) -> ReflectionSeparationPipeline:
    """A tiny pipeline whose FGFM blocks and C are not at their zero initialization, so both take part."""
    config = ModelSizeConfig(prediction_type=prediction_type, zero_terminal_snr=prediction_type == "v_prediction")
    pipe = build_pipeline(config, seed=seed)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        for fusion in pipe.vae.fgfm_fusions:
            torch.nn.init.normal_(fusion.proj_out.weight, std=0.1)
        torch.nn.init.normal_(pipe.composition_net.conv_out.weight, std=0.1)
    return pipe


def count_unet_calls(pipe: ReflectionSeparationPipeline) -> list[int]:
    calls = []
    pipe.unet.register_forward_hook(lambda module, args, output: calls.append(1))
    return calls


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_one_step_equals_a_hand_written_unet_call_and_fgfm_decode(prediction_type):
    pipe = tiny(prediction_type)
    image = torch.rand(3, 32, 24, generator=generator(0))
    out = pipe(image, one_step=True, processing_resolution=0, match_input_resolution=False, output_type="pt")

    with torch.no_grad():
        latent, features = pipe.vae.encode_with_features(image[None] * 2 - 1)
        mixture = latent * pipe.vae.config.scaling_factor
        tokens = pipe.tokenizer(["Transmission", "Reflection"], padding="max_length",
                                max_length=pipe.tokenizer.model_max_length, return_tensors="pt")
        prompts = pipe.text_encoder(tokens.input_ids)[0]
        t = pipe.scheduler.config.num_train_timesteps - 1
        alpha = pipe.scheduler.alphas_cumprod[t].double()
        unet_input = torch.cat([torch.zeros_like(mixture).repeat(2, 1, 1, 1), mixture.repeat(2, 1, 1, 1)], dim=1)
        output = pipe.unet(unet_input, t, encoder_hidden_states=prompts).sample
        if prediction_type == "epsilon":  # x0 = (x_t - sqrt(1 - a) eps) / sqrt(a) at x_t = 0
            x0 = -((1 - alpha).sqrt() / alpha.sqrt()).float() * output
        else:  # x0 = sqrt(a) x_t - sqrt(1 - a) v, and a = 0 on the zero-terminal-SNR schedule
            assert alpha == 0
            x0 = -output
        decoded = pipe.vae.decode(x0 / pipe.vae.config.scaling_factor, mixture_features=features,
                                  fgfm_strength=0.8).sample
        expected = ((decoded + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(out.transmission[0], expected[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(out.reflection[0], expected[1], rtol=0, atol=1e-5)
    assert (out.transmission - out.reflection).abs().max() > 1e-3  # the two prompts give two layers


def test_one_step_is_one_unet_call_deterministic_and_equals_num_inference_steps_1(rng):
    pipe = tiny("v_prediction")
    image = random_image(rng)
    calls = count_unet_calls(pipe)
    steps = []
    a = pipe(image, one_step=True, generator=generator(0),
             callback_on_step_end=lambda p, i, t, k: steps.append(int(t)) or {}, **ONE_STEP)
    assert len(calls) == 1 and steps == [999] and pipe.num_timesteps == 1
    b = pipe(image, num_inference_steps=1, generator=generator(1), **ONE_STEP)
    for layer in ("transmission", "reflection"):
        np.testing.assert_array_equal(getattr(a, layer), getattr(b, layer))
    # the default config separates in several steps, and generators then matter
    c = pipe(image, generator=generator(0), num_inference_steps=3, **ONE_STEP)
    assert len(calls) == 2 + 3 and np.abs(c.transmission - a.transmission).max() > 1e-3


def test_default_one_step_survives_save_and_load(tmp_path, rng):
    pipe = tiny("v_prediction")
    image = random_image(rng)
    expected = pipe(image, one_step=True, **ONE_STEP)
    pipe.register_to_config(default_one_step=True)
    pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["default_one_step"] is True
    loaded = ReflectionSeparationPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.default_one_step is True
    calls = count_unet_calls(loaded)
    out = loaded(image, **ONE_STEP)  # no step arguments: the config's one step
    assert len(calls) == 1
    np.testing.assert_allclose(out.transmission, expected.transmission, rtol=0, atol=1e-5)
    np.testing.assert_allclose(out.reflection, expected.reflection, rtol=0, atol=1e-5)
    loaded(image, one_step=False, num_inference_steps=2, **ONE_STEP)  # overriding the default samples again
    assert len(calls) == 1 + 2
    assert build_pipeline().config.default_one_step is False


def test_explicit_fast_guidance_lowers_the_composition_loss_of_the_estimate(rng):
    pipe = tiny("v_prediction")
    image = random_image(rng)
    settings = {"one_step": True, "processing_resolution": 64, "output_type": "latent"}
    plain = pipe(image, **settings)
    default = pipe(image, composition_guidance=None, **settings)  # the config's "fast" is not used in one step
    guided = pipe(image, composition_guidance="fast", composition_guidance_scale=0.05, composition_guidance_steps=3,
                  **settings)
    assert pipe.config.default_composition_guidance == "fast"
    torch.testing.assert_close(default.transmission, plain.transmission, rtol=0, atol=0)
    pixels, _, _ = pipe.image_processor.preprocess(pipe.image_processor.to_tensors(image)[0], 64)
    mixture, _ = pipe.encode_mixture(pixels)
    with torch.no_grad():
        before = composition_loss(pipe.composition_net, plain.transmission, plain.reflection, mixture).item()
        after = composition_loss(pipe.composition_net, guided.transmission, guided.reflection, mixture).item()
    assert after < 0.9 * before, (before, after)


def test_one_step_input_errors(rng):
    pipe = tiny("v_prediction")
    image = random_image(rng)
    with pytest.raises(ValueError, match="composition_guidance='full'.*one-step"):
        pipe(image, one_step=True, composition_guidance="full", **ONE_STEP)
    with pytest.raises(ValueError, match="`one_step=True` contradicts `num_inference_steps=4`"):
        pipe(image, one_step=True, num_inference_steps=4, **ONE_STEP)
    with pytest.raises(ValueError, match="`one_step=False` contradicts `num_inference_steps=1`"):
        pipe(image, one_step=False, num_inference_steps=1, **ONE_STEP)
    with pytest.raises(ValueError, match="`ensemble_size=3` with one-step separation"):
        pipe(image, one_step=True, ensemble_size=3, **ONE_STEP)
    epsilon_zero_snr = tiny("epsilon")
    epsilon_zero_snr.scheduler = make_scheduler("epsilon", zero_terminal_snr=True)
    with pytest.raises(ValueError, match="epsilon-prediction model says nothing"):
        epsilon_zero_snr(image, one_step=True, **ONE_STEP)


def test_onestep_loss_goes_down_on_a_fixed_batch(tmp_path):
    photos = write_photos(tmp_path / "photos")
    pipe = tiny("v_prediction")
    objective = build_objective("onestep", pipe, TrainingConfig(output_dir=str(tmp_path), photos=str(photos)))
    assert [n for n, p in objective.named_parameters() if p.requires_grad] == [
        f"trainable.{n}" for n, _ in pipe.unet.named_parameters()]  # the UNet only: VAE, C, text encoder frozen
    dataset = SyntheticReflectionDataset(photos, resolution=32, num_samples=4, seed=0)
    batch = {k: torch.stack([dataset[i][k] for i in range(4)]) for k in ("mixture", "transmission", "reflection")}
    optimizer = torch.optim.Adam(pipe.unet.parameters(), lr=2e-3)
    losses = []
    for _ in range(12):
        loss = objective(batch, [generator(i) for i in range(4)])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.95 * losses[0] and losses[-1] == min(losses), losses


def test_onestep_stage_trains_the_unet_and_saves_a_one_step_pipeline(tmp_path):
    photos = write_photos(tmp_path / "photos")
    start = tiny("v_prediction")
    start.save_pretrained(tmp_path / "start")
    stage = {"steps": 6, "batch_size": 2, "learning_rate": 1e-3, "checkpointing_steps": 100, "validation_steps": 6,
             "log_steps": 1}
    values = {"output_dir": str(tmp_path / "unused"), "photos": str(photos), "resolution": 32, "num_samples": 64,
              "validation_images": 2, "validation_fraction": 0.4, "onestep_composition_weight": 0.1,
              "stages": {"onestep": stage}}  # the model: a from-scratch default, replaced by --pipeline-from
    (tmp_path / "config.json").write_text(json.dumps(values))
    command = ["--config", str(tmp_path / "config.json"), "--stage", "onestep", "--pipeline-from",
               str(tmp_path / "start"), "--output-dir", str(tmp_path / "run")]
    assert main(command) == 0
    config = TrainingConfig.from_dict({**values, "output_dir": str(tmp_path / "run")})
    assert not (tmp_path / "unused").exists()

    log = [json.loads(line) for line in (tmp_path / "run" / "onestep" / "log.jsonl").read_text().splitlines()]
    losses = [record["loss"] for record in log if "loss" in record]
    assert len(losses) == 6 and all(np.isfinite(losses)) and min(losses[3:]) < losses[0], losses
    validation = [record for record in log if "val_psnr_t" in record]
    assert len(validation) == 1 and np.isfinite([validation[0]["val_psnr_t"], validation[0]["val_psnr_r"]]).all()

    trained = ReflectionSeparationPipeline.from_pretrained(config.pipeline_dir)
    assert trained.config.default_one_step is True
    before, after = start.unet.state_dict(), trained.unet.state_dict()
    assert max((after[k] - before[k]).abs().max().item() for k in before) > 1e-4
    for name in ("vae", "composition_net", "text_encoder"):  # frozen
        original, saved = getattr(start, name).state_dict(), getattr(trained, name).state_dict()
        assert all(torch.equal(original[k], saved[k]) for k in original), name
    trained.set_progress_bar_config(disable=True)
    calls = count_unet_calls(trained)
    out = trained(np.random.default_rng(0).random((40, 40, 3), dtype=np.float32), processing_resolution=32,
                  output_type="np")
    assert len(calls) == 1 and out.transmission.shape == (1, 40, 40, 3)


def test_cli_one_step_flags(tmp_path, capsys):
    from PIL import Image

    from reflection_separation import cli

    pipe = tiny("v_prediction")
    pipe.register_to_config(default_denoising_steps=2, default_processing_resolution=32)
    pipe.save_pretrained(tmp_path / "model")
    photo = Image.fromarray((np.random.default_rng(0).random((40, 36, 3)) * 255).astype(np.uint8))
    photo.save(tmp_path / "a.png")

    def separate(out: str, *options: str) -> tuple[np.ndarray, np.ndarray]:
        code = cli.main(["separate", str(tmp_path / "a.png"), "-o", str(tmp_path / out), "--model",
                         str(tmp_path / "model"), "--quiet", *options])
        assert code == 0
        return tuple(np.asarray(Image.open(tmp_path / out / f"a_{layer}.png")) for layer in ("transmission", "reflection"))

    one_step = separate("one", "--one-step", "--seed", "1")
    expected = pipe(photo, one_step=True)
    np.testing.assert_array_equal(one_step[0], np.asarray(expected.transmission[0]))
    np.testing.assert_array_equal(one_step[1], np.asarray(expected.reflection[0]))
    np.testing.assert_array_equal(separate("steps1", "--steps", "1")[0], one_step[0])
    assert np.abs(separate("loop")[0].astype(int) - one_step[0]).max() > 0  # the model's default: 2 steps

    for options in (["--one-step", "--steps", "3"], ["--no-one-step", "--steps", "1"],
                    ["--one-step", "--composition-guidance", "full"], ["--one-step", "--ensemble-size", "2"]):
        assert cli.main(["separate", str(tmp_path / "a.png"), "-o", str(tmp_path / "bad"), "--model",
                         str(tmp_path / "model"), "--quiet", *options]) == 2
    assert "--one-step contradicts --steps 3" in capsys.readouterr().err


def test_gradio_one_step_checkbox():
    pytest.importorskip("gradio")
    from PIL import Image

    from .conftest import load_script

    app = load_script("examples/gradio_app.py")
    pipe = tiny("v_prediction")
    pipe.register_to_config(default_one_step=True)
    demo = app.build_demo(pipe, examples=[])
    checkboxes = [block for block in demo.blocks.values() if type(block).__name__ == "Checkbox"]
    assert [(box.label, box.value) for box in checkboxes] == [("One step", True)]  # the model's default
    photo = Image.fromarray((np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8))
    separate = app.make_separate_fn(pipe)
    transmission, reflection, _, info = separate(photo, 20, 0.2, 0.8, "off", 0.01, 32, 5, 1, True)
    expected = pipe(photo, one_step=True, processing_resolution=32)
    np.testing.assert_array_equal(np.asarray(transmission), np.asarray(expected.transmission[0]))
    np.testing.assert_array_equal(np.asarray(reflection), np.asarray(expected.reflection[0]))
    assert "one step (one UNet call)" in info
    assert "2 steps" in separate(photo, 2, 0.2, 0.8, "off", 0.01, 32, 5, 1, False)[3]
    with pytest.raises(app.gr.Error, match="ensemble_size"):
        separate(photo, 2, 0.2, 0.8, "off", 0.01, 32, 5, 3, True)
