"""Latent composition network C and the test-time guidance that lowers L_comp."""

import torch

from reflection_separation.composition import LatentCompositionGuidance, LatentCompositionNet, composition_loss
from reflection_separation.scheduling import DisjointSampling, tweedie_x0


def trained_like_net() -> LatentCompositionNet:
    torch.manual_seed(0)
    net = LatentCompositionNet(latent_channels=4, hidden_channels=16, num_blocks=1, norm_groups=4)
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)
    return net


def test_composition_net_starts_as_latent_sum():
    net = LatentCompositionNet(latent_channels=4, hidden_channels=16, num_blocks=1, norm_groups=4)
    zt, zr = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(net(zt, zr), zt + zr, atol=1e-6, rtol=1e-6)


def test_loss_is_per_image():
    net = trained_like_net()
    zt, zr, zi = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    loss = composition_loss(net, zt, zr, zi)
    assert loss.shape == (3,)
    expected = ((net(zt[1:2], zr[1:2]) - zi[1:2]) ** 2).mean()
    torch.testing.assert_close(loss[1], expected)


def test_fast_guidance_step_lowers_composition_loss():
    net = trained_like_net()
    guidance = LatentCompositionGuidance(net, scale=0.02, steps=1)
    torch.manual_seed(1)
    latents, eps, mixture = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8), torch.randn(2, 4, 8, 8)
    alpha = torch.tensor(0.5, dtype=torch.float64)

    def predict_x0(z):
        return tweedie_x0(z, eps, alpha)

    before = guidance.loss(predict_x0(latents), mixture)
    updated = guidance(latents, predict_x0, mixture, alpha)
    after = guidance.loss(predict_x0(updated), mixture)
    assert torch.all(after < before), (before, after)
    # each latent moved by scale * sqrt(1 - a) of its own norm
    moved = (updated - latents).flatten(1).norm(dim=1) / latents.flatten(1).norm(dim=1)
    torch.testing.assert_close(moved, torch.full((4,), 0.02 * 0.5**0.5), atol=1e-5, rtol=1e-4)


def test_guidance_keeps_images_independent():
    net = trained_like_net()
    guidance = LatentCompositionGuidance(net, scale=0.05, steps=2)
    torch.manual_seed(2)
    latents, eps, mixture = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8), torch.randn(2, 4, 8, 8)
    alpha = torch.tensor(0.4, dtype=torch.float64)
    both = guidance(latents, lambda z: tweedie_x0(z, eps, alpha), mixture, alpha)
    rows = [0, 2]  # image 0: T row 0, R row 2
    single = guidance(latents[rows], lambda z: tweedie_x0(z, eps[rows], alpha), mixture[:1], alpha)
    torch.testing.assert_close(both[rows], single, atol=1e-6, rtol=1e-6)


def guided_step_inputs(pipe, seed: int):
    """A trained-like C, a mid-schedule timestep, random stacked latents and mixture, prompts, sampler, a_t."""
    torch.nn.init.normal_(pipe.composition_net.conv_out.weight, std=0.1)
    pipe.scheduler.set_timesteps(10)
    t = pipe.scheduler.timesteps[2]
    torch.manual_seed(seed)
    latents, mixture = torch.randn(2, 4, 16, 16), torch.randn(1, 4, 16, 16)
    prompts = pipe.layer_prompt_batch(pipe.encode_layer_prompts(), 1)
    sampler = DisjointSampling(pipe.scheduler)
    return t, latents, mixture, prompts, sampler, sampler.alpha_prod(int(t))


def test_full_guidance_through_the_unet_lowers_composition_loss(tiny_pipe):
    pipe = tiny_pipe
    t, latents, mixture, prompts, sampler, alpha = guided_step_inputs(pipe, seed=3)
    with torch.no_grad():
        eps = sampler.epsilon(pipe.predict_noise(latents, t, mixture, prompts), t, latents, 0.2)
    full = pipe._x0_predictor("full", eps, t, int(t), alpha, sampler, 0.2, mixture, prompts)
    fast = pipe._x0_predictor("fast", eps, t, int(t), alpha, sampler, 0.2, mixture, prompts)
    guidance = LatentCompositionGuidance(pipe.composition_net, scale=0.01, steps=1)
    with torch.no_grad():
        torch.testing.assert_close(full(latents), fast(latents), atol=1e-5, rtol=1e-5)
        before = guidance.loss(full(latents), mixture)
    updated_full = guidance(latents, full, mixture, alpha)
    updated_fast = guidance(latents, fast, mixture, alpha)
    with torch.no_grad():
        assert guidance.loss(full(updated_full), mixture) < before
        # the full gradient includes the UNet's Jacobian, so it takes a different direction
        assert (updated_full - updated_fast).abs().max() > 1e-6


def test_full_guidance_step_reuses_the_steps_unet_forward_with_the_same_result(tiny_pipe):
    pipe = tiny_pipe
    t, latents, mixture, prompts, sampler, alpha = guided_step_inputs(pipe, seed=4)
    guidance = LatentCompositionGuidance(pipe.composition_net, scale=0.01, steps=2)

    # reference: the step as two separate UNet evaluations (no-grad noise estimate, then the guidance's own)
    with torch.no_grad():
        eps = sampler.epsilon(pipe.predict_noise(latents, t, mixture, prompts), int(t), latents, 0.2)
    full = pipe._x0_predictor("full", eps, t, int(t), alpha, sampler, 0.2, mixture, prompts)
    with pipe._guided_unet(True, False):
        expected_latents = guidance(latents, full, mixture, alpha)
    expected_output = sampler.model_output(eps, int(t), expected_latents)

    calls = []
    pipe.unet.register_forward_hook(lambda *args: calls.append(1))
    for checkpointing in (False, True):
        calls.clear()
        with torch.no_grad():
            output, guided = pipe.guided_model_output(
                latents, t, int(t), mixture, prompts, sampler, 0.2, guidance, "full", checkpointing
            )
        torch.testing.assert_close(guided, expected_latents, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(output, expected_output, atol=1e-6, rtol=1e-5)
        assert len(calls) == 2  # two guidance steps, one UNet forward each (the reference takes three)
        assert all(p.requires_grad for p in pipe.unet.parameters())  # frozen only during the step
