"""The fast training path: batched synthesis, one VAE call, compile fallback, time-limited runs (CPU, tiny runs)."""

import json
from dataclasses import replace

import pytest
import torch
from torch import nn

from reflection_separation.components import build_pipeline
from reflection_separation.data import BatchedSynthesis, SyntheticReflectionDataset
from reflection_separation.training import (
    EXIT_TIME_LIMIT,
    FINISHED,
    BatchSource,
    TrainingConfig,
    _to_model_range,
    build_objective,
    largest_batch_size,
    main,
    train_stage,
    training_step,
)

from .conftest import write_photos
from .test_training import run_config

RECIPES = {"synthesis": {"recipes": {"additive": 1, "screen": 1, "glass_tint": 1, "defocus_disk": 1},
                         "noise_probability": 0.5, "jpeg_probability": 0.5}}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_photos(tmp_path_factory.mktemp("photos"))


def with_settings(config, **stage_settings):
    config.stages = {name: replace(stage, **stage_settings) for name, stage in config.stages.items()}
    return config


def unet_weights(config) -> dict[str, torch.Tensor]:
    from reflection_separation import ReflectionSeparationPipeline

    return ReflectionSeparationPipeline.from_pretrained(config.pipeline_dir).unet.state_dict()


def test_batched_source_gives_the_loader_path_batches(photos):
    dataset = SyntheticReflectionDataset(photos, resolution=32, num_samples=64, seed=0)
    loader = BatchSource(dataset, 6, seed=0, process=0, num_processes=1)
    batched = BatchSource(dataset, 6, seed=0, process=0, num_processes=1, maker=BatchedSynthesis(dataset))
    for step, micro in ((0, 0), (5, 1)):
        expected, got = loader.batch(step, micro), batched.batch(step, micro)
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-5)
    assert [b["mixture"].shape[0] for b in batched.batches(0, 3, 2, 0)] == [6] * 6


def test_one_vae_call_equals_separate_encodes(photos, tmp_path):
    pipe = build_pipeline()
    objective = build_objective("unet", pipe, run_config(photos, tmp_path))
    images = [torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    joint = objective.encode(*images)
    for one, image in zip(joint, images):
        separate, _ = pipe.encode_mixture(_to_model_range(image))
        torch.testing.assert_close(one, separate, rtol=0, atol=1e-5)


def test_training_on_batched_synthesis_equals_the_loader_path(photos, tmp_path):
    loader = run_config(photos, tmp_path / "loader", steps=4)
    batched = run_config(photos, tmp_path / "batched", steps=4)
    for config in (loader, batched):
        config.synthesis = RECIPES["synthesis"]
    batched.batched_synthesis = True
    train_stage(loader, "unet")
    train_stage(batched, "unet")
    a, b = unet_weights(loader), unet_weights(batched)
    moved = max((a[k] - build_pipeline().unet.state_dict()[k]).abs().max().item() for k in a)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 0.02 * moved
    start = json.loads((tmp_path / "batched" / "unet" / "log.jsonl").read_text().splitlines()[0])
    assert start["batched_synthesis"] is True and start["photos"] > 0


def test_compile_failure_falls_back_to_eager_and_trains_the_same(photos, tmp_path, monkeypatch):
    eager = run_config(photos, tmp_path / "eager", steps=3)
    train_stage(eager, "unet")

    def broken_compile(module: nn.Module, *args, **kwargs) -> None:
        def fail(*call_args, **call_kwargs):
            raise RuntimeError("inductor could not build a kernel")

        module._compiled_call_impl = fail

    monkeypatch.setattr(nn.Module, "compile", broken_compile)
    fallback = with_settings(run_config(photos, tmp_path / "fallback", steps=3), compile=True)
    train_stage(fallback, "unet")
    log = [json.loads(line) for line in (tmp_path / "fallback" / "unet" / "log.jsonl").read_text().splitlines()]
    assert log[0]["compile"] is True
    events = [record for record in log if record.get("event") == "compile_fallback"]
    assert len(events) == 1 and "inductor could not build a kernel" in events[0]["error"]
    a, b = unet_weights(eager), unet_weights(fallback)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def test_time_limit_checkpoints_and_the_same_command_continues(photos, tmp_path):
    straight = run_config(photos, tmp_path / "straight", steps=6)
    train_stage(straight, "unet")

    limited = run_config(photos, tmp_path / "limited", steps=6)
    config_path = tmp_path / "limited.json"
    config_path.write_text(json.dumps({
        "output_dir": limited.output_dir, "photos": limited.photos, "resolution": 32, "num_samples": 64,
        "validation_images": 2, "validation_fraction": 0.4, "validation_inference_steps": 2,
        "stages": {"unet": {"steps": 6, "batch_size": 2, "learning_rate": 1e-3, "checkpointing_steps": 100,
                            "validation_steps": 3, "log_steps": 2},
                   "composition": {"steps": 2, "batch_size": 2, "validation_steps": 2, "log_steps": 1}},
    }))
    command = ["--config", str(config_path), "--stage", "unet", "composition"]
    assert main([*command, "--time-limit-minutes", "0"]) == EXIT_TIME_LIMIT  # one process: stops after a step
    assert (tmp_path / "limited" / "unet" / "checkpoints" / "checkpoint-1").is_dir()
    assert not (tmp_path / "limited" / "unet" / FINISHED).exists()
    assert main(command) == 0
    assert (tmp_path / "limited" / "unet" / FINISHED).exists()
    assert (tmp_path / "limited" / "composition" / FINISHED).exists()
    log = [json.loads(line) for line in (tmp_path / "limited" / "unet" / "log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in log if record.get("event") == "time_limit"] == [1]
    # The composition stage does not touch the UNet: it is exactly the straight run's.
    a, b = unet_weights(straight), unet_weights(limited)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert main(command) == 0  # everything finished: both stages are skipped


def test_largest_batch_size_stops_at_the_budget_and_at_out_of_memory(tmp_path):
    """The search keeps the largest batch within the budget and stops at the first over it or out of memory."""
    config = TrainingConfig.from_dict({"output_dir": str(tmp_path), "photos": str(tmp_path)})
    tried = []

    def linear(config, stage, batch, device):  # 2 GiB of weights + 0.25 GiB per sample
        tried.append(batch)
        return 2 + 0.25 * batch

    best, peaks = largest_batch_size(config, "unet", 20.0, torch.device("cpu"), measure=linear)
    assert best == 64 and tried == [8, 16, 32, 64, 128]
    assert peaks == {8: 4.0, 16: 6.0, 32: 10.0, 64: 18.0, 128: 34.0}

    def out_of_memory_above_16(config, stage, batch, device):
        if batch > 16:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return 1.0

    best, peaks = largest_batch_size(config, "unet", 80.0, torch.device("cpu"), measure=out_of_memory_above_16)
    assert best == 16 and peaks == {8: 1.0, 16: 1.0, 32: None}
    best, _ = largest_batch_size(config, "unet", 1.0, torch.device("cpu"), measure=linear)
    assert best is None


def test_training_step_is_the_stage_step(photos, tmp_path):
    """The measured step is the stage's own: its backward fills the gradients of the trained UNet and of nothing
    else (the VAE it encodes with stays frozen)."""
    config = TrainingConfig.from_dict({"output_dir": str(tmp_path / "run"), "photos": str(photos), "resolution": 32})
    step, objective = training_step(config, "unet", 2, torch.device("cpu"))
    step()
    assert objective.trainable is objective.pipe.unet
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in objective.pipe.unet.parameters())
    assert all(p.grad is None for p in objective.pipe.vae.parameters())


@pytest.mark.parametrize("stage", ["vae", "fgfm", "onestep", "unet"])
def test_compiled_modules_give_the_eager_gradients(photos, tmp_path, stage):
    """What a stage compiles traces to the same computation: dynamo (its graph capture, without inductor's code
    generation, which needs a GPU to pay off) gives the eager gradients, also where FGFM's decoder hooks are
    registered anew with each call's features, and for a second batch after the first was traced."""
    config = TrainingConfig.from_dict({"output_dir": str(tmp_path / "run"), "photos": str(photos), "resolution": 32})
    step, objective = training_step(config, stage, 2, torch.device("cpu"))
    parameters = [p for p in objective.trainable.parameters() if p.requires_grad]

    def gradients() -> list[torch.Tensor]:
        for parameter in parameters:
            parameter.grad = None
        step()
        return [parameter.grad.clone() for parameter in parameters]

    with torch.no_grad():  # FGFM starts at zero; give it weights so that its hooks change the decoder's output
        for parameter in objective.pipe.vae.fgfm_fusions.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)))
    eager = gradients()
    modules = objective.compiled_modules()
    for module in modules:
        module.compile(backend="eager")
    try:
        compiled = gradients()
        with torch.no_grad():  # other weights: a compiled graph that kept the first call's values would differ
            for parameter in parameters:
                parameter.mul_(0.9)
        compiled_again = gradients()
        for module in modules:
            module._compiled_call_impl = None
        eager_again = gradients()
    finally:
        for module in modules:
            module._compiled_call_impl = None
        torch._dynamo.reset()
    assert any(g.abs().sum() > 0 for g in eager)
    for first, second in ((eager, compiled), (eager_again, compiled_again)):
        for a, b in zip(first, second):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
