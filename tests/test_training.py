"""Training stack: each stage overfits a fixed batch, resume equals an uninterrupted run, output loads."""

import json
import os

import numpy as np
import pytest
import torch

from reflection_separation import ReflectionSeparationPipeline
from reflection_separation.attention import uses_cross_layer_attention
from reflection_separation.components import build_pipeline
from reflection_separation.data import SyntheticReflectionDataset
from reflection_separation.training import (
    STAGES,
    TrainingConfig,
    build_objective,
    load_pipeline,
    main,
    pixel_loss,
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


@pytest.mark.parametrize("stage", STAGES)
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
    assert {"loss", "lr", "it_per_s", "memory_gib"} <= set(log[0])


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


def test_two_processes_with_half_batches_match_one_process(photos, tmp_path):
    """DDP with two CPU processes (batch 1 each) follows the single-process run (batch 2) step for step."""
    import subprocess
    import sys

    configs = {}
    for name, batch in (("one", 2), ("two", 1)):
        config = run_config(photos, tmp_path / name, steps=4)
        config_path = tmp_path / f"{name}.json"
        config_path.write_text(json.dumps({
            "output_dir": config.output_dir, "photos": config.photos, "resolution": 32, "num_samples": 64,
            "validation_images": 2, "validation_fraction": 0.4,
            "stages": {"unet": {"steps": 4, "batch_size": batch, "learning_rate": 1e-3, "validation_steps": 100,
                                "log_steps": 1}},
        }))
        configs[name] = (config, config_path)
    # torchrun is what `accelerate launch --multi_gpu` starts; on CPU, accelerate then uses gloo
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    train = ["-m", "reflection_separation.training", "--stage", "unet", "--config"]
    subprocess.run([sys.executable, *train, str(configs["one"][1])], check=True, env=env, capture_output=True)
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    subprocess.run([*launch, *train, str(configs["two"][1])], check=True, env=env, capture_output=True)
    one = ReflectionSeparationPipeline.from_pretrained(configs["one"][0].pipeline_dir).unet.state_dict()
    two = ReflectionSeparationPipeline.from_pretrained(configs["two"][0].pipeline_dir).unet.state_dict()
    initial = build_pipeline().unet.state_dict()
    moved = max((one[k] - initial[k]).abs().max().item() for k in one)
    # Adam's first steps are about lr * sign(grad): float summation order shows up at ~1e-5 of the weights
    assert max((one[k] - two[k]).abs().max().item() for k in one) < 0.05 * moved
    logs = [
        [json.loads(line) for line in (tmp_path / name / "unet" / "log.jsonl").read_text().splitlines()]
        for name in ("one", "two")
    ]
    assert logs[1][0]["processes"] == 2
    for a, b in zip(*logs):
        assert abs(a["loss"] - b["loss"]) < 1e-5
