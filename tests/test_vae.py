"""FGFM decoder: exact base-VAE behaviour at init, modulation when trained, feature checks."""

import pytest
import torch
from diffusers import AutoencoderKL

from reflection_separation.vae import FGFMAutoencoderKL


def base_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        norm_num_groups=4,
    ).eval()


@torch.no_grad()
def test_fgfm_at_init_decodes_exactly_like_autoencoderkl():
    base = base_vae()
    fgfm = FGFMAutoencoderKL.from_vae(base).eval()
    mixture = torch.rand(2, 3, 32, 32) * 2 - 1
    latent, features = fgfm.encode_with_features(mixture)
    torch.testing.assert_close(latent, base.encode(mixture).latent_dist.mode(), atol=0, rtol=0)
    z = torch.randn(4, 4, 8, 8)  # [T; R] for the two mixtures
    expected = base.decode(z).sample
    assert torch.equal(fgfm.decode(z, mixture_features=features, fgfm_strength=0.8).sample, expected)
    assert torch.equal(fgfm.decode(z).sample, expected)


@torch.no_grad()
def test_features_are_multiscale_and_match_decoder_blocks():
    fgfm = FGFMAutoencoderKL.from_vae(base_vae())
    _, features = fgfm.encode_with_features(torch.zeros(1, 3, 32, 32))
    assert [tuple(f.shape) for f in features] == [(1, 8, 32, 32), (1, 16, 16, 16), (1, 16, 8, 8)]
    assert [fgfm.fgfm_encoder_index(j) for j in range(3)] == [1, 0, 0]


@torch.no_grad()
def test_features_and_fusion_follow_the_definition():
    """The written-out paths against the definition, computed here with forward hooks on a plain AutoencoderKL:
    features are each down block's last resnet output; FGFM adds ``w f([y_enc | y_dec])`` after each up block."""
    base = base_vae()
    fgfm = FGFMAutoencoderKL.from_vae(base).eval()
    for fusion in fgfm.fgfm_fusions:
        torch.nn.init.normal_(fusion.proj_out.weight, std=0.05)
    mixture = torch.rand(2, 3, 32, 32) * 2 - 1
    recorded = []
    hooks = [block.resnets[-1].register_forward_hook(lambda m, args, out: recorded.append(out))
             for block in base.encoder.down_blocks]
    base.encode(mixture)
    _, features = fgfm.encode_with_features(mixture)
    assert len(features) == 3 and all(torch.equal(a, b) for a, b in zip(features, recorded))
    for hook in hooks:
        hook.remove()
    z = torch.randn(2, 4, 8, 8)

    def fuse(up_index: int):
        fusion, encoder_features = fgfm.fgfm_fusions[up_index], features[fgfm.fgfm_encoder_index(up_index)]
        return lambda module, args, out: out + 0.8 * fusion(encoder_features, out)

    hooks = [block.register_forward_hook(fuse(j)) for j, block in enumerate(base.decoder.up_blocks)]
    expected = base.decode(z).sample
    for hook in hooks:
        hook.remove()
    assert torch.equal(fgfm.decode(z, mixture_features=features, fgfm_strength=0.8).sample, expected)


@torch.no_grad()
def test_trained_fusion_modulates_and_strength_scales_it():
    fgfm = FGFMAutoencoderKL.from_vae(base_vae()).eval()
    for fusion in fgfm.fgfm_fusions:
        torch.nn.init.normal_(fusion.proj_out.weight, std=0.05)
    mixture = torch.rand(1, 3, 32, 32) * 2 - 1
    _, features = fgfm.encode_with_features(mixture)
    z = torch.randn(2, 4, 8, 8)
    plain = fgfm.decode(z).sample
    assert torch.equal(fgfm.decode(z, mixture_features=features, fgfm_strength=0.0).sample, plain)
    weak = fgfm.decode(z, mixture_features=features, fgfm_strength=0.2).sample
    strong = fgfm.decode(z, mixture_features=features, fgfm_strength=0.8).sample
    assert 0 < (weak - plain).abs().mean() < (strong - plain).abs().mean()
    fgfm.enable_slicing()
    torch.testing.assert_close(fgfm.decode(z, mixture_features=features).sample, strong, atol=1e-5, rtol=1e-5)


def test_mismatched_features_are_rejected():
    fgfm = FGFMAutoencoderKL.from_vae(base_vae())
    _, features = fgfm.encode_with_features(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="processing resolution"):
        fgfm.decode(torch.randn(2, 4, 4, 4), mixture_features=features)
    with pytest.raises(ValueError, match="maps"):
        fgfm.decode(torch.randn(2, 4, 8, 8), mixture_features=features[:1])
    with pytest.raises(ValueError, match="multiple"):
        fgfm.decode(torch.randn(3, 4, 8, 8), mixture_features=[f.repeat(2, 1, 1, 1) for f in features])


def test_save_and_load_keeps_config_and_weights(tmp_path):
    fgfm = FGFMAutoencoderKL.from_vae(base_vae(), fgfm_reduction=4)
    torch.nn.init.normal_(fgfm.fgfm_fusions[0].proj_out.weight)
    fgfm.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    loaded = FGFMAutoencoderKL.from_pretrained(tmp_path)
    assert loaded.config.fgfm_reduction == 4
    for key, value in fgfm.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
