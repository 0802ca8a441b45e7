"""Save the pipeline as a folder (or Hub repo) that loads with plain diffusers: weights plus the code of its classes.

diffusers (0.42, ``pipeline_loading_utils.py``, ``utils/dynamic_modules_utils.py``) loads classes it does not
ship from ``.py`` files saved beside the weights, with ``trust_remote_code=True``:

- ``"_class_name": ["pipeline_reflection_separation", "ReflectionSeparationPipeline"]`` in ``model_index.json``
  loads the pipeline class from ``pipeline_reflection_separation.py`` at the folder's root; the modules that
  file imports relatively (``from .attention import ...``) are copied with it into diffusers' module cache,
  from a local folder and from a Hub repo alike (a Hub repo fetches each of them by name);
- a component entry ``"vae": ["fgfm_vae", "FGFMAutoencoderKL"]`` loads ``vae/fgfm_vae.py``.

The package's modules are the only source of that code. :func:`save_pipeline` (behind
``ReflectionSeparationPipeline.save_pretrained`` and so ``push_to_hub``) copies them verbatim::

    model_index.json
    pipeline_reflection_separation.py      <- pipeline.py
    attention.py composition.py hub.py     <- the modules pipeline.py imports relatively
    image_processing.py scheduling.py vae.py
    vae/fgfm_vae.py                         <- vae.py          (+ config.json, weights)
    composition_net/latent_composition.py   <- composition.py  (+ config.json, weights)
    unet/ text_encoder/ tokenizer/ scheduler/

Each copied module imports only torch, diffusers, transformers, numpy, PIL, tqdm and the standard library,
never ``reflection_separation``. Component files get names distinct from the root modules and from each
other: diffusers caches every module of a local folder under one flat package.

Where this package is installed, ``ReflectionSeparationPipeline.from_pretrained`` maps those entries back to
the installed classes (:func:`use_installed_pipeline_class`, :func:`use_installed_component_classes`): no
saved code runs and ``trust_remote_code`` is not needed, for a folder and for a Hub repo.

``python -m reflection_separation.hub --write-community PATH`` writes the single-file community pipeline
(:func:`community_source`): the same modules with their relative imports removed, concatenated.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import sys
import typing
from pathlib import Path
from typing import Any, Callable

from diffusers.pipelines.pipeline_loading_utils import LOADABLE_CLASSES
from diffusers.utils.dynamic_modules_utils import get_relative_imports

PIPELINE_FILE = "pipeline_reflection_separation"
COMPONENT_FILES = {"vae": "fgfm_vae", "composition_net": "latent_composition"}
_PUSH_KWARGS = ("commit_message", "private", "create_pr", "token", "repo_id")


def relative_imports(path: str | os.PathLike) -> list[str]:
    """Sibling modules a file imports relatively, as diffusers' loader finds them (sorted).

    Only ``from .module import name`` is supported: diffusers' loader does not see ``from . import module``
    and cannot copy packages, so those raise here rather than break a load elsewhere.
    """
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level and (node.level != 1 or not node.module or "." in node.module):
            raise ValueError(
                f"{path}, line {node.lineno}: only `from .module import name` relative imports can be saved with the "
                "pipeline (diffusers copies `<module>.py` files beside the pipeline file)."
            )
    return sorted(get_relative_imports(path))


def source_file(obj: Any) -> Path:
    """The ``.py`` file of the module that defines ``obj``'s class (or ``obj`` itself when it is a class)."""
    cls = obj if isinstance(obj, type) else type(obj)
    module = sys.modules.get(cls.__module__)
    path = getattr(module, "__file__", None)
    if not path or not path.endswith(".py") or not os.path.isfile(path):
        raise ValueError(f"`{cls.__name__}` is defined in `{cls.__module__}`, which has no .py source file to save.")
    return Path(path)


def is_custom_library(library: Any) -> bool:
    """Whether a ``model_index.json`` library is neither a library diffusers loads from nor a diffusers pipeline."""
    from diffusers import pipelines

    return isinstance(library, str) and library not in LOADABLE_CLASSES and not hasattr(pipelines, library)


def _component_entries(index: dict[str, Any]):
    for name, entry in index.items():
        if not name.startswith("_") and isinstance(entry, (list, tuple)) and len(entry) == 2:
            yield name, entry[0], entry[1]


def code_files(pipe, index: dict[str, Any], pipeline_code: bool = True) -> dict[str, Path]:
    """Files to write beside the weights: path in the folder -> source file.

    ``index`` is the ``model_index.json`` that ``DiffusionPipeline.save_pretrained`` wrote; its custom
    components (libraries diffusers does not know) get their class's module in their subfolder.
    """
    files: dict[str, Path] = {}
    if pipeline_code:
        pipeline_source = source_file(pipe)
        files[f"{PIPELINE_FILE}.py"] = pipeline_source
        siblings = relative_imports(pipeline_source)
        for name in siblings:
            sibling = pipeline_source.parent / f"{name}.py"
            nested = sorted(set(relative_imports(sibling)) - set(siblings))
            if nested:
                raise ValueError(
                    f"{sibling} imports {nested} relatively, which {pipeline_source.name} does not import itself; "
                    "diffusers copies only the direct relative imports of the pipeline file."
                )
            files[f"{name}.py"] = sibling
    taken = {Path(path).stem for path in files}
    for component, library, _ in _component_entries(index):
        if not is_custom_library(library):
            continue
        module = getattr(pipe, component)
        source = source_file(getattr(module, "_orig_mod", module))  # torch.compile wraps the model
        if relative_imports(source):
            raise ValueError(f"{source} must be self-contained (no relative imports) to be saved with `{component}`.")
        stem = COMPONENT_FILES.get(component, f"{component}_{source.stem}")
        if stem in taken:
            raise ValueError(f"Code file name `{stem}` of `{component}` is already taken; diffusers' module cache is flat.")
        taken.add(stem)
        files[f"{component}/{stem}.py"] = source
    return files


def write_code(pipe, save_directory: str | os.PathLike, pipeline_code: bool = True) -> dict[str, Path]:
    """Copy the code files into a folder saved by ``DiffusionPipeline.save_pretrained`` and point
    ``model_index.json`` at them. Returns the files written (path in the folder -> source)."""
    folder = Path(save_directory)
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text(encoding="utf-8"))
    files = code_files(pipe, index, pipeline_code)
    for target, source in files.items():
        destination = folder / target
        destination.parent.mkdir(parents=True, exist_ok=True)
        if not (destination.exists() and os.path.samefile(source, destination)):
            shutil.copyfile(source, destination)
        if "/" in target:
            component = target.split("/")[0]
            index[component] = [Path(target).stem, index[component][1]]
    if pipeline_code:
        index["_class_name"] = [PIPELINE_FILE, type(pipe).__name__]
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return files


def save_pipeline(
    pipe,
    save_directory: str | os.PathLike,
    base_save_pretrained: Callable[..., Any],
    push_to_hub: bool = False,
    pipeline_code: bool = True,
    remote_code: bool = True,
    **kwargs,
) -> None:
    """``base_save_pretrained`` (``DiffusionPipeline.save_pretrained``), then :func:`write_code`, then the upload.

    ``remote_code=False`` writes no code: the folder then loads only where this package is installed (our
    shipped default model, which lives inside the package).
    ``pipeline_code=False`` leaves the pipeline's own code out (``_class_name`` stays a plain name) and keeps
    only the components' code: the layout for a pipeline class supplied by the loader, e.g. the community
    file (diffusers prefers a folder's own pipeline file over ``custom_pipeline=``). Push arguments
    (``repo_id``, ``token``, ``private``, ``create_pr``, ``commit_message``) are those of diffusers.
    """
    push = {key: kwargs.pop(key) for key in _PUSH_KWARGS if key in kwargs}
    if push_to_hub:
        from diffusers.utils import hub_utils

        token = push.get("token")
        repo_id = push.get("repo_id", str(save_directory).split(os.path.sep)[-1])
        repo_id = hub_utils.create_repo(repo_id, exist_ok=True, private=push.get("private"), token=token).repo_id
    base_save_pretrained(save_directory, **kwargs)
    if remote_code:
        write_code(pipe, save_directory, pipeline_code=pipeline_code)
    if push_to_hub:
        card = hub_utils.load_or_create_model_card(repo_id, token=token, is_pipeline=True)
        hub_utils.populate_model_card(card).save(os.path.join(save_directory, "README.md"))
        pipe._upload_folder(
            save_directory,
            repo_id,
            token=token,
            commit_message=push.get("commit_message"),
            create_pr=push.get("create_pr", False),
        )


# ---------------------------------------------------------------------- loading with the package installed


def use_installed_pipeline_class(config: dict[str, Any]) -> dict[str, Any]:
    """``"_class_name": [file, Class]`` -> ``Class``: the pipeline class ``from_pretrained`` was called on is used.

    Applied to ``model_index.json`` as ``ReflectionSeparationPipeline`` reads it (also while downloading a
    Hub repo), so diffusers neither fetches nor runs the saved pipeline file.
    """
    name = config.get("_class_name")
    if isinstance(name, (list, tuple)) and len(name) == 2:
        config["_class_name"] = name[1]
    return config


def use_installed_component_classes(pipeline_class: type, config: dict[str, Any]) -> dict[str, Any]:
    """Component entries ``[file, Class]`` -> ``[module, Class]`` of the class ``pipeline_class.__init__`` expects.

    diffusers imports a saved ``<component>/<file>.py`` whenever it exists; with the module path of the
    installed class (already imported with ``pipeline_class``) it uses that class instead.
    """
    try:
        expected = typing.get_type_hints(pipeline_class.__init__)
    except (NameError, TypeError, AttributeError):  # unresolvable annotations: keep the saved entries
        return config
    for component, library, class_name in list(_component_entries(config)):
        cls = expected.get(component)
        if isinstance(cls, type) and cls.__name__ == class_name and is_custom_library(library) and "." not in library:
            config[component] = [cls.__module__, class_name]
    return config


# -- package tools, left out of the community file (community_source cuts hub.py here) --


PACKAGE_DIR = Path(__file__).resolve().parent
_CUT_MARKER = "# -- package tools, left out of the community file"

COMMUNITY_HEADER = '''"""Reflection separation: a photo taken through glass -> transmission and reflection, as one diffusers file.

"Reflection Separation from a Single Image via Joint Latent Diffusion" (CVPR 2026) as a single-file
community pipeline: the modules of the `reflection_separation` package concatenated, generated by
`python -m reflection_separation.hub --write-community examples/community/pipeline_reflection_separation.py`.
Do not edit it; edit the package and run that command.

Use it with a model folder that holds the weights and the components' code (``vae/fgfm_vae.py``,
``composition_net/latent_composition.py``), e.g. one written by
``ReflectionSeparationPipeline.save_pretrained(folder, pipeline_code=False)``::

    import torch
    from diffusers import DiffusionPipeline
    from PIL import Image

    pipe = DiffusionPipeline.from_pretrained(
        folder, custom_pipeline="pipeline_reflection_separation.py", trust_remote_code=True
    )
    out = pipe(Image.open("photo.jpg"), generator=torch.Generator().manual_seed(0))
    out.transmission[0].save("transmission.png")
    out.reflection[0].save("reflection.png")

A folder saved with its pipeline code (the default of ``save_pretrained``) needs no ``custom_pipeline``:
``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)``; diffusers loads that folder's own
pipeline file even when ``custom_pipeline`` is given.
"""

from __future__ import annotations
'''


def _import_bindings(node: ast.Import | ast.ImportFrom) -> dict[str, tuple[str, str | None]]:
    """Names an import statement binds -> (module, attribute); ``import a.b`` binds ``a`` to ``(a.b, None)``."""
    if isinstance(node, ast.Import):
        return {alias.asname or alias.name.split(".")[0]: (alias.name, None) for alias in node.names}
    return {alias.asname or alias.name: (node.module, alias.name) for alias in node.names}


def _is_stdlib(module: str) -> bool:
    return module.split(".")[0] in sys.stdlib_module_names


def _render_imports(bindings: dict[str, tuple[str, str | None]]) -> str:
    """isort-style block: standard library, then the rest; plain imports, then ``from`` imports, sorted."""
    plain: set[str] = set()
    from_imports: dict[str, set[str]] = {}
    for name, (module, attribute) in bindings.items():
        if attribute is None:
            short = module.split(".")[0]
            plain.add(f"import {module}" + ("" if name == short else f" as {name}"))
        else:
            from_imports.setdefault(module, set()).add(attribute if name == attribute else f"{attribute} as {name}")
    sections = []
    for stdlib in (True, False):
        lines = sorted(
            (s for s in plain if _is_stdlib(s.split()[1]) == stdlib), key=lambda s: s.split()[1].lower()
        )
        lines += [
            f"from {module} import {', '.join(sorted(names))}"
            for module, names in sorted(from_imports.items(), key=lambda item: item[0].lower())
            if _is_stdlib(module) == stdlib
        ]
        if lines:
            sections.append("\n".join(lines))
    return "\n\n".join(sections)


def _drop(replace: dict[int, list[str]], node: ast.stmt, replacement: list[str] | None = None) -> None:
    """Mark the lines of ``node`` to be replaced by ``replacement`` (default: removed)."""
    replace[node.lineno - 1] = replacement or []
    for index in range(node.lineno, node.end_lineno):
        replace[index] = []


def _definitions(tree: ast.Module) -> list[str]:
    names = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names += [target.id for target in targets if isinstance(target, ast.Name)]
    return names


def community_source(package_dir: str | os.PathLike = PACKAGE_DIR) -> str:
    """The single-file community pipeline, from ``pipeline.py`` and the modules it imports relatively.

    Top-level imports are hoisted (deduplicated), relative imports removed (also those inside functions),
    module docstrings kept as comments; ``hub.py`` is cut before its package tools. Raises if two modules
    define or import the same name differently.
    """
    package_dir = Path(package_dir)
    modules = relative_imports(package_dir / "pipeline.py") + ["pipeline"]
    bindings: dict[str, tuple[str, str | None]] = {}
    defined: dict[str, str] = {}
    sections: list[str] = []
    for module in modules:
        source = (package_dir / f"{module}.py").read_text(encoding="utf-8")
        if module == "hub":
            source = source.split(_CUT_MARKER)[0].rstrip() + "\n"
        tree = ast.parse(source)
        lines = source.splitlines()
        replace: dict[int, list[str]] = {}  # line index -> replacement lines, for the dropped line ranges

        body = tree.body
        if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0].value, "value", None), str):
            doc = ast.get_docstring(tree, clean=True).splitlines()
            _drop(replace, body[0], [f"# {line}".rstrip() for line in doc])
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)) and not getattr(node, "level", 0):
                _drop(replace, node)
                if isinstance(node, ast.ImportFrom) and node.module == "__future__":
                    continue
                for name, target in _import_bindings(node).items():
                    if name in defined or bindings.setdefault(name, target) != target:
                        raise ValueError(f"{module}.py imports `{name}`, which another module defines or imports differently.")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                _drop(replace, node)
        for name in _definitions(tree):
            if name in defined or name in bindings:
                raise ValueError(f"`{name}` is defined in {module}.py and in {defined.get(name, 'an import')}.")
            defined[name] = f"{module}.py"
        kept: list[str] = []
        for index, line in enumerate(lines):
            kept += replace.get(index, [line])
        text = "\n".join(kept).strip("\n")
        while "\n\n\n\n" in text:
            text = text.replace("\n\n\n\n", "\n\n\n")
        sections.append(f"# {'-' * 20} reflection_separation/{module}.py {'-' * 20}\n\n{text}\n")
    return COMMUNITY_HEADER + "\n" + _render_imports(bindings) + "\n\n\n" + "\n\n".join(sections)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m reflection_separation.hub", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write-community", metavar="PATH", type=Path, help="write the single-file community pipeline")
    parser.add_argument("--check-community", metavar="PATH", type=Path, help="exit 1 if PATH differs from the generator")
    args = parser.parse_args(argv)
    if args.write_community:
        args.write_community.parent.mkdir(parents=True, exist_ok=True)
        args.write_community.write_text(community_source(), encoding="utf-8")
        print(f"wrote {args.write_community}")
    if args.check_community:
        current = args.check_community.read_text(encoding="utf-8") if args.check_community.exists() else ""
        if current != community_source():
            print(f"{args.check_community} is out of date: run python -m reflection_separation.hub --write-community")
            return 1
    if not (args.write_community or args.check_community):
        parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
