"""The ``reflection-separation`` command line, run in-process on a tiny model saved to disk."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import reflection_separation
from reflection_separation import ReflectionSeparationPipeline, cli
from reflection_separation.cli import cpu_has_native_bf16  # the real one: conftest patches the module's for the suite
from reflection_separation.components import ModelSizeConfig, build_pipeline

REPO_ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    pipe = build_pipeline(ModelSizeConfig(), seed=0)
    pipe.register_to_config(default_denoising_steps=2, default_processing_resolution=32)
    folder = tmp_path_factory.mktemp("model") / "tiny"
    pipe.save_pretrained(folder)
    return folder


def write_image(path: Path, width: int, height: int, seed: int = 0, **save_kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, **save_kwargs)
    return path


def run(model_dir: Path, *args: str) -> int:
    return cli.main(["separate", *map(str, args), "--model", str(model_dir), "--quiet"])


def outputs(out_dir: Path) -> list[str]:
    return sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file())


def layer_sizes(out_dir: Path, name: str) -> tuple[tuple[int, int], tuple[int, int]]:
    sizes = []
    for layer in ("transmission", "reflection"):
        with Image.open(out_dir / f"{name}_{layer}.png") as image:
            assert image.mode == "RGB"
            sizes.append(image.size)
    return tuple(sizes)


@pytest.fixture
def pipeline_calls(monkeypatch) -> list[int]:
    """Number of images in each pipeline call made by the CLI."""
    calls: list[int] = []
    original = ReflectionSeparationPipeline.__call__

    def counting(self, image, *args, **kwargs):
        calls.append(len(image) if isinstance(image, list) else 1)
        return original(self, image, *args, **kwargs)

    monkeypatch.setattr(ReflectionSeparationPipeline, "__call__", counting)
    return calls


# ----------------------------------------------------------------------------------------- outputs


def test_files_give_both_layers_at_input_size(model_dir, tmp_path, capsys):
    a = write_image(tmp_path / "in" / "a.jpg", 48, 40)
    b = write_image(tmp_path / "elsewhere" / "b.png", 36, 52, seed=1)
    out = tmp_path / "out"

    assert cli.main(["separate", str(a), str(b), "-o", str(out), "--model", str(model_dir)]) == 0

    assert outputs(out) == ["a_reflection.png", "a_transmission.png", "b_reflection.png", "b_transmission.png"]
    assert layer_sizes(out, "a") == ((48, 40), (48, 40))
    assert layer_sizes(out, "b") == ((36, 52), (36, 52))
    assert "2 separated, 0 skipped (already done), 0 failed" in capsys.readouterr().out


def test_folder_is_recursive_keeps_subpaths_and_disambiguates(model_dir, tmp_path):
    src = tmp_path / "shots"
    write_image(src / "x.jpg", 40, 40)
    write_image(src / "x.png", 40, 40, seed=1)  # same stem, same folder
    write_image(src / "day1" / "x.jpg", 32, 48, seed=2)  # same stem, sub-folder: no clash
    write_image(src / "deep" / "er" / "y.webp", 44, 36, seed=3)
    write_image(src / ".hidden.jpg", 40, 40)
    (src / "notes.txt").write_text("not an image")
    out = tmp_path / "out"

    assert run(model_dir, src, "-o", out) == 0

    assert outputs(out) == [
        "day1/x_reflection.png",
        "day1/x_transmission.png",
        "deep/er/y_reflection.png",
        "deep/er/y_transmission.png",
        "x_2_reflection.png",  # x.png sorts after x.jpg
        "x_2_transmission.png",
        "x_reflection.png",
        "x_transmission.png",
    ]
    assert layer_sizes(out, "day1/x") == ((32, 48), (32, 48))
    assert layer_sizes(out, "deep/er/y") == ((44, 36), (44, 36))


def test_same_stem_from_two_places_is_deterministic(model_dir, tmp_path):
    first = write_image(tmp_path / "a" / "photo.jpg", 40, 40)
    second = write_image(tmp_path / "b" / "photo.jpg", 40, 48, seed=1)
    for out, order in ((tmp_path / "out1", (first, second)), (tmp_path / "out2", (second, first))):
        assert run(model_dir, *order, "-o", out) == 0
    # Command-line order decides: the first keeps the plain name.
    assert layer_sizes(tmp_path / "out1", "photo")[0] == (40, 40)
    assert layer_sizes(tmp_path / "out1", "photo_2")[0] == (40, 48)
    assert layer_sizes(tmp_path / "out2", "photo")[0] == (40, 48)


def test_glob_is_expanded_by_the_cli(model_dir, tmp_path):
    src = tmp_path / "src"
    write_image(src / "one.png", 40, 40)
    write_image(src / "two.png", 48, 32, seed=1)
    write_image(src / "three.jpg", 40, 40, seed=2)
    write_image(src / "sub" / "four.png", 40, 40, seed=3)
    out = tmp_path / "out"

    assert run(model_dir, str(src / "*.png"), "-o", out) == 0
    assert outputs(out) == ["one_reflection.png", "one_transmission.png", "two_reflection.png", "two_transmission.png"]
    assert layer_sizes(out, "two") == ((48, 32), (48, 32))

    out_recursive = tmp_path / "out_recursive"
    assert run(model_dir, str(src / "**" / "*.png"), "-o", out_recursive) == 0
    assert sorted({name.rsplit("_", 1)[0] for name in outputs(out_recursive)}) == ["four", "one", "two"]


def test_exif_orientation_is_applied(model_dir, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    path = write_image(tmp_path / "in" / "rotated.jpg", 48, 32, exif=exif)
    out = tmp_path / "out"
    assert run(model_dir, path, "-o", out) == 0
    assert layer_sizes(out, "rotated") == ((32, 48), (32, 48))


# ------------------------------------------------------------------------------------------- resume


def test_resume_skips_done_images_and_overwrite_redoes_them(model_dir, tmp_path, pipeline_calls, capsys):
    src = tmp_path / "src"
    for i in range(3):
        write_image(src / f"img{i}.png", 40, 40, seed=i)
    out = tmp_path / "out"
    assert run(model_dir, src, "-o", out) == 0
    assert pipeline_calls == [1, 1, 1]
    done = {name: (out / name).stat().st_mtime_ns for name in outputs(out)}
    assert len(done) == 6

    # Second run: nothing to do, no pipeline call, files untouched.
    pipeline_calls.clear()
    capsys.readouterr()
    assert cli.main(["separate", str(src), "-o", str(out), "--model", str(model_dir)]) == 0
    assert pipeline_calls == []
    assert {name: (out / name).stat().st_mtime_ns for name in outputs(out)} == done
    assert "0 separated, 3 skipped (already done), 0 failed" in capsys.readouterr().out

    # A half-finished image (one layer missing) is redone, the others are not.
    (out / "img1_reflection.png").unlink()
    assert run(model_dir, src, "-o", out) == 0
    assert pipeline_calls == [1]
    assert (out / "img1_reflection.png").is_file()
    assert (out / "img0_transmission.png").stat().st_mtime_ns == done["img0_transmission.png"]

    # --overwrite redoes everything.
    pipeline_calls.clear()
    assert run(model_dir, src, "-o", out, "--overwrite") == 0
    assert pipeline_calls == [1, 1, 1]
    assert all((out / name).stat().st_mtime_ns != mtime for name, mtime in done.items() if "img1_r" not in name)


# ------------------------------------------------------------------------------------------ ensembling


def test_ensemble_size_runs_each_batch_with_every_images_ensemble_and_writes_the_median(model_dir, tmp_path,
                                                                                        monkeypatch):
    src = tmp_path / "src"
    for i in range(2):
        write_image(src / f"img{i}.png", 40, 32, seed=i)
    batch_sizes: list[int] = []
    original = ReflectionSeparationPipeline.__call__

    def recording(self, image, *args, **kwargs):
        batch_sizes.append(kwargs["batch_size"])
        return original(self, image, *args, **kwargs)

    monkeypatch.setattr(ReflectionSeparationPipeline, "__call__", recording)
    assert run(model_dir, src, "-o", tmp_path / "out", "--ensemble-size", "3", "--batch-size", "2") == 0
    assert batch_sizes == [6]  # two images x three draws, one batched run

    pipe = ReflectionSeparationPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    expected = original(pipe, cli.load_image(src / "img1.png"), generator=torch.Generator().manual_seed(0),
                        ensemble_size=3)
    for layer in ("transmission", "reflection"):
        with Image.open(tmp_path / "out" / f"img1_{layer}.png") as written:
            assert np.array_equal(np.asarray(written), np.asarray(getattr(expected, layer)[0]))
    assert cli.main(["separate", str(src), "-o", str(tmp_path / "bad"), "--ensemble-size", "0"]) == cli.EXIT_USAGE


# ------------------------------------------------------------------------------------------ failures


@pytest.mark.parametrize("batch_size", [1, 3])
def test_broken_inputs_are_reported_and_others_finish(model_dir, tmp_path, capsys, batch_size):
    src = tmp_path / "src"
    write_image(src / "a_good.png", 40, 40)
    (src / "b_broken.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    write_image(src / "c_tiny.png", 8, 8, seed=1)  # below the pipeline's minimum side: ValueError
    write_image(src / "d_good.png", 40, 40, seed=2)
    full = write_image(tmp_path / "e_truncated.png", 40, 40, seed=3)
    (src / "e_truncated.png").write_bytes(full.read_bytes()[:200])
    out = tmp_path / "out"

    code = run(model_dir, src, "-o", out, "--batch-size", batch_size)

    assert code == 1
    assert outputs(out) == [
        "a_good_reflection.png",
        "a_good_transmission.png",
        "d_good_reflection.png",
        "d_good_transmission.png",
    ]
    err = capsys.readouterr().err
    broken_line = next(line for line in err.splitlines() if "b_broken.jpg" in line)
    assert "cannot read image" in broken_line and "UnidentifiedImageError" in broken_line
    tiny_line = next(line for line in err.splitlines() if "c_tiny.png" in line)
    assert "at least 16 pixels" in tiny_line
    assert any("e_truncated.png" in line for line in err.splitlines())
    assert "a_good" not in err and "d_good" not in err


def test_failed_batch_is_retried_one_by_one(model_dir, tmp_path, pipeline_calls):
    src = tmp_path / "src"
    write_image(src / "a.png", 40, 40)
    write_image(src / "b.png", 8, 8, seed=1)
    write_image(src / "c.png", 40, 40, seed=2)
    out = tmp_path / "out"
    assert run(model_dir, src, "-o", out, "--batch-size", 3) == 1
    assert pipeline_calls == [3, 1, 1, 1]
    assert {name.rsplit("_", 1)[0] for name in outputs(out)} == {"a", "c"}


def test_missing_input_among_others_fails_but_others_finish(model_dir, tmp_path, capsys):
    good = write_image(tmp_path / "good.png", 40, 40)
    out = tmp_path / "out"
    assert run(model_dir, good, tmp_path / "nope.jpg", "-o", out) == 1
    assert "nope.jpg: no such file or folder" in capsys.readouterr().err
    assert outputs(out) == ["good_reflection.png", "good_transmission.png"]


def test_no_inputs_is_a_usage_error(model_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run(model_dir, tmp_path / "empty", str(tmp_path / "*.jpg"), "-o", tmp_path / "out") == 2
    assert "no input images found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_output_inside_input_folder_is_refused(model_dir, tmp_path, capsys):
    src = tmp_path / "src"
    write_image(src / "a.png", 40, 40)
    for out in (src / "separated", src):
        assert run(model_dir, src, "-o", out) == 2
        assert "inside the input folder" in capsys.readouterr().err
    assert outputs(src) == ["a.png"]

    # Allowed on request; the outputs written there are not taken as inputs on the next run.
    assert run(model_dir, src, "-o", src / "separated", "--allow-output-in-input") == 0
    assert run(model_dir, src, "-o", src / "separated", "--allow-output-in-input") == 0
    assert outputs(src) == ["a.png", "separated/a_reflection.png", "separated/a_transmission.png"]


def test_missing_default_model_is_a_clear_usage_error(tmp_path, monkeypatch, capsys):
    image = write_image(tmp_path / "a.png", 40, 40)
    argv = ["separate", str(image), "-o", str(tmp_path / "out"), "--quiet"]

    monkeypatch.setattr(reflection_separation, "DEFAULT_MODEL", str(tmp_path / "not-shipped"))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "not-shipped" in err and "does not exist" in err and "--model" in err
    assert not (tmp_path / "out").exists()


def test_default_model_is_used_when_present(model_dir, tmp_path, monkeypatch):
    image = write_image(tmp_path / "a.png", 40, 40)
    monkeypatch.setattr(reflection_separation, "DEFAULT_MODEL", str(model_dir))
    assert cli.main(["separate", str(image), "-o", str(tmp_path / "out"), "--quiet"]) == 0
    assert outputs(tmp_path / "out") == ["a_reflection.png", "a_transmission.png"]


@pytest.mark.parametrize("model", ["missing-folder/", "./missing", "/definitely/not/here"])
def test_missing_model_folder_is_a_usage_error(tmp_path, capsys, model):
    image = write_image(tmp_path / "a.png", 40, 40)
    assert cli.main(["separate", str(image), "-o", str(tmp_path / "out"), "--model", model, "-q"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_unloadable_model_folder_is_a_usage_error(tmp_path, capsys):
    image = write_image(tmp_path / "a.png", 40, 40)
    (tmp_path / "not-a-model").mkdir()
    assert (
        cli.main(["separate", str(image), "-o", str(tmp_path / "out"), "--model", str(tmp_path / "not-a-model"), "-q"])
        == 2
    )
    assert "could not load the model" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU dtype rule")
def test_float16_on_cpu_is_refused(model_dir, tmp_path, capsys):
    image = write_image(tmp_path / "a.png", 40, 40)
    assert run(model_dir, image, "-o", tmp_path / "out", "--dtype", "float16") == 2
    assert "float16 is not supported on CPU" in capsys.readouterr().err


def test_cpu_has_native_bf16_reads_the_cpu_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    for flags, native in [("fpu avx2 avx512f avx512_bf16 avx512_vnni", True), ("fpu amx_bf16 amx_tile", True),
                          ("fpu avx2 avx512f avx512bw avx512_vnni", False), ("", False)]:
        cpuinfo.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
        assert cpu_has_native_bf16(cpuinfo) is native, flags
    assert cpu_has_native_bf16(tmp_path / "missing") is False


def test_dtype_auto_is_bfloat16_only_on_a_cpu_with_native_bf16(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(cli, "cpu_has_native_bf16", lambda *args: True)
    assert cli.resolve_dtype("auto", cpu) == torch.bfloat16
    assert cli.resolve_dtype("auto", gpu) == torch.float32
    assert cli.resolve_dtype("float32", cpu) == torch.float32
    monkeypatch.setattr(cli, "cpu_has_native_bf16", lambda *args: False)
    assert cli.resolve_dtype("auto", cpu) == torch.float32
    assert cli.resolve_dtype("bfloat16", cpu) == torch.bfloat16


def test_default_dtype_on_a_native_bf16_cpu_equals_dtype_bfloat16(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "cpu_has_native_bf16", lambda *args: True)
    loaded = []
    load = cli.load_pipeline
    monkeypatch.setattr(cli, "load_pipeline", lambda model, device, dtype, quiet: loaded.append(dtype) or load(
        model, device, dtype, quiet))
    image = write_image(tmp_path / "a.png", 40, 40)
    for out, options in [("auto", ()), ("bf16", ("--dtype", "bfloat16")), ("fp32", ("--dtype", "float32"))]:
        assert run(model_dir, image, "-o", tmp_path / out, "--device", "cpu", *options) == 0
    assert loaded == [torch.bfloat16, torch.bfloat16, torch.float32]
    for layer in ("transmission", "reflection"):
        auto = pixels(tmp_path / "auto" / f"a_{layer}.png")
        assert np.array_equal(auto, pixels(tmp_path / "bf16" / f"a_{layer}.png"))
        assert np.abs(auto - pixels(tmp_path / "fp32" / f"a_{layer}.png")).max() > 0


@pytest.mark.parametrize(
    "option", [["--steps", "0"], ["--batch-size", "-1"], ["--disjoint-strength", "2"], ["--composition-guidance", "maybe"], ["--composition-guidance-scale", "2"]]
)
def test_bad_options_are_usage_errors(model_dir, tmp_path, option):
    image = write_image(tmp_path / "a.png", 40, 40)
    assert run(model_dir, image, "-o", tmp_path / "out", *option) == 2


def test_resolution_below_model_multiple_is_a_usage_error(model_dir, tmp_path, capsys):
    image = write_image(tmp_path / "a.png", 40, 40)
    assert run(model_dir, image, "-o", tmp_path / "out", "--resolution", "3") == 2
    assert "--resolution must be 0" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- atomic writes


def test_no_temporary_files_are_left_behind(model_dir, tmp_path):
    src = tmp_path / "src"
    write_image(src / "a.png", 40, 40)
    write_image(src / "sub" / "b.png", 40, 48, seed=1)
    (src / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    assert run(model_dir, src, "-o", out, "--batch-size", 2) == 1
    assert run(model_dir, src, "-o", out, "--overwrite") == 1
    files = outputs(out)
    assert files == ["a_reflection.png", "a_transmission.png", "sub/b_reflection.png", "sub/b_transmission.png"]


def test_atomic_save_leaves_old_file_and_no_temp_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "x_transmission.png"
    old = Image.new("RGB", (8, 8), (10, 20, 30))
    cli.atomic_save(old, target)
    old_bytes = target.read_bytes()
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode

    def failing_save(self, fp, format=None, **params):
        fp.write(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        cli.atomic_save(Image.new("RGB", (8, 8)), target)
    assert target.read_bytes() == old_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x_transmission.png"]


def test_write_failure_is_reported_and_counted(model_dir, tmp_path, monkeypatch, capsys):
    image = write_image(tmp_path / "a.png", 40, 40)
    out = tmp_path / "out"

    def failing_save(img, path):
        raise OSError("disk full")

    monkeypatch.setattr(cli, "atomic_save", failing_save)
    assert run(model_dir, image, "-o", out) == 1
    assert "could not write output" in capsys.readouterr().err


# -------------------------------------------------------------------------------------- determinism


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image, dtype=np.int16)


def test_batch_size_does_not_change_results(model_dir, tmp_path, pipeline_calls):
    src = tmp_path / "src"
    for i, (w, h) in enumerate([(40, 40), (40, 40), (48, 32), (40, 40), (40, 40)]):
        write_image(src / f"img{i}.png", w, h, seed=i)
    single, batched = tmp_path / "single", tmp_path / "batched"
    assert run(model_dir, src, "-o", single, "--batch-size", 1, "--seed", 7) == 0
    pipeline_calls.clear()
    assert run(model_dir, src, "-o", batched, "--batch-size", 2, "--seed", 7) == 0
    assert pipeline_calls == [2, 2, 1]

    assert outputs(single) == outputs(batched)
    for name in outputs(single):
        a, b = pixels(single / name), pixels(batched / name)
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 1, name  # float batching noise may flip a rounding, nothing more
        assert np.mean(a != b) < 0.01, name

    # The seed matters, and the same seed reproduces.
    other = tmp_path / "other_seed"
    assert run(model_dir, src / "img0.png", "-o", other, "--seed", 8) == 0
    assert np.abs(pixels(other / "img0_transmission.png") - pixels(single / "img0_transmission.png")).max() > 1
    again = tmp_path / "again"
    assert run(model_dir, src / "img0.png", "-o", again, "--seed", 7) == 0
    assert np.array_equal(pixels(again / "img0_transmission.png"), pixels(single / "img0_transmission.png"))


# --------------------------------------------------------------------------------------- interface


def test_help_via_python_dash_m():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    top = subprocess.run(
        [sys.executable, "-m", "reflection_separation.cli", "--help"],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert top.returncode == 0, top.stderr
    assert "usage: reflection-separation" in top.stdout and "separate" in top.stdout


def test_separate_help_has_examples(capsys):
    assert cli.main(["separate", "--help"]) == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "reflection-separation separate photo.jpg -o out/" in text
    for option in (
        "--model",
        "--steps",
        "--resolution",
        "--seed",
        "--device",
        "--dtype",
        "--composition-guidance",
        "--composition-guidance-scale",
        "--disjoint-strength",
        "--fgfm-strength",
        "--batch-size",
        "--overwrite",
        "--quiet",
        "--allow-output-in-input",
    ):
        assert option in text


def test_no_command_prints_help_and_fails(capsys):
    assert cli.main([]) == 2
    assert "separate" in capsys.readouterr().err


def test_evaluate_is_mounted_only_when_available(monkeypatch, capsys):
    hooks = cli._evaluation_hooks()
    commands = cli.build_parser()._subparsers._group_actions[0].choices
    assert ("evaluate" in commands) == (hooks is not None)
    if hooks is not None:
        assert cli.main(["evaluate", "--help"]) == 0
        capsys.readouterr()

    # Without an importable evaluation module the CLI still works, without `evaluate`.
    monkeypatch.delattr(reflection_separation, "evaluation", raising=False)
    monkeypatch.setitem(sys.modules, "reflection_separation.evaluation", None)
    assert cli._evaluation_hooks() is None
    commands = cli.build_parser()._subparsers._group_actions[0].choices
    assert set(commands) == {"separate"}
    assert cli.main(["evaluate"]) == 2


def test_tile_size_separates_large_images_in_tiles(model_dir, tmp_path, monkeypatch):
    from reflection_separation import ReflectionSeparationPipeline

    seen = []
    original = ReflectionSeparationPipeline.__call__

    def spy(self, *args, **kwargs):
        seen.append((kwargs.get("tile_size"), kwargs.get("cuda_graphs")))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ReflectionSeparationPipeline, "__call__", spy)
    image = write_image(tmp_path / "big.png", 90, 70)
    out = tmp_path / "out"
    assert run(model_dir, image, "-o", out, "--resolution", "0", "--tile-size", "32", "--no-cuda-graphs") == 0
    assert seen == [(32, False)]
    assert layer_sizes(out, "big") == ((90, 70), (90, 70))


def test_compile_flag_compiles_the_unet_and_keeps_the_result(model_dir, tmp_path, monkeypatch):
    from reflection_separation import ReflectionSeparationPipeline

    compiled = []
    original = ReflectionSeparationPipeline.__call__

    def spy(self, *args, **kwargs):
        compiled.append(self.unet._compiled_call_impl is not None)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ReflectionSeparationPipeline, "__call__", spy)
    image = write_image(tmp_path / "photo.png", 40, 32)
    assert run(model_dir, image, "-o", tmp_path / "eager") == 0
    assert run(model_dir, image, "-o", tmp_path / "compiled", "--compile") == 0
    assert compiled == [False, True]
    for layer in ("transmission", "reflection"):
        eager = np.asarray(Image.open(tmp_path / "eager" / f"photo_{layer}.png"), dtype=np.int16)
        fast = np.asarray(Image.open(tmp_path / "compiled" / f"photo_{layer}.png"), dtype=np.int16)
        assert np.abs(eager - fast).max() <= 1  # the same 8-bit image up to rounding
