"""ViT-Adapter family (`vlmssm.backbones.vit_adapter`): the official mmseg checkpoint layout through the registry, timm's
model contract (features, intermediates, gradients, checkpointing, every checkpoint layout and broken file), bf16, and
the offline message. Key names and shapes against the official configuration are checked in the notebook
(`nbs/04f_backbones.vit_adapter.ipynb`)."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
import pytest
import timm
import torch

from vlmssm.backbones import create_encoder, list_encoders, save_encoder, unavailable_encoders
from vlmssm.backbones.core import WeightsError
from vlmssm.backbones import vit_adapter as va

torch.set_num_threads(1)


def perturbed(name="vit_adapter_test", seed=1, **kw):
    "A model whose every tensor (incl. BN statistics and the zero-initialised injector gammas) differs from a fresh init."
    torch.manual_seed(0)
    m = timm.create_model(name, **kw).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, t in m.state_dict().items():
            if not t.dtype.is_floating_point: continue
            if "running_var" in k: t.uniform_(0.5, 1.5, generator=g)
            else: t.add_(0.05 * torch.randn(t.shape, generator=g))
    return m


def mmseg_file(model, path):
    "The released layout: mmcv `meta` + `state_dict` with `backbone.*` and the UperNet/FCN head tensors."
    sd = {f"backbone.{k}": v for k, v in model.state_dict().items() if not k.startswith("head.")}
    sd |= {"decode_head.conv_seg.weight": torch.randn(150, 512, 1, 1), "decode_head.conv_seg.bias": torch.randn(150),
           "decode_head.lateral_convs.0.conv.weight": torch.randn(512, model.embed_dim, 1, 1),
           "auxiliary_head.convs.0.conv.weight": torch.randn(256, model.embed_dim, 3, 3), "auxiliary_head.conv_seg.weight": torch.randn(150, 256, 1, 1)}
    torch.save({"meta": {"mmseg_version": "0.20.2", "iter": 160000, "CLASSES": ("wall", "building"), "PALETTE": [[120, 120, 120], [180, 120, 120]]},
                "state_dict": sd}, path)
    return path


def test_registered_and_no_longer_unavailable():
    assert {"vit-adapter-deit-b-ade20k-512", "vit-adapter-pico"} <= set(list_encoders(family="ViT-Adapter"))
    assert "vit-adapter-deit-b-ade20k-512" not in unavailable_encoders()
    enc = create_encoder("vit-adapter-deit-b-ade20k-512", device="meta")
    assert (enc.num_tokens(), enc.embed_dim, enc.resize, enc.default_resolution) == (1024, 768, "fit-pad", (512, 512))


def test_official_mmseg_checkpoint_reproduces_tokens_after_import(tmp_path):
    "A synthetic checkpoint with the official layout, through `create_encoder(pretrained=PATH)`: the same tokens, bit for bit."
    src = perturbed("vit_adapter_pico")
    path = mmseg_file(src, tmp_path / "upernet_deit_adapter_pico_512_160k_ade20k.pth.tar")
    x = torch.randn(2, 3, 64, 64)
    for tap, ref in [("stage 3", lambda: src.forward_tap(x, stage=3).flatten(2).transpose(1, 2)),
                     ("block -2", lambda: src.forward_tap(x, block=-2))]:
        enc = create_encoder("vit-adapter-pico", pretrained=str(path), tap=tap)
        with torch.no_grad(): assert torch.equal(enc(x), ref()), tap
    saved = save_encoder(enc, tmp_path / "study.safetensors")                     # and the study's own format
    with torch.no_grad(): assert torch.equal(create_encoder("vit-adapter-pico", pretrained=str(saved), tap="block -2")(x), enc(x))


def test_wrong_or_partial_checkpoints_are_one_line(tmp_path):
    src = perturbed("vit_adapter_pico")
    sd = {f"backbone.{k}": v for k, v in src.state_dict().items() if not k.startswith("backbone.interactions.3.extra")}
    torch.save({"state_dict": {k: v for k, v in sd.items() if ".extra_extractors." not in k}}, tmp_path / "partial.pth")
    with pytest.raises(WeightsError) as e: create_encoder("vit-adapter-pico", pretrained=str(tmp_path / "partial.pth"))
    assert "\n" not in str(e.value) and "missing" in str(e.value) and "extra_extractors" in str(e.value)
    mmseg_file(perturbed("vit_adapter_test"), tmp_path / "other_width.pth")      # D 32 into a D 80 model
    with pytest.raises(WeightsError, match="shape mismatches"): create_encoder("vit-adapter-pico", pretrained=str(tmp_path / "other_width.pth"))


def test_load_pretrained_every_layout_and_every_broken_file(tmp_path):
    "The contract every family meets (`vlmssm.test_utils.check_load_pretrained`, as in tests/test_timm_models.py)."
    from vlmssm.test_utils import check_load_pretrained
    src = perturbed()
    x = torch.randn(1, 3, 64, 64)
    def load(path):
        torch.manual_seed(1); m = timm.create_model("vit_adapter_test").eval(); m.load_pretrained(path); return m
    def same(m):
        with torch.no_grad(): assert torch.equal(m(x), src(x))
    check_load_pretrained(load, same, tmp_path, src.state_dict())


def test_timm_features_intermediates_and_checkpointing():
    "features_only (both wrappers) and forward_intermediates give the feature_info pyramid; checkpointing changes nothing."
    m = perturbed()
    x = torch.randn(1, 3, 64, 96)
    out, inter = m.forward_intermediates(x)
    assert torch.equal(out, m.forward_features(x))
    assert [tuple(t.shape) for t in inter] == [(1, 32, 64 // r, 96 // r) for r in (4, 8, 16, 32)]
    assert [(f["num_chs"], f["reduction"]) for f in m.feature_info] == [(32, r) for r in (4, 8, 16, 32)]
    for kw in ({}, dict(feature_cls="getter")):
        fm = timm.create_model("vit_adapter_test", features_only=True, **kw).eval()
        fm.load_state_dict(m.state_dict(), strict=False)
        assert [tuple(t.shape[1:]) for t in fm(x)] == [tuple(t.shape[1:]) for t in inter]
    y = m(x)
    m.set_grad_checkpointing()
    torch.testing.assert_close(m(x), y, rtol=1e-5, atol=1e-6)


def test_gradients_reach_every_parameter_through_the_pyramid():
    "Training: every parameter gets a gradient from the four levels together; the classifier (f4) path leaves out only f1-f3's own parts."
    m = timm.create_model("vit_adapter_test", num_classes=5).train()
    m.set_grad_checkpointing()
    x = torch.randn(2, 3, 64, 64)
    sum(f.mean() for f in m.pyramid(x)).backward()
    assert [n for n, p in m.named_parameters() if p.grad is None and not n.startswith("head.")] == []
    m.zero_grad(set_to_none=True)
    m(x).logsumexp(-1).mean().backward()
    unused = {n.split(".")[0] if not n.startswith("spm.") else ".".join(n.split(".")[:2]) for n, p in m.named_parameters() if p.grad is None}
    assert unused == {"up", "norm1", "norm2", "norm3", "spm.fc1"}, unused


def test_bf16_and_batch_independence():
    m = perturbed("vit_adapter_pico")
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        ref = m.forward_tap(x)
        torch.testing.assert_close(m.forward_tap(x[1:2]), ref[1:2], rtol=1e-5, atol=1e-5)
        b = timm.create_model("vit_adapter_pico").eval().to(torch.bfloat16)
        b.load_state_dict(m.state_dict())
        assert float((b.forward_tap(x.bfloat16()).float() - ref).abs().max() / ref.abs().max()) < 0.05


def test_offline_hub_is_one_clear_line(monkeypatch):
    "No network: one WeightsError line naming the official URL and how to pass the file (built on meta: no 100M-parameter init)."
    import timm.models._builder as builder
    def no_net(*a, **k): raise OSError("no route to host")
    monkeypatch.setattr(builder, "download_cached_file", no_net)
    with pytest.raises(WeightsError) as e, torch.device("meta"): timm.create_model("vit_adapter_deit_base.ade20k_upernet_160k", pretrained=True)
    msg = str(e.value)
    assert "\n" not in msg and "github.com/czczup/ViT-Adapter/releases/download/v0.3.1/upernet_deit_adapter_base_512_160k_ade20k.pth.tar" in msg, msg
    assert "offline?" in msg and "pretrained_cfg_overlay=dict(file=" in msg, msg
