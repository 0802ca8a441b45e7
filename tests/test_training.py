"""Training stack: each stage overfits a fixed batch, resume equals an uninterrupted run, output loads."""

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DModel
from PIL import Image
from safetensors.torch import load_file

from reflection_separation import ReflectionSeparationPipeline
from reflection_separation.attention import uses_cross_layer_attention
from reflection_separation.components import build_pipeline, deepen_unet
from reflection_separation.data import (
    SyntheticReflectionDataset,
    is_validation_file,
    list_images,
)
from reflection_separation.training import (
    STAGES,
    BatchSource,
    TrainingConfig,
    build_control_regressor,
    build_objective,
    export_fp16,
    load_pipeline,
    main,
    pixel_loss,
    prepare_photos,
    ssim,
    train_stage,
)

from .conftest import FAST, generator, write_photos


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_photos(tmp_path_factory.mktemp("photos"))


def run_config(photos, output_dir, steps=6, ema=None) -> TrainingConfig:
    stage = {"steps": steps, "batch_size": 2, "learning_rate": 1e-3, "checkpointing_steps": 100,
             "validation_steps": 3, "log_steps": 2, "ema_decay": ema}
    return TrainingConfig.from_dict({
        "output_dir": str(output_dir), "photos": str(photos), "resolution": 32, "num_samples": 64,
        "validation_images": 2, "validation_fraction": 0.4, "validation_inference_steps": 2,
        "control_channels": [8, 16], "stages": {name: stage for name in STAGES},
    })


# `onestep` decodes through the tiny pipeline's untrained VAE, which bounds its loss (0.60 even for the true layers'
# latents): tests/test_onestep.py checks its own decrease.
@pytest.mark.parametrize("stage", [stage for stage in STAGES if stage != "onestep"])
def test_each_stage_loss_goes_down_on_a_fixed_batch(photos, stage, tmp_path):
    config = run_config(photos, tmp_path)
    pipe = build_pipeline()
    objective = build_objective(stage, pipe, config)
    dataset = SyntheticReflectionDataset(photos, resolution=32, num_samples=4, seed=0)
    batch = {k: torch.stack([dataset[i][k] for i in range(4)]) for k in ("mixture", "transmission", "reflection")}
    optimizer = torch.optim.Adam([p for p in objective.trainable.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    for _ in range(40):
        loss = objective(batch, [generator(i) for i in range(4)])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses


def test_only_the_stage_part_trains(photos, tmp_path):
    pipe = build_pipeline()
    objective = build_objective("fgfm", pipe, run_config(photos, tmp_path))
    trainable = {n for n, p in pipe.vae.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("fgfm_fusions.") for n in trainable)
    assert not any(p.requires_grad for p in pipe.unet.parameters())
    assert set(objective.state_dict()) == {f"trainable.{k}" for k in pipe.vae.fgfm_fusions.state_dict()}


def test_killed_and_resumed_run_ends_with_the_same_weights(photos, tmp_path):
    straight = run_config(photos, tmp_path / "straight", ema=0.9)
    train_stage(straight, "unet")
    resumed = run_config(photos, tmp_path / "resumed", ema=0.9)
    train_stage(resumed, "unet", stop_after=3)
    assert not (resumed.pipeline_dir / "model_index.json").exists()
    assert (tmp_path / "resumed" / "unet" / "checkpoints" / "checkpoint-3" / "ema.safetensors").exists()
    train_stage(resumed, "unet")
    a = ReflectionSeparationPipeline.from_pretrained(straight.pipeline_dir).unet.state_dict()
    b = ReflectionSeparationPipeline.from_pretrained(resumed.pipeline_dir).unet.state_dict()
    initial = build_pipeline().unet.state_dict()
    assert any(not torch.equal(a[k], initial[k]) for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    log = [json.loads(line) for line in (tmp_path / "resumed" / "unet" / "log.jsonl").read_text().splitlines()]
    assert log[0]["event"] == "start" and log[0]["compile"] is False and log[0]["batched_synthesis"] is False
    assert {"loss", "lr", "it_per_s", "memory_gib"} <= set(log[1])


def test_all_stages_from_the_command_line_give_a_loadable_pipeline(photos, tmp_path):
    config_path = tmp_path / "config.json"
    config = run_config(photos, tmp_path / "run", steps=3)
    config_path.write_text(json.dumps({
        "output_dir": config.output_dir, "photos": config.photos, "resolution": 32, "num_samples": 64,
        "validation_images": 2, "validation_fraction": 0.4, "validation_inference_steps": 2,
        "control_channels": [8, 16], "stages": {name: {"steps": 3, "batch_size": 2, "validation_steps": 3, "channels_last": True} for name in STAGES},
    }))
    assert main(["--config", str(config_path), "--stage", *STAGES]) == 0
    pipe = ReflectionSeparationPipeline.from_pretrained(config.pipeline_dir)
    assert pipe.vae.config.scaling_factor != 1.0  # set from the trained latents
    pipe.set_progress_bar_config(disable=True)
    out = pipe(np.random.default_rng(0).random((40, 40, 3), dtype=np.float32), generator=generator(0), **FAST)
    assert out.transmission.shape == (1, 40, 40, 3)
    assert (tmp_path / "run" / "unet" / "validation" / "step-000003.png").exists()
    assert (tmp_path / "run" / "control" / "diffusion_pytorch_model.safetensors").exists()
    assert (tmp_path / "run" / "control" / "validation" / "step-000003.png").exists()

    assert main(["--config", str(config_path), "--stage", "composition", "--export-fp16", str(tmp_path / "fp16")]) == 0
    shipped = ReflectionSeparationPipeline.from_pretrained(tmp_path / "fp16", torch_dtype=torch.float16)
    assert shipped.unet.dtype == torch.float16 and not list((tmp_path / "fp16").rglob("*.py"))
    trained = ReflectionSeparationPipeline.from_pretrained(config.pipeline_dir)
    torch.testing.assert_close(shipped.unet.conv_out.weight, trained.unet.conv_out.weight.half())
    control = export_fp16(config, "control", tmp_path / "control_fp16")
    stored = load_file(control / "diffusion_pytorch_model.safetensors")
    assert {tensor.dtype for tensor in stored.values()} == {torch.float16}
    UNet2DModel.from_pretrained(control)


def test_control_stage_continues_from_a_saved_regressor(photos, tmp_path):
    saved = build_control_regressor((8, 16))
    for parameter in saved.parameters():
        torch.nn.init.normal_(parameter, std=0.5, generator=generator(parameter.numel()))
    saved.to(torch.float16).save_pretrained(tmp_path / "control_fp16")
    start = {name: p.half().float() for name, p in saved.state_dict().items()}
    config = run_config(photos, tmp_path / "run", steps=3)
    config.control_from = str(tmp_path / "control_fp16")
    regressor = build_objective("control", build_pipeline(), config).trainable
    assert all(p.dtype == torch.float32 for p in regressor.parameters())
    assert all(torch.equal(regressor.state_dict()[name], value) for name, value in start.items())

    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps({
        "output_dir": config.output_dir, "photos": config.photos, "resolution": 32, "num_samples": 64,
        "validation_images": 2, "validation_fraction": 0.4, "control_channels": [8, 16],
        "stages": {"control": {"steps": 3, "batch_size": 2, "learning_rate": 1e-3, "validation_steps": 3}},
    }))
    assert main(["--config", str(config_path), "--stage", "control", "--control-from", config.control_from]) == 0
    trained = load_file(Path(config.output_dir) / "control" / "diffusion_pytorch_model.safetensors")
    moved = max((trained[name] - value).abs().max().item() for name, value in start.items())
    assert 0 < moved < 0.01  # three Adam steps of 1e-3 from the saved weights, not a fresh start

    config.control_from = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="control_from"):
        build_objective("control", build_pipeline(), dataclasses.replace(config, output_dir=str(tmp_path / "other")))


def test_vae_from_starts_a_run_with_a_trained_vae_and_fresh_fgfm(photos, tmp_path):
    first = run_config(photos, tmp_path / "first", steps=3)
    train_stage(first, "vae")
    train_stage(first, "fgfm")
    config_path = tmp_path / "second.json"
    config_path.write_text(json.dumps({"output_dir": str(tmp_path / "second"), "photos": str(photos),
                                       "resolution": 32, "num_samples": 64, "validation_fraction": 0.4,
                                       "stages": {"unet": {"steps": 2, "batch_size": 2, "validation_steps": 2}}}))
    assert main(["--config", str(config_path), "--stage", "unet", "--vae-from", str(first.pipeline_dir)]) == 0
    trained = ReflectionSeparationPipeline.from_pretrained(first.pipeline_dir).vae
    seeded = ReflectionSeparationPipeline.from_pretrained(tmp_path / "second" / "pipeline").vae
    fresh = build_pipeline().vae.state_dict()
    assert seeded.config.scaling_factor == trained.config.scaling_factor != 1.0
    for name, value in seeded.state_dict().items():
        expected = fresh[name] if name.startswith("fgfm_fusions.") else trained.state_dict()[name]
        assert torch.equal(value, expected), name
    assert any(not torch.equal(trained.state_dict()[n], fresh[n]) for n in fresh if n.startswith("fgfm_fusions."))
    with pytest.raises(ValueError, match="already holds a pipeline"):
        main(["--config", str(config_path), "--stage", "unet", "--vae-from", str(first.pipeline_dir)])
    seed_only = json.loads(config_path.read_text()) | {"output_dir": str(tmp_path / "third")}
    config_path.write_text(json.dumps(seed_only))
    assert main(["--config", str(config_path), "--vae-from", str(first.pipeline_dir)]) == 0  # seeding alone
    assert not (tmp_path / "third" / "unet").exists()
    seeded_alone = ReflectionSeparationPipeline.from_pretrained(tmp_path / "third" / "pipeline").vae
    for name, value in seeded.state_dict().items():
        assert torch.equal(seeded_alone.state_dict()[name], value), name


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="Unknown training config keys"):
        TrainingConfig.from_dict({"output_dir": "x", "photos": "y", "learning_rate": 1})
    with pytest.raises(ValueError, match="Unknown stages"):
        TrainingConfig.from_dict({"output_dir": "x", "photos": "y", "stages": {"decoder": {}}})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TrainingConfig.from_file(tmp_path / "missing.json")


def test_ssim_matches_known_values():
    x = torch.rand(1, 3, 32, 32, generator=generator(0))
    assert abs(ssim(x, x).item() - 1.0) < 1e-6
    noisy = (x + 0.2 * torch.randn(x.shape, generator=generator(1))).clamp(0, 1)
    assert ssim(x, noisy).item() < 0.9


def test_pixel_loss_is_float32_under_bf16_autocast():
    prediction = torch.rand(2, 3, 32, 32, generator=generator(0)) * 2 - 1
    target = torch.rand(2, 3, 32, 32, generator=generator(1)) * 2 - 1
    reference = pixel_loss(prediction, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = pixel_loss(prediction, target)
    assert autocast.dtype == torch.float32
    assert abs(autocast.item() - reference.item()) < 1e-6


def test_baseline_overrides_turn_off_clsa_and_reset_the_unet(photos, tmp_path):
    trained = build_pipeline()
    torch.nn.init.normal_(trained.unet.conv_out.weight)
    trained.save_pretrained(tmp_path / "trained")
    config = TrainingConfig.from_dict({
        "output_dir": str(tmp_path / "baseline"), "photos": str(photos),
        "model": {"pipeline": str(tmp_path / "trained")}, "cross_layer_attention": False, "reset_unet": True,
    })
    pipe = load_pipeline(config)
    assert not uses_cross_layer_attention(pipe.unet) and pipe.config.cross_layer_attention is False
    assert not torch.equal(pipe.unet.conv_out.weight, trained.unet.conv_out.weight)
    assert torch.equal(pipe.vae.decoder.conv_out.weight, trained.vae.decoder.conv_out.weight)


def test_deepened_unet_computes_the_same_function_and_then_trains_its_new_layers():
    pipe = build_pipeline()
    unet = pipe.unet
    for parameter in unet.parameters():  # a "trained" UNet: no zero output projections anywhere
        torch.nn.init.normal_(parameter, std=0.05, generator=generator(len(parameter.shape)))
    grown = deepen_unet(unet, 3)
    assert grown.config.transformer_layers_per_block == 3 and uses_cross_layer_attention(grown)
    assert sum(p.numel() for p in grown.parameters()) > sum(p.numel() for p in unet.parameters())
    blocks = [m.transformer_blocks for m in grown.modules() if hasattr(m, "transformer_blocks")]
    assert blocks and all(len(b) == 3 for b in blocks)
    sample = torch.randn(2, 2 * unet.config.out_channels, 16, 16, generator=generator(0))
    prompts = torch.randn(2, 4, unet.config.cross_attention_dim, generator=generator(1))
    timestep = torch.tensor([999, 500])
    with torch.no_grad():
        expected, deepened = unet(sample, timestep, prompts).sample, grown(sample, timestep, prompts).sample
    assert expected.abs().mean() > 0.01
    torch.testing.assert_close(deepened, expected, rtol=0, atol=1e-6)
    grown(sample, timestep, prompts).sample.square().mean().backward()  # the new layers get gradients
    new_out = blocks[0][2].attn1.to_out[0].weight
    assert new_out.grad is not None and new_out.grad.abs().max() > 0
    with pytest.raises(ValueError, match="at least"):
        deepen_unet(grown, 2)


def test_training_config_deepens_the_starting_unet(photos, tmp_path):
    trained = build_pipeline()
    trained.save_pretrained(tmp_path / "trained")
    config = TrainingConfig.from_dict({
        "output_dir": str(tmp_path / "deeper"), "photos": str(photos),
        "model": {"pipeline": str(tmp_path / "trained")}, "unet_transformer_layers": 2,
    })
    pipe = load_pipeline(config)
    assert pipe.unet.config.transformer_layers_per_block == 2 and uses_cross_layer_attention(pipe.unet)
    pipe.save_pretrained(config.pipeline_dir)  # a resumed run loads its own, already deepened UNet
    assert load_pipeline(config).unet.config.transformer_layers_per_block == 2


def _ddp_config(photos, folder: Path, steps: int, batched: bool = False) -> Path:
    config_path = folder.with_suffix(".json")
    config_path.write_text(json.dumps({
        "output_dir": str(folder), "photos": str(photos), "resolution": 32, "num_samples": 64,
        "batched_synthesis": batched,
        "validation_images": 2, "validation_fraction": 0.4,
        "stages": {name: {"steps": steps, "batch_size": 2, "learning_rate": 1e-3, "validation_steps": 100,
                          "checkpointing_steps": 2, "log_steps": 1} for name in ("composition", "unet")},
    }))
    return config_path


def _train(config_path: Path, processes: int, *extra: str, stages: tuple[str, ...] = ("unet",)) -> None:
    import subprocess
    import sys

    # torchrun is what `accelerate launch --multi_gpu` starts; on CPU, accelerate then uses gloo
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)] if processes > 1 else [sys.executable]
    command = [*launch, "-m", "reflection_separation.training", "--stage", *stages, "--config", str(config_path), *extra]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def _unet(folder: Path) -> dict[str, torch.Tensor]:
    return ReflectionSeparationPipeline.from_pretrained(folder / "pipeline").unet.state_dict()


@pytest.mark.parametrize("batched", [False, True], ids=["loader", "batched_synthesis"])
def test_two_processes_match_one_process_with_the_same_global_batch(photos, tmp_path, batched):
    """DDP with two CPU processes (batch 1 each) follows the single-process run (batch 2) step for step,
    through two stages in one launch (they share the process group), with mixtures from DataLoader workers or
    made in batches on each process's device."""
    _train(_ddp_config(photos, tmp_path / "one", steps=4, batched=batched), 1, stages=("composition", "unet"))
    _train(_ddp_config(photos, tmp_path / "two", steps=4, batched=batched), 2, stages=("composition", "unet"))
    one, two = _unet(tmp_path / "one"), _unet(tmp_path / "two")
    initial = build_pipeline().unet.state_dict()
    moved = max((one[k] - initial[k]).abs().max().item() for k in one)
    # Adam's first steps are about lr * sign(grad): float summation order shows up at ~1e-5 of the weights
    assert max((one[k] - two[k]).abs().max().item() for k in one) < 0.05 * moved
    logs = [
        [json.loads(line) for line in (tmp_path / name / "unet" / "log.jsonl").read_text().splitlines()][1:]
        for name in ("one", "two")
    ]  # after each log's "start" record
    assert logs[1][0]["processes"] == 2
    for a, b in zip(*logs):
        assert abs(a["loss"] - b["loss"]) < 1e-5


@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)])
def test_checkpoint_on_n_processes_resumes_on_another_number(photos, tmp_path, first, then):
    """Stopped after step 2 on ``first`` processes and resumed on ``then``: the same weights as one unbroken run."""
    _train(_ddp_config(photos, tmp_path / "unbroken", steps=4), 1)
    resumed = _ddp_config(photos, tmp_path / "resumed", steps=4)
    _train(resumed, first, "--stop-after", "2")
    _train(resumed, then)
    unbroken, other = _unet(tmp_path / "unbroken"), _unet(tmp_path / "resumed")
    initial = build_pipeline().unet.state_dict()
    moved = max((unbroken[k] - initial[k]).abs().max().item() for k in unbroken)
    assert max((unbroken[k] - other[k]).abs().max().item() for k in unbroken) < 0.05 * moved
    log = [json.loads(line) for line in (tmp_path / "resumed" / "unet" / "log.jsonl").read_text().splitlines()]
    assert [r["processes"] for r in log if "loss" in r] == [first, first, then, then]


def test_global_batch_must_split_evenly():
    with pytest.raises(ValueError, match="divisible"):
        BatchSource(list(range(10)), batch_size=3, seed=0, process=0, num_processes=2)


def test_unet_stage_trains_with_a_zero_terminal_snr_schedule(photos, tmp_path):
    """v-prediction on a schedule whose last timestep is pure noise: the objective uses the same schedule and
    training plus validation (the full sampling loop with disjoint sampling and guidance) stay finite."""
    config = run_config(photos, tmp_path, steps=3)
    config.model = {"from_scratch": {"prediction_type": "v_prediction", "zero_terminal_snr": True}}
    pipe = load_pipeline(config)
    assert build_objective("unet", pipe, config).noise_scheduler.alphas_cumprod[-1] == 0
    train_stage(config, "unet")
    records = [json.loads(line) for line in (tmp_path / "unet" / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)
    validation = [r["val_psnr_t"] for r in records if "val_psnr_t" in r]
    assert validation and np.isfinite(validation).all()


def test_resized_photo_cache_keeps_the_validation_split(tmp_path):
    """`photo_long_side` copies keep each photo's relative path, so every photo stays in its split (the split hashes
    the path; the cache once renamed JPEGs to .png and moved photos between splits), and are no longer than asked."""
    source = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for index in range(40):
        folder = source / ("a" if index % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (rng.random((60, 90, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:02d}.jpg", quality=90)
    config = TrainingConfig(output_dir=str(tmp_path / "run"), photos=str(source), photo_long_side=45)
    cache = prepare_photos(config)

    def split(root):
        return {p.relative_to(root).as_posix(): is_validation_file(p.relative_to(root).as_posix(), 0.3)
                for p in list_images(root)}

    assert split(cache) == split(source)
    assert 0 < sum(split(source).values()) < 40  # both splits are populated, so the check can fail
    with Image.open(cache / "a" / "01.jpg") as copy:
        assert copy.size == (45, 30) and copy.format == "PNG"
    assert not list(cache.rglob("*.partial"))
    assert prepare_photos(config) == cache  # a second call reuses the copies
