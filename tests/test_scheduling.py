"""Disjoint sampling: hand-computed values, conversions, and k=0 against the plain scheduler loop."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler
from diffusers.utils.torch_utils import randn_tensor

from reflection_separation.scheduling import (
    DisjointSampling,
    disjoint_combine,
    from_epsilon,
    scheduler_alpha_prod,
    to_epsilon,
    to_sample,
    tweedie_x0,
)

from .conftest import FAST, generator, random_image

SCHEDULERS = [DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler]


def test_disjoint_formula_hand_computed():
    eps = torch.tensor([[1.0, 2.0], [0.5, -1.0]])  # rows [T; R]
    out = disjoint_combine(eps, 0.2)
    # T' = T + 0.2 (T - R) = [1 + 0.1, 2 + 0.6];  R' = R + 0.2 (R - T) = [0.5 - 0.1, -1 - 0.6]
    torch.testing.assert_close(out, torch.tensor([[1.1, 2.6], [0.4, -1.6]]))


def test_disjoint_formula_on_batches_pairs_rows():
    eps = torch.tensor([[1.0], [2.0], [3.0], [5.0]])  # T0 T1 R0 R1
    out = disjoint_combine(eps, 0.5)
    torch.testing.assert_close(out, torch.tensor([[0.0], [0.5], [4.0], [6.5]]))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_epsilon_conversion_round_trip(prediction_type):
    torch.manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    alpha = torch.tensor(0.3, dtype=torch.float64)
    a, s = alpha.sqrt().float(), (1 - alpha).sqrt().float()
    x_t = a * x0 + s * eps
    target = {"epsilon": eps, "v_prediction": a * eps - s * x0, "sample": x0}[prediction_type]
    torch.testing.assert_close(to_epsilon(target, x_t, alpha, prediction_type), eps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(from_epsilon(eps, x_t, alpha, prediction_type), target, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tweedie_x0(x_t, eps, alpha), x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(to_sample(target, x_t, alpha, prediction_type), x0, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_clean_estimate_stays_exact_at_zero_signal(prediction_type):
    torch.manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    alpha = torch.tensor(0.0, dtype=torch.float64)  # the last step of a zero-terminal-SNR schedule: x_t = eps
    target = {"v_prediction": -x0, "sample": x0}[prediction_type]
    torch.testing.assert_close(to_sample(target, eps, alpha, prediction_type), x0)


def test_disjoint_with_v_prediction_combines_in_epsilon_space():
    scheduler = DDIMScheduler(prediction_type="v_prediction")
    scheduler.set_timesteps(10)
    t = scheduler.timesteps[3]
    torch.manual_seed(0)
    v, x_t = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    sampler = DisjointSampling(scheduler)
    a = scheduler.alphas_cumprod[int(t)].double()
    eps = a.sqrt().float() * v + (1 - a).sqrt().float() * x_t
    eps_t, eps_r = eps[:1], eps[1:]
    expected = torch.cat([eps_t + 0.2 * (eps_t - eps_r), eps_r + 0.2 * (eps_r - eps_t)])
    combined = sampler.epsilon(v, t, x_t, 0.2)
    torch.testing.assert_close(combined, expected, atol=1e-6, rtol=1e-6)
    v_back = sampler.model_output(combined, t, x_t)
    torch.testing.assert_close(to_epsilon(v_back, x_t, a, "v_prediction"), combined, atol=1e-5, rtol=1e-5)


def test_alpha_from_sigma_matches_alphas_cumprod():
    euler = EulerDiscreteScheduler(timestep_spacing="leading", steps_offset=1)
    euler.set_timesteps(10)
    for i, t in enumerate(euler.timesteps):
        euler._step_index = i
        expected = euler.alphas_cumprod[int(t)].double()
        assert abs(float(scheduler_alpha_prod(euler, t)) - float(expected)) < 1e-6


def plain_loop(pipe, image, steps):
    """Reference: the scheduler stepped on the raw UNet output, no disjoint sampling, no guidance."""
    pixels, _, _ = pipe.image_processor.preprocess(pipe.image_processor.to_tensors(image)[0], 64)
    mixture, _ = pipe.encode_mixture(pixels)
    prompts = pipe.encode_layer_prompts().repeat_interleave(1, dim=0)
    scheduler = pipe.scheduler
    scheduler.set_timesteps(steps)
    latents = randn_tensor((2, *mixture.shape[1:]), generator=generator(0)) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        unet_in = torch.cat([scheduler.scale_model_input(latents, t), mixture.repeat(2, 1, 1, 1)], dim=1)
        out = pipe.unet(unet_in, t, encoder_hidden_states=prompts).sample
        latents = scheduler.step(out, t, latents).prev_sample
    return latents


@pytest.mark.parametrize("scheduler_cls", SCHEDULERS)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@torch.no_grad()
def test_k0_reproduces_plain_scheduler_bit_for_bit(tiny_pipe, rng, scheduler_cls, prediction_type):
    tiny_pipe.scheduler = scheduler_cls.from_config(tiny_pipe.scheduler.config, prediction_type=prediction_type)
    image = random_image(rng)
    captured = {}

    def keep(pipe, step, t, tensors):
        captured["latents"] = tensors["latents"].clone()
        return {}

    kwargs = {**FAST, "num_inference_steps": 4}
    tiny_pipe(
        image, disjoint_strength=0.0, composition_guidance="off", generator=generator(0),
        callback_on_step_end=keep, callback_on_step_end_tensor_inputs=["latents"], **kwargs,
    )
    reference = plain_loop(tiny_pipe, image, 4)
    assert torch.equal(captured["latents"], reference)

    tiny_pipe(
        image, disjoint_strength=0.2, composition_guidance="off", generator=generator(0),
        callback_on_step_end=keep, callback_on_step_end_tensor_inputs=["latents"], **kwargs,
    )
    assert (captured["latents"] - reference).abs().max() > 1e-4


@torch.no_grad()
def test_works_with_a_scheduler_without_generator_argument(tiny_pipe, rng):
    tiny_pipe.scheduler = UniPCMultistepScheduler.from_config(tiny_pipe.scheduler.config)
    out = tiny_pipe(random_image(rng), generator=generator(0), **FAST)
    assert np.isfinite(out.transmission).all() and out.transmission.shape == (1, 48, 40, 3)


def test_zero_terminal_snr_schedule_needs_v_prediction():
    from reflection_separation.components import ModelSizeConfig, make_scheduler

    assert make_scheduler("v_prediction", zero_terminal_snr=True).alphas_cumprod[-1] == 0
    assert make_scheduler("v_prediction").alphas_cumprod[-1] > 0.004  # Stable Diffusion's: sqrt = 0.068
    with pytest.raises(ValueError, match="v_prediction"):
        ModelSizeConfig(zero_terminal_snr=True)


def test_zero_signal_step_skips_disjoint_and_guidance(rng):
    """At a_t = 0 the epsilon-space rules would divide by zero (NaN outputs before this rule): the first step
    of a zero-terminal-SNR schedule passes the UNet output through unchanged, the later ones still act."""
    from reflection_separation.components import ModelSizeConfig, build_pipeline

    pipe = build_pipeline(ModelSizeConfig(prediction_type="v_prediction", zero_terminal_snr=True), seed=0)
    pipe.set_progress_bar_config(disable=True)
    image = random_image(rng)
    plain = {"disjoint_strength": 0.0, "composition_guidance": "off"}
    method = {"disjoint_strength": 0.2, "composition_guidance": "fast", "composition_guidance_scale": 0.5}
    def after_first_step(settings: dict) -> torch.Tensor:  # the latents once the loop's first step is done
        seen = []

        def record(pipe, step, timestep, tensors):
            seen.append(tensors["latents"].clone())
            return tensors

        pipe(image, generator=generator(0), **{**FAST, "num_inference_steps": 2}, **settings,
             callback_on_step_end=record, callback_on_step_end_tensor_inputs=["latents"])
        return seen[0]

    torch.testing.assert_close(after_first_step(plain), after_first_step(method), rtol=0, atol=0)
    for mode in ("fast", "full"):
        c = pipe(image, generator=generator(0), **FAST, **{**method, "composition_guidance": mode}).transmission
        d = pipe(image, generator=generator(0), **FAST, **plain).transmission
        assert np.isfinite(c).all() and np.abs(c - d).max() > 1e-4
