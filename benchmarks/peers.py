"""Peer reflection-removal networks for the GPU benchmark: RDNet and DSIT, random weights, test-time forward.

Their code is not part of this project: clone it next to the benchmark and pass the folder (the benchmark's
``--peers DIR``), which then holds ``RDNet/`` and ``DSIT/``::

    git clone https://github.com/lime-j/RDNet .peers/RDNet && git -C .peers/RDNet checkout 6f6ade1f
    git clone https://github.com/mingcv/DSIT .peers/DSIT && git -C .peers/DSIT checkout 2dd2da40

Needs timm (which imports torchvision). Nothing is downloaded: both repos load pretrained backbones
unconditionally at construction, which is patched out here (their files stay unmodified). Both have a top-level
package named ``models``; :func:`build` swaps it in ``sys.modules``.

    model, forward = build("rdnet", ".peers")   # or "dsit"; eval mode, on the CPU
    out = forward(image)                        # (1, 3, H, W) in [0, 1], H and W multiples of 32
    out["T"], out["R"]                          # transmission, reflection
"""

from __future__ import annotations

import contextlib
import os
import sys
import types
from typing import Any, Callable

import torch
from torch import nn

REPOS = {"rdnet": "RDNet", "dsit": "DSIT"}


@contextlib.contextmanager
def _patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def _use_repo(root: str, folder: str) -> None:
    path = os.path.join(root, folder)
    for k in [k for k in sys.modules if k.split(".")[0] in ("models", "util", "tools", "data", "options")]:
        del sys.modules[k]
    sys.path[:] = [p for p in sys.path if p not in [os.path.join(root, f) for f in REPOS.values()]]
    sys.path.insert(0, path)
    # Bare `models` package: skips the repos' models/__init__.py, which pulls in training-only code
    # (losses, VGG with pretrained=True, ema_pytorch, ...). Sub-packages/modules import normally.
    pkg = types.ModuleType("models")
    pkg.__path__ = [os.path.join(path, "models")]
    sys.modules["models"] = pkg
    try:  # RDNet's modules_sig.py does `import imp` (unused); `imp` was removed in Python 3.12.
        import imp  # noqa: F401
    except ImportError:
        sys.modules["imp"] = types.ModuleType("imp")


class RDNetTest(nn.Module):
    """RDNet at test time = ClsModel.forward_eval (models/cls_model_eval_nocls_reg.py:340-354), opt.hyper=False."""

    def __init__(self):
        super().__init__()
        from models.arch import focalnet
        from models.arch.classifier import PretrainedConvNext
        from models.arch.RDnet_ import FullNet_NLP

        # cls_model_eval_nocls_reg.py:206-213 with TrainOptions defaults num_subnet=4, loss_col=4 (train_options.py:68,70)
        self.net_c = PretrainedConvNext("convnext_small_in22k")  # timm.create_model(..., pretrained=False): no download
        # FullNet_NLP.__init__ unconditionally runs self.baseball.load_state_dict(torch.load('./pretrain/focal.pth'))
        # (RDnet_.py:167); skip that load so the FocalNet-L backbone keeps its random init.
        with _patched(torch, "load", lambda *a, **k: None), \
                _patched(focalnet.FocalNet, "load_state_dict", lambda self, *a, **k: None):
            self.net_i = FullNet_NLP([64, 128, 256, 512], [2, 2, 4, 2], 4, 4, num_classes=1000, drop_path=0,
                                     save_memory=True, inter_supv=True, head_init_scale=None, kernel_size=3)

    def forward(self, x):
        ipt = self.net_c(x)  # (B, 6) transmission-rate prompt from the ConvNeXt-S classifier (input resized to 224)
        _, outs = self.net_i(x, ipt, prompt=True)  # 4 tensors (B, 6, H, W), one per column
        # test() saves output_j[6] (= outs[-1][:, 3:]) as the clean image and output_j[7] (= outs[-1][:, :3]) as reflection
        return {"T": outs[-1][:, 3:], "R": outs[-1][:, :3], "columns": outs}


def _build_rdnet():
    return RDNetTest()


def _build_dsit():
    import models.arch as arch  # DSIT's models/arch/__init__.py defines dsit_large()
    from models.arch import dsit, swin_det

    def swin_large_384_det_random(ckpt_path=None):  # same config as swin_det.py:692-707, without torch.load(ckpt)
        return swin_det.SwinTransformer(pretrain_img_size=384, embed_dim=192, depths=[2, 2, 18, 2],
                                        num_heads=[6, 12, 24, 48], window_size=12, out_indices=[1, 2, 3],
                                        pretrained=None)

    # DSIT.__init__ calls swin_large_384_det(args.backbone_weight_path), which torch.load()s the Swin-L checkpoint.
    with _patched(dsit, "swin_large_384_det", swin_large_384_det_random):
        return arch.dsit_large(types.SimpleNamespace(backbone_weight_path=None))  # options.py:18 default arch


def build(name: str, root: str | os.PathLike) -> tuple[nn.Module, Callable[[torch.Tensor], Any]]:
    """``(model, forward)`` of peer ``name`` ("rdnet" or "dsit") from its clone under ``root``."""
    name = name.lower()
    if not os.path.isdir(os.path.join(root, REPOS[name])):
        raise FileNotFoundError(f"no {REPOS[name]} clone in {root}; see the docstring of benchmarks/peers.py")
    _use_repo(os.fspath(root), REPOS[name])
    model = {"rdnet": _build_rdnet, "dsit": _build_dsit}[name]()
    model.eval()  # (DSIT.train() returns None, so no chaining)

    @torch.no_grad()
    def forward(image: torch.Tensor) -> dict:
        if name == "rdnet":
            return model(image)
        t, r, rr = model(image)  # DSITModel.forward (dsit_model_sirs_lrm.py:195-203); rr = tanh residual in [-1, 1]
        return {"T": t, "R": r, "RR": rr}

    return model, forward
