"""``reflection-separation separate`` in several processes (as ``torchrun``/``accelerate launch`` start it): the inputs
are shared out by ``RANK``/``WORLD_SIZE``, each done once, and one summary is printed."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reflection_separation import cli
from reflection_separation.processes import Processes

from .test_cli import REPO_ROOT, model_dir, outputs, write_image  # noqa: F401 - model_dir is a fixture

pytestmark = pytest.mark.usefixtures("single_thread")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(model_dir: Path, inputs: Path, out_dir: Path, world_size: int) -> list[subprocess.CompletedProcess]:
    """Start ``world_size`` CPU processes of ``separate`` with the environment ``torchrun`` gives them; wait."""
    port = str(free_port())
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "reflection_separation.cli", "separate", str(inputs), "-o", str(out_dir),
               "--model", str(model_dir), "--device", "cpu", "--dtype", "float32"]  # as the in-process run (conftest)
    running = [
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": pythonpath, "RANK": str(rank), "LOCAL_RANK": str(rank),
                 "WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
                 "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
        )
        for rank in range(world_size)
    ]
    done = []
    for process in running:
        stdout, stderr = process.communicate(timeout=120)
        done.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    return done


def test_two_processes_write_what_one_writes_each_input_once_with_one_summary(model_dir, tmp_path):
    inputs = tmp_path / "in"
    for i in range(4):
        write_image(inputs / f"photo_{i}.png", 24 + 4 * i, 20, seed=i)
    (inputs / "broken.png").write_bytes(b"not an image")
    single, several = tmp_path / "single", tmp_path / "several"
    write_image(several / "photo_3_transmission.png", 8, 8)  # a run stopped after photo_3: resumed, not redone
    write_image(several / "photo_3_reflection.png", 8, 8)

    assert cli.main(["separate", str(inputs), "-o", str(single), "--model", str(model_dir), "--quiet",
                     "--device", "cpu"]) == cli.EXIT_FAILED
    first, second = launch(model_dir, inputs, several, world_size=2)

    assert first.returncode == second.returncode == cli.EXIT_FAILED, first.stderr + second.stderr
    assert first.stdout.splitlines() == [f"3 separated, 1 skipped (already done), 1 failed -> {several}"]
    assert second.stdout == ""
    errors = [line for line in (first.stderr + second.stderr).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken.png" in errors[0]
    assert outputs(several) == outputs(single)
    for name in outputs(single):
        if not name.startswith("photo_3_"):
            assert np.array_equal(np.asarray(Image.open(several / name)), np.asarray(Image.open(single / name)))


def test_shares_cover_every_input_once_and_processes_come_from_the_environment(monkeypatch):
    items = list(range(7))
    shares = [Processes(rank, 3).share(items) for rank in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(sum(shares, [])) == items
    assert Processes.from_env() == Processes(0, 1, 0)
    assert Processes(1, 2, 1).device("cpu") == "cpu" and Processes().device("auto") == "auto"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="0 <= RANK < WORLD_SIZE"):
        Processes.from_env()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ValueError, match="MASTER_ADDR and MASTER_PORT"):
        Processes.from_env()
