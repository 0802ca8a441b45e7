"""Saved folders and Hub repos load with plain diffusers where this package is not installed.

The loads that must work without the package run in fresh ``python -I`` subprocesses whose import system
refuses ``reflection_separation`` (asserted there), with ``HF_HUB_OFFLINE=1`` and a private
``HF_MODULES_CACHE``. A Hub repo is emulated by serving an exported folder through diffusers' own download
path (``FakeHub`` below patches ``model_info``/``hf_hub_download``/``snapshot_download``), no network.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from diffusers.pipelines import pipeline_loading_utils
from diffusers.utils import hub_utils

from reflection_separation import FGFMAutoencoderKL, LatentCompositionNet, ReflectionSeparationPipeline, hub
from reflection_separation.components import build_pipeline

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO_ROOT / "reflection_separation"
COMMUNITY_FILE = REPO_ROOT / "examples" / "community" / "pipeline_reflection_separation.py"
ROOT_MODULES = ("attention", "composition", "cuda_graphs", "hub", "image_processing", "scheduling", "tiling", "vae")
REPO_ID = "owner/tiny-reflection-separation"

FAKE_HUB = '''
"""A Hub repo served from a local folder, for diffusers' download path without network."""

import shutil
from pathlib import Path
from types import SimpleNamespace

SHA = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, repo_id, remote, cache):
        self.repo_id, self.remote = repo_id, Path(remote)
        self.snapshot = Path(cache) / "snapshots" / SHA
        self.files = sorted(p.relative_to(self.remote).as_posix() for p in self.remote.rglob("*") if p.is_file())
        self.fetched = []

    def _fetch(self, repo_id, rel):
        from huggingface_hub.errors import EntryNotFoundError

        assert repo_id == self.repo_id, repo_id
        if rel not in self.files:
            raise EntryNotFoundError(f"{rel} is not in {repo_id}")
        target = self.snapshot / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.remote / rel, target)
        self.fetched.append(rel)
        return str(target)

    def model_info(self, repo_id, revision=None, token=None, **kwargs):
        assert repo_id == self.repo_id, repo_id
        return SimpleNamespace(sha=SHA, siblings=[SimpleNamespace(rfilename=f) for f in self.files])

    def hf_hub_download(self, repo_id, filename, subfolder=None, **kwargs):
        return self._fetch(repo_id, f"{subfolder}/{filename}" if subfolder else filename)

    def snapshot_download(self, repo_id, allow_patterns=None, ignore_patterns=None, **kwargs):
        from huggingface_hub.utils import filter_repo_objects

        for rel in filter_repo_objects(self.files, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns):
            self._fetch(repo_id, rel)
        return str(self.snapshot)

    def install(self, set_attribute):
        from diffusers.pipelines import pipeline_utils
        from diffusers.utils import dynamic_modules_utils

        for module in (pipeline_utils, dynamic_modules_utils):
            set_attribute(module, "model_info", self.model_info)
            set_attribute(module, "hf_hub_download", self.hf_hub_download)
        set_attribute(pipeline_utils, "snapshot_download", self.snapshot_download)
        set_attribute(pipeline_utils, "_resolve_revision", lambda name, revision=None, **kwargs: revision)
'''

LOAD_WITHOUT_PACKAGE = '''
import json, sys


class RefuseOurPackage:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "reflection_separation":
            raise ImportError(f"{name} is hidden from this process")


sys.meta_path.insert(0, RefuseOurPackage())
try:
    import reflection_separation  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("reflection_separation is importable: the isolation is broken")

import numpy as np
import torch
from diffusers import DiffusionPipeline

args = json.loads(sys.argv[1])
kwargs = {"trust_remote_code": True, **args.get("kwargs", {})}
fake_hub = None
if args.get("fake_hub"):
    sys.path.insert(0, args["fake_hub"]["dir"])
    from fake_hub import FakeHub

    fake_hub = FakeHub(args["source"], args["fake_hub"]["remote"], args["fake_hub"]["cache"])
    fake_hub.install(setattr)
pipe = DiffusionPipeline.from_pretrained(args["source"], **kwargs)
pipe.set_progress_bar_config(disable=True)
out = pipe(np.load(args["input"]), generator=torch.Generator().manual_seed(0), output_type="np")
np.save(args["out"] + "/transmission.npy", out.transmission)
np.save(args["out"] + "/reflection.npy", out.reflection)
if args.get("resave"):
    pipe.save_pretrained(args["resave"])
info = {
    "pipeline_module": type(pipe).__module__,
    "pipeline_file": sys.modules[type(pipe).__module__].__file__,
    "component_modules": {name: type(getattr(pipe, name)).__module__ for name in ("vae", "composition_net")},
    "our_modules": sorted(m for m in sys.modules if m.split(".")[0] == "reflection_separation"),
    "fetched": fake_hub.fetched if fake_hub else None,
}
with open(args["out"] + "/info.json", "w") as f:
    json.dump(info, f)
'''


def _image() -> np.ndarray:
    return np.random.default_rng(7).random((40, 48, 3), dtype=np.float32)


def _run(pipe) -> tuple[np.ndarray, np.ndarray]:
    out = pipe(_image(), generator=torch.Generator().manual_seed(0), output_type="np")
    return out.transmission, out.reflection


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny pipeline, its outputs in this process, and the folder ``save_pretrained`` wrote."""
    pipe = build_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    pipe.register_to_config(default_denoising_steps=2, default_processing_resolution=32)
    folder = tmp_path_factory.mktemp("export") / "model"
    pipe.save_pretrained(folder)
    return pipe, folder, _run(pipe)


def _load_without_package(tmp_path: Path, source: str | Path, **options) -> tuple[np.ndarray, np.ndarray, dict]:
    """Load ``source`` in a fresh process that cannot import our package; return its outputs and facts."""
    work = tmp_path / "isolated"
    out = work / "out"
    out.mkdir(parents=True)
    np.save(work / "input.npy", _image())
    script = work / "load.py"
    script.write_text(textwrap.dedent(LOAD_WITHOUT_PACKAGE))
    args = {"source": str(source), "input": str(work / "input.npy"), "out": str(out), **options}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HF_"))}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(work / "modules"), HF_HOME=str(work / "hf_home"))
    result = subprocess.run(
        [sys.executable, "-I", str(script), json.dumps(args)], cwd=work, env=env, capture_output=True, text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    info = json.loads((out / "info.json").read_text())
    assert info["our_modules"] == []
    return np.load(out / "transmission.npy"), np.load(out / "reflection.npy"), info


def _assert_same_outputs(actual: tuple[np.ndarray, np.ndarray], expected: tuple[np.ndarray, np.ndarray]) -> None:
    # identical weights; CPU kernels may take another path for differently aligned buffers (~1e-6)
    for a, b in zip(actual, expected, strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-5)


def _fake_hub(tmp_path: Path, remote: Path):
    (tmp_path / "fake_hub.py").write_text(FAKE_HUB)
    sys.path.insert(0, str(tmp_path))
    try:
        sys.modules.pop("fake_hub", None)
        from fake_hub import FakeHub
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("fake_hub", None)
    return FakeHub(REPO_ID, remote, tmp_path / "hub_cache")


# ---------------------------------------------------------------------- the saved folder


def test_saved_folder_holds_verbatim_code_and_no_pickles(exported):
    _, folder, _ = exported
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_reflection_separation", "ReflectionSeparationPipeline"]
    assert index["vae"] == ["fgfm_vae", "FGFMAutoencoderKL"]
    assert index["composition_net"] == ["latent_composition", "LatentCompositionNet"]
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    expected = {
        "pipeline_reflection_separation.py": "pipeline.py",
        "vae/fgfm_vae.py": "vae.py",
        "composition_net/latent_composition.py": "composition.py",
        **{f"{name}.py": f"{name}.py" for name in ROOT_MODULES},
    }
    code = {p.relative_to(folder).as_posix() for p in folder.rglob("*.py")}
    assert code == set(expected)
    for saved, source in expected.items():
        assert (folder / saved).read_bytes() == (PACKAGE_DIR / source).read_bytes(), saved
    assert not [p for p in folder.rglob("*") if p.suffix in (".bin", ".pkl", ".pickle", ".pt", ".pth", ".ckpt")]
    assert list(folder.rglob("*.safetensors"))


def test_saved_modules_import_nothing_but_their_siblings():
    allowed = set(sys.stdlib_module_names) | {"torch", "diffusers", "transformers", "numpy", "PIL", "tqdm"}
    import ast

    for name in ("pipeline", *ROOT_MODULES):
        tree = ast.parse((PACKAGE_DIR / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert {a.name.split(".")[0] for a in node.names} <= allowed, (name, ast.dump(node))
            elif isinstance(node, ast.ImportFrom) and not node.level:
                assert node.module.split(".")[0] in allowed, (name, node.module)
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 1 and node.module in ROOT_MODULES and name == "pipeline", (name, node.module)


# ---------------------------------------------------------------------- loading without our package


def test_folder_loads_with_plain_diffusers_without_the_package(exported, tmp_path):
    _, folder, reference = exported
    resaved = tmp_path / "resaved"
    *outputs, info = _load_without_package(tmp_path, folder, resave=str(resaved))
    _assert_same_outputs(outputs, reference)
    assert info["pipeline_module"] == "diffusers_modules.local.pipeline_reflection_separation"
    assert info["component_modules"] == {
        "vae": "diffusers_modules.local.fgfm_vae",
        "composition_net": "diffusers_modules.local.latent_composition",
    }
    # a pipeline loaded from saved code saves the same code again
    resaved_index = json.loads((resaved / "model_index.json").read_text())
    resaved_index.pop("_name_or_path")  # diffusers records where a loaded pipeline came from
    assert resaved_index == json.loads((folder / "model_index.json").read_text())
    for path in folder.rglob("*.py"):
        assert (resaved / path.relative_to(folder)).read_bytes() == path.read_bytes(), path


def test_hub_repo_loads_with_plain_diffusers_without_the_package(exported, tmp_path):
    _, folder, reference = exported
    (tmp_path / "fake_hub.py").write_text(FAKE_HUB)
    fake = {"dir": str(tmp_path), "remote": str(folder), "cache": str(tmp_path / "hub_cache")}
    *outputs, info = _load_without_package(tmp_path, REPO_ID, fake_hub=fake)
    _assert_same_outputs(outputs, reference)
    assert info["pipeline_module"] == "diffusers_modules.local.pipeline_reflection_separation"
    # diffusers fetched the pipeline file and each module it imports relatively, by name, then the snapshot
    assert {"pipeline_reflection_separation.py", *(f"{m}.py" for m in ROOT_MODULES)} <= set(info["fetched"])
    assert {"vae/fgfm_vae.py", "composition_net/latent_composition.py"} <= set(info["fetched"])


def test_community_file_loads_without_the_package(exported, tmp_path):
    pipe, _, reference = exported
    folder = tmp_path / "model"
    pipe.save_pretrained(folder, pipeline_code=False)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "ReflectionSeparationPipeline"
    assert index["vae"] == ["fgfm_vae", "FGFMAutoencoderKL"]
    assert not list(folder.glob("*.py"))
    resaved = tmp_path / "resaved"
    *outputs, info = _load_without_package(
        tmp_path, folder, kwargs={"custom_pipeline": str(COMMUNITY_FILE)}, resave=str(resaved)
    )
    _assert_same_outputs(outputs, reference)
    assert Path(info["pipeline_file"]).read_bytes() == COMMUNITY_FILE.read_bytes()
    # saved from the single file, the folder carries that file as its pipeline code (no siblings needed)
    assert json.loads((resaved / "model_index.json").read_text())["_class_name"] == [
        "pipeline_reflection_separation", "ReflectionSeparationPipeline",
    ]
    assert (resaved / "pipeline_reflection_separation.py").read_bytes() == COMMUNITY_FILE.read_bytes()
    assert {p.name for p in resaved.glob("*.py")} == {"pipeline_reflection_separation.py"}
    assert (resaved / "vae" / "fgfm_vae.py").read_bytes() == (PACKAGE_DIR / "vae.py").read_bytes()


# ---------------------------------------------------------------------- loading with our package


def _no_remote_code(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("saved code was loaded although the package is installed")

    monkeypatch.setattr(pipeline_loading_utils, "get_class_from_dynamic_module", refuse)


def _assert_installed_classes(loaded):
    assert type(loaded) is ReflectionSeparationPipeline
    assert type(loaded.vae) is FGFMAutoencoderKL
    assert type(loaded.composition_net) is LatentCompositionNet


def test_installed_package_loads_the_export_with_its_own_classes(exported, monkeypatch):
    pipe, folder, reference = exported
    _no_remote_code(monkeypatch)
    loaded = ReflectionSeparationPipeline.from_pretrained(folder)
    loaded.set_progress_bar_config(disable=True)
    _assert_installed_classes(loaded)
    for name in ("unet", "vae", "text_encoder", "composition_net"):
        original, restored = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert original.keys() == restored.keys() and all(torch.equal(original[k], restored[k]) for k in original)
    _assert_same_outputs(_run(loaded), reference)


def test_installed_package_loads_a_hub_repo_without_remote_code(exported, tmp_path, monkeypatch):
    _, folder, reference = exported
    fake = _fake_hub(tmp_path, folder)
    fake.install(monkeypatch.setattr)
    _no_remote_code(monkeypatch)
    loaded = ReflectionSeparationPipeline.from_pretrained(REPO_ID, cache_dir=str(tmp_path / "cache"))
    loaded.set_progress_bar_config(disable=True)
    _assert_installed_classes(loaded)
    assert "pipeline_reflection_separation.py" not in fake.fetched
    _assert_same_outputs(_run(loaded), reference)


def test_folders_saved_before_the_export_still_load(exported, tmp_path):
    pipe, _, reference = exported
    DiffusionPipeline.save_pretrained(pipe, tmp_path)  # diffusers' own save: package module paths, no code
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["vae"] == ["reflection_separation.vae", "FGFMAutoencoderKL"]
    loaded = ReflectionSeparationPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    _assert_installed_classes(loaded)
    _assert_same_outputs(_run(loaded), reference)


# ---------------------------------------------------------------------- pushing


@pytest.fixture
def fake_upload(monkeypatch, tmp_path):
    """Record what would be uploaded (a copy of the folder at upload time) instead of calling the Hub."""
    uploads = []

    def create_repo(repo_id, **kwargs):
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(repo_id, folder_path, **kwargs):
        copy = tmp_path / f"upload{len(uploads)}"
        shutil.copytree(folder_path, copy)
        uploads.append((repo_id, copy))

    monkeypatch.setattr(hub_utils, "create_repo", create_repo)
    monkeypatch.setattr(hub_utils, "upload_folder", upload_folder)
    monkeypatch.setattr(hub_utils, "load_or_create_model_card", lambda *args, **kwargs: hub_utils.ModelCard("---\n---\n"))
    return uploads


def _assert_uploaded_export(folder: Path, reference_folder: Path) -> None:
    assert json.loads((folder / "model_index.json").read_text()) == json.loads(
        (reference_folder / "model_index.json").read_text()
    )
    for path in reference_folder.rglob("*.py"):
        assert (folder / path.relative_to(reference_folder)).read_bytes() == path.read_bytes(), path
    assert (folder / "README.md").exists()


def test_push_to_hub_uploads_the_export(exported, fake_upload, tmp_path):
    pipe, folder, _ = exported
    pipe.push_to_hub(REPO_ID)
    pipe.save_pretrained(tmp_path / "local", push_to_hub=True, repo_id=REPO_ID + "-2")
    assert [repo for repo, _ in fake_upload] == [REPO_ID, REPO_ID + "-2"]
    for _, uploaded in fake_upload:
        _assert_uploaded_export(uploaded, folder)
    _assert_uploaded_export(tmp_path / "local", folder)


# ---------------------------------------------------------------------- the community file


def test_community_file_is_what_the_generator_writes():
    assert COMMUNITY_FILE.read_text() == hub.community_source(), (
        "examples/community/pipeline_reflection_separation.py is stale: run "
        "`python -m reflection_separation.hub --write-community examples/community/pipeline_reflection_separation.py`"
    )


def test_community_file_is_a_single_module():
    import ast

    tree = ast.parse(COMMUNITY_FILE.read_text())
    allowed = set(sys.stdlib_module_names) | {"torch", "diffusers", "transformers", "numpy", "PIL", "tqdm"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module.split(".")[0] in allowed, ast.dump(node)
        elif isinstance(node, ast.Import):
            assert {a.name.split(".")[0] for a in node.names} <= allowed, ast.dump(node)
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    assert {"ReflectionSeparationPipeline", "FGFMAutoencoderKL", "LatentCompositionNet"} <= set(classes)


def test_cli_checks_and_writes_the_community_file(tmp_path):
    target = tmp_path / "community.py"
    assert hub.main(["--check-community", str(target)]) == 1
    assert hub.main(["--write-community", str(target)]) == 0
    assert hub.main(["--check-community", str(target)]) == 0
    assert target.read_text() == COMMUNITY_FILE.read_text()


def test_relative_imports_diffusers_cannot_copy_are_refused(tmp_path):
    module = tmp_path / "module.py"
    module.write_text("from . import attention\n")
    with pytest.raises(ValueError, match="from .module import name"):
        hub.relative_imports(module)
    module.write_text("from .attention import x\nfrom .scheduling import y\n")
    assert hub.relative_imports(module) == ["attention", "scheduling"]
