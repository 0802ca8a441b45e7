"""The Gradio web demo (examples/gradio_app.py): served on localhost with a tiny model, called through gradio_client.

Skipped when Gradio is not installed (`pip install -e ".[demo]"`). No network: localhost only, no share link,
no analytics.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from gradio_client.exceptions import AppError

# Gradio's queue calls pandas APIs that pandas 3 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:gradio.queueing")

APP_PATH = Path(__file__).resolve().parents[1] / "examples" / "gradio_app.py"


def load_app():
    spec = importlib.util.spec_from_file_location("reflection_separation_gradio_app", APP_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def app():
    return load_app()


@pytest.fixture(scope="module")
def server(app, tmp_path_factory):
    from reflection_separation.components import build_pipeline

    pipe = build_pipeline()
    pipe.register_to_config(default_denoising_steps=2, default_processing_resolution=32)
    pipe.set_progress_bar_config(disable=True)
    demo = app.build_demo(pipe, examples=app.make_example_images(height=48, width=64))
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, share=False, quiet=True)
    try:
        client = gradio_client.Client(
            f"http://127.0.0.1:{port}/",
            verbose=False,
            analytics_enabled=False,
            download_files=str(tmp_path_factory.mktemp("downloads")),
        )
        yield client
    finally:
        demo.close()


def predict(client, image_path, steps=2, resolution=32, guidance="fast", seed=0, ensemble_size=1):
    return client.predict(
        gradio_client.handle_file(str(image_path)),
        steps,  # num_inference_steps
        0.2,  # disjoint_strength k
        0.8,  # fgfm_strength w
        guidance,
        0.01,  # composition_guidance_scale
        resolution,  # processing_resolution
        seed,
        ensemble_size,
        api_name="/separate",
    )


def write_image(folder: Path, name: str, height: int, width: int) -> Path:
    rng = np.random.default_rng(0)
    path = folder / name
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def test_separates_an_uploaded_photo(server, tmp_path):
    image_path = write_image(tmp_path, "photo.png", height=40, width=56)
    transmission, reflection, comparison, info = predict(server, image_path)
    for output in (transmission, reflection):
        with Image.open(output) as image:
            assert image.size == (56, 40)
            assert image.mode == "RGB"
    if isinstance(comparison, (list, tuple)):  # ImageSlider: (before, after)
        assert len(comparison) == 2
        for output in comparison:
            with Image.open(output) as image:
                assert image.size == (56, 40)
    assert "2 steps" in info and "seed 0" in info and "ensemble" not in info
    *layers, _, info = predict(server, image_path, ensemble_size=3)
    for output in layers:
        with Image.open(output) as image:
            assert image.size == (56, 40)
    assert info.endswith("seed 0, median of an ensemble of 3.")


def test_bad_inputs_are_reported_and_the_server_keeps_working(server, tmp_path):
    tiny = write_image(tmp_path, "tiny.png", height=4, width=4)
    with pytest.raises(AppError, match="at least 16 pixels"):
        predict(server, tiny)
    good = write_image(tmp_path, "good.png", height=32, width=24)
    with pytest.raises(AppError, match="processing_resolution"):
        predict(server, good, resolution=2)  # below the model's size multiple
    transmission, reflection, _, _ = predict(server, good, guidance="off", seed=3)
    for output in (transmission, reflection):
        with Image.open(output) as image:
            assert image.size == (24, 32)


def test_main_without_a_usable_model_is_a_clear_error(app, tmp_path, capsys):
    import reflection_separation

    missing = tmp_path / "no_such_model"
    assert app.main(["--model", str(missing)]) == 2
    assert "does not exist" in capsys.readouterr().err
    if not hasattr(reflection_separation, "DEFAULT_MODEL"):
        assert app.main([]) == 2
        assert "--model" in capsys.readouterr().err


def test_example_images_are_small_rgb_photos(app):
    examples = app.make_example_images()
    assert 2 <= len(examples) <= 4
    for caption, image in examples:
        assert caption and image.mode == "RGB" and image.size == (480, 320)


def test_side_by_side_comparison_without_image_slider(app, monkeypatch):
    from reflection_separation.components import build_pipeline

    pipe = build_pipeline()
    pipe.register_to_config(default_denoising_steps=1, default_processing_resolution=32)
    pipe.set_progress_bar_config(disable=True)
    monkeypatch.setattr(app, "HAS_IMAGE_SLIDER", False)
    assert isinstance(app.build_demo(pipe, examples=[]), gr.Blocks)
    photo = Image.new("RGB", (30, 20), (120, 60, 200))
    transmission, reflection, comparison, _ = app.make_separate_fn(pipe)(photo, 1, 0.2, 0.8, "off", 0.01, 32, 0)
    assert transmission.size == reflection.size == (30, 20)
    assert comparison.size == (2 * 30 + 8, 20)
    with pytest.raises(gr.Error, match="whole number"):
        app.make_separate_fn(pipe)(photo, 1.5, 0.2, 0.8, "off", 0.01, 32, 0)


@pytest.mark.parametrize("one_step", [False, True])
def test_guidance_starts_as_the_pipeline_would_run_it(app, one_step):
    """One step runs no guidance unless asked (the measured default); the radio shows that, and the one-step box
    switches it between "off" and the model's mode."""
    from reflection_separation.components import build_pipeline

    pipe = build_pipeline()
    pipe.register_to_config(default_one_step=one_step, default_composition_guidance="fast")
    config = app.build_demo(pipe, examples=[]).config
    components = {c["id"]: c for c in config["components"]}
    radio = next(c for c in components.values() if c["props"].get("label") == "Latent-composition guidance")
    box = next(c for c in components.values() if c["props"].get("label") == "One step")
    assert radio["props"]["value"] == ("off" if one_step else "fast")
    assert box["props"]["value"] is one_step
    switches = [d for d in config["dependencies"]
                if [box["id"], "change"] in [list(t) for t in d["targets"]] and d["outputs"] == [radio["id"]]]
    assert len(switches) == 1
