"""End-to-end behaviour of ReflectionSeparationPipeline on tiny components."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, StableDiffusionPipeline, UNet2DConditionModel

import reflection_separation.pipeline as pipeline_module
from reflection_separation import (
    FGFMAutoencoderKL,
    LatentCompositionNet,
    ReflectionSeparationPipeline,
    ReflectionSeparationPipelineOutput,
)
from reflection_separation.attention import set_cross_layer_attention
from reflection_separation.components import build_pipeline, make_clip_tokenizer

from .conftest import FAST, generator, random_image

pytestmark = pytest.mark.usefixtures("single_thread")


def test_output_shapes_types_and_ranges(tiny_pipe, rng):
    image = random_image(rng, 50, 37)
    out = tiny_pipe(image, generator=generator(0), **FAST)
    assert isinstance(out, ReflectionSeparationPipelineOutput)
    for layer in (out.transmission, out.reflection):
        assert layer.shape == (1, 50, 37, 3) and layer.dtype == np.float32
        assert 0.0 <= layer.min() and layer.max() <= 1.0
    pil = tiny_pipe(PIL.Image.fromarray((image * 255).astype(np.uint8)), generator=generator(0), **{**FAST, "output_type": "pil"})
    assert pil.transmission[0].size == (37, 50) and pil.reflection[0].mode == "RGB"
    pt = tiny_pipe(torch.from_numpy(image).permute(2, 0, 1), generator=generator(0), **{**FAST, "output_type": "pt"})
    assert pt.transmission.shape == (1, 3, 50, 37)


def test_processing_resolution_and_match_input_resolution(tiny_pipe, rng):
    image = random_image(rng, 100, 50)
    out = tiny_pipe(image, match_input_resolution=False, generator=generator(0), **FAST)
    assert out.transmission.shape == (1, 64, 32, 3)  # long side resized to 64, padding cropped off


def test_same_seed_same_output_and_different_seed_differs(tiny_pipe, rng):
    image = random_image(rng)
    a = tiny_pipe(image, generator=generator(0), **FAST)
    b = tiny_pipe(image, generator=generator(0), **FAST)
    c = tiny_pipe(image, generator=generator(1), **FAST)
    assert np.array_equal(a.transmission, b.transmission) and np.array_equal(a.reflection, b.reflection)
    assert np.abs(a.reflection - c.reflection).max() > 1e-4


@pytest.mark.parametrize("guidance_mode", ["off", "fast"])
def test_batch_of_three_equals_three_single_runs(tiny_pipe, rng, guidance_mode):
    images = [random_image(rng) for _ in range(3)]
    batched = tiny_pipe(images, batch_size=3, composition_guidance=guidance_mode, generator=[generator(i) for i in range(3)],
                        **FAST)
    for i, image in enumerate(images):
        single = tiny_pipe(image, composition_guidance=guidance_mode, generator=generator(i), **FAST)
        np.testing.assert_allclose(batched.transmission[i], single.transmission[0], atol=1e-5)
        np.testing.assert_allclose(batched.reflection[i], single.reflection[0], atol=1e-5)


def test_images_of_different_sizes_in_one_call(tiny_pipe, rng):
    images = [PIL.Image.fromarray((random_image(rng, h, w) * 255).astype(np.uint8)) for h, w in ((40, 60), (64, 64))]
    out = tiny_pipe(images, batch_size=2, generator=generator(0), **{**FAST, "output_type": "pil"})
    assert [im.size for im in out.transmission] == [(60, 40), (64, 64)]
    with pytest.raises(ValueError, match="different sizes"):
        tiny_pipe(images, generator=generator(0), **FAST)


def test_return_dict_false_equals_dataclass(tiny_pipe, rng):
    image = random_image(rng)
    out = tiny_pipe(image, generator=generator(0), **FAST)
    transmission, reflection = tiny_pipe(image, generator=generator(0), return_dict=False, **FAST)
    assert np.array_equal(out.transmission, transmission) and np.array_equal(out.reflection, reflection)


def test_callback_receives_requested_tensors_and_can_replace_latents(tiny_pipe, rng):
    seen = []

    def callback(pipe, step, timestep, tensors):
        seen.append((step, sorted(tensors)))
        return {"latents": torch.zeros_like(tensors["latents"])}

    image = random_image(rng)
    zeroed = tiny_pipe(image, generator=generator(0), callback_on_step_end=callback,
                       callback_on_step_end_tensor_inputs=["latents", "mixture_latents"], **FAST)
    assert seen == [(i, ["latents", "mixture_latents"]) for i in range(3)]
    normal = tiny_pipe(image, generator=generator(0), **FAST)
    assert np.abs(zeroed.transmission - normal.transmission).max() > 1e-4


def test_every_component_changes_the_output(tiny_pipe, rng):
    for fusion in tiny_pipe.vae.fgfm_fusions:
        torch.nn.init.normal_(fusion.proj_out.weight, std=0.1)
    torch.nn.init.normal_(tiny_pipe.composition_net.conv_out.weight, std=0.1)
    image = random_image(rng)
    base = {"disjoint_strength": 0.2, "fgfm_strength": 0.8, "composition_guidance": "fast",
            "composition_guidance_scale": 0.05}
    reference = tiny_pipe(image, generator=generator(0), **base, **FAST).transmission
    changes = ({"disjoint_strength": 0.0}, {"fgfm_strength": 0.0}, {"composition_guidance": "off"},
               {"composition_guidance": "full"})
    for change in changes:
        out = tiny_pipe(image, generator=generator(0), **{**base, **change}, **FAST).transmission
        assert np.abs(out - reference).max() > 1e-6, change


def test_defaults_come_from_the_config(rng):
    pipe = build_pipeline()
    pipe.set_progress_bar_config(disable=True)
    pipe.register_to_config(default_denoising_steps=2, default_processing_resolution=64,
                            default_composition_guidance="off")
    calls = []
    pipe(random_image(rng), generator=generator(0), output_type="np",
         callback_on_step_end=lambda p, i, t, k: calls.append(i) or {})
    assert calls == [0, 1]


def test_save_and_load_round_trip(tiny_pipe, rng, tmp_path):
    tiny_pipe.register_to_config(default_denoising_steps=3, default_processing_resolution=64)
    tiny_pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["vae"] == ["fgfm_vae", "FGFMAutoencoderKL"]
    assert index["default_processing_resolution"] == 64
    assert not list(tmp_path.rglob("*.bin")) and list(tmp_path.rglob("*.safetensors"))
    loaded = ReflectionSeparationPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    for name in ("unet", "vae", "text_encoder", "composition_net"):
        original, restored = getattr(tiny_pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert all(torch.equal(original[k], restored[k]) for k in original), name
    image = random_image(rng)
    a = tiny_pipe(image, generator=generator(0), output_type="np")
    b = loaded(image, generator=generator(0), output_type="np")
    # identical weights; CPU kernels may take another path for differently aligned buffers (~1e-6)
    np.testing.assert_allclose(a.transmission, b.transmission, atol=1e-5)
    np.testing.assert_allclose(a.reflection, b.reflection, atol=1e-5)


def test_from_pretrained_without_dtype_loads_fp16_weights_in_float32(tiny_pipe, rng, tmp_path):
    tiny_pipe.to(torch.float16).save_pretrained(tmp_path)
    names = ("unet", "vae", "text_encoder", "composition_net")
    loaded = ReflectionSeparationPipeline.from_pretrained(tmp_path)
    assert {name: getattr(loaded, name).dtype for name in names} == dict.fromkeys(names, torch.float32)
    for name in names:  # the fp16 weights, upcast exactly
        saved = getattr(tiny_pipe, name).state_dict()
        restored = getattr(loaded, name).state_dict()
        assert all(torch.equal(restored[key], value.float()) for key, value in saved.items()), name
    bf16 = ReflectionSeparationPipeline.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    assert {getattr(bf16, name).dtype for name in names} == {torch.bfloat16}
    kept = ReflectionSeparationPipeline.from_pretrained(tmp_path, text_encoder=tiny_pipe.text_encoder)
    assert kept.text_encoder is tiny_pipe.text_encoder and kept.text_encoder.dtype == torch.float16
    assert kept.unet.dtype == torch.float32


def test_loads_through_diffusers_custom_pipeline(tiny_pipe, rng, tmp_path):
    tiny_pipe.save_pretrained(tmp_path)
    loaded = DiffusionPipeline.from_pretrained(tmp_path, custom_pipeline=pipeline_module.__file__, trust_remote_code=True)
    assert type(loaded).__name__ == "ReflectionSeparationPipeline"
    loaded.set_progress_bar_config(disable=True)
    image = random_image(rng)
    np.testing.assert_allclose(
        loaded(image, generator=generator(0), **FAST).transmission,
        tiny_pipe(image, generator=generator(0), **FAST).transmission,
        atol=1e-5,
    )


def tiny_stable_diffusion(tmp_path, prediction_type: str):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16, attention_head_dim=8,
        norm_num_groups=4, sample_size=16,
    )
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4)
    donor = build_pipeline()
    sd = StableDiffusionPipeline(
        vae=vae, unet=unet, text_encoder=donor.text_encoder, tokenizer=make_clip_tokenizer(),
        scheduler=DDIMScheduler(prediction_type=prediction_type), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    sd.save_pretrained(tmp_path)
    return sd


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@torch.no_grad()
def test_from_stable_diffusion_starts_as_sd_on_the_zt_slot(tmp_path, rng, prediction_type):
    sd = tiny_stable_diffusion(tmp_path, prediction_type)
    pipe = ReflectionSeparationPipeline.from_stable_diffusion(tmp_path)
    assert isinstance(pipe.vae, FGFMAutoencoderKL) and isinstance(pipe.composition_net, LatentCompositionNet)
    assert pipe.unet.config.in_channels == 8 and pipe.scheduler.config.prediction_type == prediction_type
    set_cross_layer_attention(pipe.unet, False)
    z_t, z_i = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    prompts = torch.randn(2, 16, 16)
    expected = sd.unet(z_t, 500, encoder_hidden_states=prompts).sample
    widened = pipe.unet(torch.cat([z_t, z_i], dim=1), 500, encoder_hidden_states=prompts).sample
    torch.testing.assert_close(widened, expected, atol=1e-5, rtol=1e-5)
    for key, value in sd.vae.state_dict().items():
        assert torch.equal(pipe.vae.state_dict()[key], value)
    set_cross_layer_attention(pipe.unet, True)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(random_image(rng), generator=generator(0), **FAST)
    assert out.transmission.shape == (1, 48, 40, 3)


def test_tiled_mode_runs_tiles_only_and_stitches_to_full_size(tiny_pipe, rng):
    image = random_image(rng, 72, 100)
    shapes = []

    def record(pipe, step, timestep, tensors):
        shapes.append(tuple(tensors["latents"].shape))
        return {}

    kwargs = {**FAST, "processing_resolution": 0, "generator": generator(0)}
    out = tiny_pipe(image, tile_size=32, tile_overlap=8, batch_size=4, callback_on_step_end=record,
                    callback_on_step_end_tensor_inputs=["latents"], **kwargs)
    assert out.transmission.shape == (1, 72, 100, 3) and np.isfinite(out.reflection).all()
    # the UNet only ever saw 32x32-pixel tiles (16x16 latents), four tiles [T; R] per batch at most
    assert {shape[-2:] for shape in shapes} == {(16, 16)} and max(shape[0] for shape in shapes) == 8
    whole = tiny_pipe(image, tile_size=128, **{**kwargs, "generator": generator(0)})
    untiled = tiny_pipe(image, **{**kwargs, "generator": generator(0)})
    assert np.array_equal(whole.transmission, untiled.transmission)  # one tile covering all = no tiling


def test_tiled_batch_size_does_not_change_results(tiny_pipe, rng):
    image = random_image(rng, 72, 100)
    kwargs = {**FAST, "processing_resolution": 0, "tile_size": 32, "tile_overlap": 8}
    a = tiny_pipe(image, batch_size=1, generator=[generator(3)], **kwargs)
    b = tiny_pipe(image, batch_size=6, generator=[generator(3)], **kwargs)
    np.testing.assert_allclose(a.transmission, b.transmission, atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [({"tile_size": 30}, "multiple of 4"), ({"tile_size": 32, "tile_overlap": 16}, "tile_overlap")])
def test_invalid_tile_arguments(tiny_pipe, rng, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_pipe(random_image(rng), **{**FAST, **kwargs})


def test_full_guidance_checkpointing_gives_the_same_result(tiny_pipe, rng):
    torch.nn.init.normal_(tiny_pipe.composition_net.conv_out.weight, std=0.1)
    image = random_image(rng)
    kwargs = {**FAST, "composition_guidance": "full", "composition_guidance_scale": 0.05}
    checkpointed = tiny_pipe(image, generator=generator(0), guidance_checkpointing=True, **kwargs)
    assert not tiny_pipe.unet.is_gradient_checkpointing  # restored after the call
    assert all(p.requires_grad for p in tiny_pipe.unet.parameters())
    plain = tiny_pipe(image, generator=generator(0), **kwargs)  # the default keeps the activations
    np.testing.assert_allclose(checkpointed.transmission, plain.transmission, atol=1e-6)
    fast = tiny_pipe(image, generator=generator(0), **{**kwargs, "composition_guidance": "fast"})
    assert np.abs(fast.transmission - plain.transmission).max() > 1e-6


def test_replaced_clsa_processors_are_refused_and_fused_projections_keep_the_result(tiny_pipe, rng):
    image = random_image(rng)
    reference = tiny_pipe(image, generator=generator(0), **FAST)
    tiny_pipe.unet.fuse_qkv_projections()  # diffusers' call installs its own (plain) processor on every attention
    with pytest.raises(ValueError, match="set_cross_layer_attention"):
        tiny_pipe(image, generator=generator(0), **FAST)
    set_cross_layer_attention(tiny_pipe.unet)  # CLSA back on attn1, reading the fused projection
    fused_self_attention = [module for module in tiny_pipe.unet.modules() if hasattr(module, "to_qkv")]
    assert fused_self_attention and all(module.fused_projections for module in fused_self_attention)
    fused = tiny_pipe(image, generator=generator(0), **FAST)
    np.testing.assert_allclose(fused.transmission, reference.transmission, atol=1e-5)
    np.testing.assert_allclose(fused.reflection, reference.reflection, atol=1e-5)


def test_model_cpu_offload_gives_the_same_result(tiny_pipe, rng):
    # accelerate's offload hooks on every component (device="cpu" lets the hooks run here without a GPU)
    torch.nn.init.normal_(tiny_pipe.composition_net.conv_out.weight, std=0.1)
    image = random_image(rng)
    kwargs = {**FAST, "composition_guidance": "full", "composition_guidance_scale": 0.05}
    reference = tiny_pipe(image, generator=generator(0), **kwargs)
    tiny_pipe.enable_model_cpu_offload(device="cpu")
    components = (tiny_pipe.unet, tiny_pipe.vae, tiny_pipe.text_encoder, tiny_pipe.composition_net)
    assert all(hasattr(module, "_hf_hook") for module in components)
    # C runs inside the loop, so its hook must not offload the UNet (on a GPU that moved the UNet every step)
    assert tiny_pipe.composition_net._hf_hook.prev_module_hook is None
    offloaded = tiny_pipe(image, generator=generator(0), **kwargs)
    np.testing.assert_array_equal(offloaded.transmission, reference.transmission)
    np.testing.assert_array_equal(offloaded.reflection, reference.reflection)


def test_latent_output_is_the_final_latents_that_decode_to_the_image_output(tiny_pipe, rng):
    image = random_image(rng, 64, 64)  # at the processing resolution: no resize, no padding
    latent = tiny_pipe([image, image], generator=[generator(0), generator(1)], **{**FAST, "output_type": "latent"})
    decoded = tiny_pipe([image, image], generator=[generator(0), generator(1)], **{**FAST, "output_type": "pt"})
    channels, factor = tiny_pipe.vae.config.latent_channels, tiny_pipe.vae_scale_factor
    assert latent.transmission.shape == latent.reflection.shape == (2, channels, 64 // factor, 64 // factor)
    assert not torch.equal(latent.transmission, latent.reflection)
    pixels = tiny_pipe.image_processor.preprocess(torch.from_numpy(image).permute(2, 0, 1), 64)[0]
    _, features = tiny_pipe.encode_mixture(pixels)
    for i in range(2):
        stacked = torch.cat([latent.transmission[i : i + 1], latent.reflection[i : i + 1]])
        layers = ((tiny_pipe.decode_latents(stacked, features, tiny_pipe.config.default_fgfm_strength) + 1) / 2).clamp(0, 1)
        torch.testing.assert_close(layers[0], decoded.transmission[i], atol=1e-5, rtol=0)
        torch.testing.assert_close(layers[1], decoded.reflection[i], atol=1e-5, rtol=0)


@pytest.mark.parametrize("old", ["guidance_scale", "guidance_mode", "guidance_steps"])
def test_old_guidance_argument_names_raise_a_type_error_naming_the_new_one(tiny_pipe, rng, old):
    new = pipeline_module.RENAMED_ARGUMENTS[old]
    with pytest.raises(TypeError, match=f"`{old}` was renamed `{new}`"):
        tiny_pipe(random_image(rng), **{old: 7.5}, **FAST)
    with pytest.raises(TypeError, match="unexpected arguments \\['prompt'\\]"):
        tiny_pipe(random_image(rng), prompt="a cat", **FAST)


def test_config_saved_with_the_old_guidance_keys_loads_with_the_new_names(tiny_pipe, rng, tmp_path):
    tiny_pipe.register_to_config(default_composition_guidance="off", default_composition_guidance_scale=0.3,
                                 default_composition_guidance_steps=2)
    tiny_pipe.save_pretrained(tmp_path)
    index_path = tmp_path / "model_index.json"
    index = json.loads(index_path.read_text())
    for old, new in pipeline_module.RENAMED_CONFIG_KEYS.items():
        index[old] = index.pop(new)  # as saved before the rename
    index_path.write_text(json.dumps(index))
    loaded = ReflectionSeparationPipeline.from_pretrained(tmp_path)
    assert (loaded.config.default_composition_guidance, loaded.config.default_composition_guidance_scale,
            loaded.config.default_composition_guidance_steps) == ("off", 0.3, 2)
    assert not any(old in loaded.config for old in pipeline_module.RENAMED_CONFIG_KEYS)
