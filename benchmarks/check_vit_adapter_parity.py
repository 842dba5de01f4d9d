"""ViT-Adapter against the official code: state-dict names/shapes and outputs of `vlmssm.backbones.vit_adapter` vs the
official `ViTAdapter` class of czczup/ViT-Adapter (checked at fd64a51), on CPU.

Usage (needs a checkout of the official repository; nothing is downloaded, nothing of it is copied into vlmssm):
    git clone https://github.com/czczup/ViT-Adapter /tmp/ViT-Adapter
    OMP_NUM_THREADS=1 python benchmarks/check_vit_adapter_parity.py /tmp/ViT-Adapter [--base]

The official modules import mmcv/mmseg and a CUDA op; this script replaces those imports with minimal stand-ins
(`BaseModule` = `nn.Module`, a no-op registry, `SyncBatchNorm` = `BatchNorm2d`, and the CUDA `MSDeformAttnFunction`
by the official repository's own pure-PyTorch `ms_deform_attn_core_pytorch`), builds both models with the DeiT-B
config (and a pico config), compares their state-dict names and shapes, copies random weights (BN statistics
included) from the official model into ours and prints the largest relative difference of each of the four output
maps. Measured when the family was written: 410 = 410 entries, identical; relative differences 3e-7 (pico, 64x96 and
128x64) and 1.7e-6 (DeiT-B config at 128x128).
"""
import importlib.util, os, sys, types
import torch
import torch.nn as nn
from fastcore.script import call_parse

from vlmssm.backbones.vit_adapter import ViTAdapter


def _module(name, **attrs):
    m = types.ModuleType(name); m.__dict__.update(attrs); sys.modules[name] = m; return m


def _load(name, path, package=None):
    spec = importlib.util.spec_from_file_location(name, path); m = importlib.util.module_from_spec(spec)
    if package: m.__package__ = package
    sys.modules[name] = m; spec.loader.exec_module(m); return m


def official_class(repo: str):
    "The official `ViTAdapter` class, importable on CPU without mmcv, mmseg or the CUDA extension."
    seg, ops = os.path.join(repo, "segmentation", "mmseg_custom", "models", "backbones"), os.path.join(repo, "detection", "ops")
    class _Registry:
        def register_module(self, *a, **k): return lambda cls: cls
    _module("mmseg"); _module("mmseg.models"); _module("mmseg.models.builder", BACKBONES=_Registry())
    _module("mmseg.utils", get_root_logger=lambda: None)
    _module("mmcv"); _module("mmcv.runner", BaseModule=nn.Module); _module("mmcv_custom", my_load_checkpoint=None)
    _module("MultiScaleDeformableAttention")                                     # the CUDA extension: never called
    func = _load("_official_msda_func", os.path.join(ops, "functions", "ms_deform_attn_func.py"))
    class MSDeformAttnFunction:
        @staticmethod
        def apply(value, shapes, start, loc, weights, step): return func.ms_deform_attn_core_pytorch(value, shapes, loc, weights)
    _module("ops"); _module("ops.functions", MSDeformAttnFunction=MSDeformAttnFunction)
    src = open(os.path.join(ops, "modules", "ms_deform_attn.py")).read().replace("from ..functions import", "from ops.functions import")
    exec(compile(src, "ms_deform_attn.py", "exec"), _module("ops.modules").__dict__)
    nn.SyncBatchNorm = nn.BatchNorm2d
    _module("_official"); _module("_official.base")
    _load("_official.base.vit", os.path.join(seg, "base", "vit.py"), "_official.base")
    _load("_official.adapter_modules", os.path.join(seg, "adapter_modules.py"), "_official")
    return _load("_official.vit_adapter", os.path.join(seg, "vit_adapter.py"), "_official").ViTAdapter


def compare(cls, cfg: dict, size) -> tuple[bool, list]:
    "(same state-dict names and shapes, relative max difference of f1..f4) for one config and input size."
    torch.manual_seed(0)
    off = cls(window_attn=False, **cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for k, t in off.state_dict().items():
            if not t.dtype.is_floating_point: continue
            if "running_var" in k: t.uniform_(0.5, 1.5, generator=g)
            else: t.add_(0.05 * torch.randn(t.shape, generator=g))
    ours = ViTAdapter(**{k: v for k, v in cfg.items() if k != "img_size"}).eval()
    same = {k: v.shape for k, v in off.state_dict().items()} == {k: v.shape for k, v in ours.state_dict().items()}
    ours.load_state_dict(off.state_dict())
    x = torch.randn(2, 3, *size, generator=g)
    with torch.no_grad(): a, b = off(x), ours.pyramid(x)
    return same, [float((p - q).abs().max() / q.abs().max()) for p, q in zip(a, b)]


@call_parse
def main(repo: str,           # checkout of czczup/ViT-Adapter
         base: bool = False): # also the DeiT-B config (100M parameters, ~1 min on one core)
    torch.set_num_threads(1)
    cls = official_class(repo)
    pico = dict(img_size=64, pretrain_size=64, embed_dim=96, depth=4, num_heads=3, conv_inplane=16, n_points=4, deform_num_heads=3,
                cffn_ratio=0.25, deform_ratio=0.5, interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]])
    for size in [(64, 96), (128, 64)]: print("pico", size, *compare(cls, pico, size))
    if base:
        deit_b = dict(img_size=224, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4, conv_inplane=64, n_points=4, deform_num_heads=12,
                      cffn_ratio=0.25, deform_ratio=0.5, interaction_indexes=[[0, 2], [3, 5], [6, 8], [9, 11]])
        print("deit-b", (128, 128), *compare(cls, deit_b, (128, 128)))
