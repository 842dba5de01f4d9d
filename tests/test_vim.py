"""Vim family (`vlmssm.backbones.vim`): official keys and sizes, the middle class token, the bidirectional mixer and the
Add→RMSNorm residual stream re-derived independently, taps, checkpoints (`model` not `model_ema`, pos_embed resampling)."""
import argparse, math, os

os.environ.setdefault("OMP_NUM_THREADS", "1")
import pytest
import timm
import torch
import torch.nn.functional as F

from vlmssm.backbones import mambavision as mv
from vlmssm.backbones.core import WeightsError
from vlmssm.backbones import vim

torch.set_num_threads(1)


def meta(name, **kw):
    with torch.device("meta"):
        return timm.create_model(name, **kw)


@pytest.fixture(scope="module")
def pico():
    torch.manual_seed(0)
    m = timm.create_model("vim_pico").eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for k, t in m.state_dict().items():
            if k.endswith("norm.weight") or k.endswith("norm_f.weight"): t.copy_(1 + 0.3 * torch.randn(t.shape, generator=g))
            else: t.add_(0.02 * torch.randn(t.shape, generator=g))
    return m


# ---------------------------------------------------------------- keys, sizes, registry
MIXER_KEYS = {"A_log": (384, 16), "D": (384,), "in_proj.weight": (768, 192), "conv1d.weight": (384, 1, 4), "conv1d.bias": (384,),
              "x_proj.weight": (44, 384), "dt_proj.weight": (384, 12), "dt_proj.bias": (384,), "A_b_log": (384, 16),
              "conv1d_b.weight": (384, 1, 4), "conv1d_b.bias": (384,), "x_proj_b.weight": (44, 384),
              "dt_proj_b.weight": (384, 12), "dt_proj_b.bias": (384,), "D_b": (384,), "out_proj.weight": (192, 384)}


def test_official_keys_of_vim_tiny():
    sd = {k: tuple(v.shape) for k, v in meta("vim_tiny").state_dict().items()}
    assert {k[len("layers.3.mixer."):]: s for k, s in sd.items() if k.startswith("layers.3.mixer.")} == MIXER_KEYS
    top = {k: s for k, s in sd.items() if not k.startswith("layers.")}
    assert top == {"cls_token": (1, 1, 192), "pos_embed": (1, 197, 192), "patch_embed.proj.weight": (192, 3, 16, 16),
                   "patch_embed.proj.bias": (192,), "head.weight": (1000, 192), "head.bias": (1000,), "norm_f.weight": (192,)}
    assert sd["layers.23.norm.weight"] == (192,) and "layers.24.norm.weight" not in sd
    assert len([k for k in sd if k.startswith("layers.")]) == 24 * (len(MIXER_KEYS) + 1)


def test_sizes_and_cfgs():
    n = {k: sum(p.numel() for p in meta(k).parameters()) for k in ("vim_tiny", "vim_small", "vim_base")}
    assert n == {"vim_tiny": 7_148_008, "vim_small": 25_796_584, "vim_base": 97_598_440}      # README: 7M / 26M / 98M
    assert meta("vim_small_stride8").pos_embed.shape == (1, 730, 384)
    files = {"vim_tiny": ("tiny", "vim_t_midclstok_76p1acc.pth"), "vim_tiny_stride8": ("tiny", "vim_t_midclstok_ft_78p3acc.pth"),
             "vim_small": ("small", "vim_s_midclstok_80p5acc.pth"), "vim_small_stride8": ("small", "vim_s_midclstok_ft_81p6acc.pth"),
             "vim_base": ("base", "vim_b_midclstok_81p9acc.pth")}
    for name, (size, fname) in files.items():
        cfg = timm.models.get_pretrained_cfg(f"{name}.in1k").to_dict()
        assert (cfg["hf_hub_id"], cfg["hf_hub_filename"]) == (f"hustvl/Vim-{size}-midclstok", fname)
        assert cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bicubic" and cfg["fixed_input_size"]
    m = meta("vim_base")
    rms = m.layers[0].norm
    assert isinstance(rms, torch.nn.RMSNorm) and rms.eps == 1e-5 and m.norm_f.eps == 1e-5
    mix = m.layers[0].mixer
    assert (mix.d_state, mix.d_conv, mix.expand, mix.dt_rank, mix.if_divide_out) == (16, 4, 2, 48, True)
    assert mix.conv1d.padding == (3,) and mix.in_proj.bias is None and mix.out_proj.bias is None


# ---------------------------------------------------------------- independent re-derivations
def _scan(u, delta, A, B, C, D):
    "Sequential selective scan for this test: u, delta (b, d, l); A (d, n); B, C (b, n, l)."
    h = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=u.dtype)
    ys = []
    for t in range(u.shape[-1]):
        dt = delta[:, :, t, None]
        h = torch.exp(dt * A) * h + dt * B[:, None, :, t] * u[:, :, t, None]
        ys.append((h * C[:, None, :, t]).sum(-1) + D * u[:, :, t])
    return torch.stack(ys, -1)


def _mamba_branch(xz, W, sfx, R, N):
    "Mamba's inner function (causal conv k=4 with bias → SiLU → SSM with delta_bias+softplus → · SiLU(z)), no out_proj."
    di = xz.shape[1] // 2
    x, z = xz[:, :di], xz[:, di:]
    w, b = W[f"conv1d{sfx}.weight"], W[f"conv1d{sfx}.bias"]
    xp = F.pad(x, (3, 0))                                    # causal: output t sees inputs t-3..t
    x = F.silu(sum(xp[:, :, k:k + x.shape[-1]] * w[:, 0, k, None] for k in range(4)) + b[:, None])
    dbl = torch.einsum("oi,bil->bol", W[f"x_proj{sfx}.weight"], x)
    delta = torch.einsum("or,brl->bol", W[f"dt_proj{sfx}.weight"], dbl[:, :R]) + W[f"dt_proj{sfx}.bias"][:, None]
    A_log = W["A_log" if not sfx else "A_b_log"]
    y = _scan(x, F.softplus(delta), -torch.exp(A_log), dbl[:, R:R + N], dbl[:, R + N:], W[f"D{sfx}"])
    return y * F.silu(z)


def test_bidirectional_mixer_rederived():
    torch.manual_seed(0)
    m = vim.BiMamba(16, d_state=4).double().eval()
    W = {k: v.detach() for k, v in m.state_dict().items()}
    hs = torch.randn(2, 9, 16, dtype=torch.float64)
    xz = torch.einsum("oi,bli->bol", W["in_proj.weight"], hs)
    y_f = _mamba_branch(xz, W, "", m.dt_rank, 4)
    y_b = _mamba_branch(xz.flip(-1), W, "_b", m.dt_rank, 4)
    ref = torch.einsum("oi,bil->blo", W["out_proj.weight"], (y_f + y_b.flip(-1)) / 2)
    with torch.no_grad():
        assert torch.allclose(m(hs), ref, atol=1e-6, rtol=0)      # A, D, dt bias pass through .float() as upstream
        # the backward branch matters: a sequence reversal is not a symmetry of the mixer
        assert (m(hs.flip(1)).flip(1) - m(hs)).abs().max() > 1e-4


def test_model_forward_rederived(pico):
    "Embedding with the class token at M//2, Add→RMSNorm blocks with an fp32 residual stream, norm_f, head on the class token."
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        t = F.conv2d(x, pico.patch_embed.proj.weight, pico.patch_embed.proj.bias, stride=8).flatten(2).transpose(1, 2)
        M = t.shape[1]
        assert M == 64 and pico.cls_token_position == 32
        t = torch.cat([t[:, :32], pico.cls_token.expand(2, -1, -1), t[:, 32:]], 1) + pico.pos_embed
        rms = lambda v, w: v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-5) * w
        stream = t
        streams = []
        for layer in pico.layers:
            stream = stream + layer.mixer(rms(stream, layer.norm.weight))
            streams.append(stream)
        final = rms(stream, pico.norm_f.weight)
        logits = final[:, 32] @ pico.head.weight.t() + pico.head.bias
        assert torch.allclose(pico(x), logits, atol=1e-5)
        assert torch.allclose(pico.forward_features(x), final, atol=1e-5)
        keep = [i for i in range(M + 1) if i != 32]
        assert torch.allclose(pico.forward_tap(x), streams[-2][:, keep], atol=1e-5)          # default: second-to-last block
        assert torch.allclose(pico.forward_tap(x, layer=0), streams[0][:, keep], atol=1e-5)
        assert torch.allclose(pico.forward_tap(x, layer=-1, norm=True), final[:, keep], atol=1e-5)


# ---------------------------------------------------------------- API
def test_taps_intermediates_and_features(pico):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tap = pico.forward_tap(x)
        assert tap.shape == (2, 64, 64) and tap.dtype == torch.float32
        last, inter = pico.forward_intermediates(x, indices=[2, -2], return_prefix_tokens=True)
        assert torch.equal(last, pico.forward_features(x))
        (f2, c2), (f4, c4) = inter
        assert f4.shape == (2, 64, 8, 8) and c4.shape == (2, 1, 64)
        assert torch.equal(f4.flatten(2).transpose(1, 2), tap)                       # NCHW is the row-major grid
        assert torch.equal(f2.flatten(2).transpose(1, 2), pico.forward_tap(x, layer=2))
        a, b = pico(x), pico(x)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="out of range"):
        pico.forward_tap(x, layer=6)
    with pytest.raises(ValueError, match="img_size"):
        pico(torch.randn(1, 3, 64, 72))
    f = timm.create_model("vim_pico", features_only=True, out_indices=(1, 4))
    assert [tuple(o.shape) for o in f(torch.randn(1, 3, 64, 64))] == [(1, 64, 8, 8), (1, 64, 8, 8)]
    assert len(f.model.layers) == 5


def test_grad_checkpointing_same_output(pico):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = pico(x)
    pico.set_grad_checkpointing(True)
    try:
        y = pico(x)
        y.sum().backward()
        assert torch.equal(y.detach(), ref) and pico.layers[0].mixer.A_b_log.grad is not None
    finally:
        pico.set_grad_checkpointing(False)
        pico.zero_grad(set_to_none=True)


def test_scan_backends_agree(pico):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a = pico(x)
        pico.set_scan_backend("ref")
        b = pico(x)
        pico.set_scan_backend("auto")
    assert torch.allclose(a, b, atol=1e-5)


# ---------------------------------------------------------------- checkpoints
def test_official_layout_uses_model_not_ema(pico, tmp_path):
    x = torch.randn(2, 3, 64, 64)
    ema = {k: v + 1 for k, v in pico.state_dict().items()}
    path = tmp_path / "vim_p_midclstok.pth"
    torch.save({"model": pico.state_dict(), "model_ema": ema, "optimizer": {"state": {}, "param_groups": []}, "epoch": 299,
                "scaler": "none", "args": argparse.Namespace(model="vim_pico", lr=5e-4)}, path)
    m = timm.create_model("vim_pico", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    with torch.no_grad():
        assert torch.equal(m(x), pico(x))
        wrapped = {"model": {"module." + k: v for k, v in pico.state_dict().items()}}
        assert set(vim.checkpoint_filter_fn(wrapped, m)) == set(m.state_dict())
    b = timm.create_model("vim_pico", num_classes=0, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    with torch.no_grad():
        assert torch.equal(b.forward_tap(x), pico.forward_tap(x))


def test_pos_embed_resampled_around_the_middle_class_token(pico):
    big = timm.create_model("vim_pico", img_size=96)                       # 12 x 12 patches
    with pytest.warns(UserWarning, match="resampled from a 8x8 to a 12x12"):
        sd = vim.checkpoint_filter_fn({"model": pico.state_dict()}, big)
    pe = sd["pos_embed"]
    assert pe.shape == (1, 145, 64)
    assert torch.equal(pe[:, 72], pico.pos_embed.data[:, 32])                    # class entry: old middle → new middle
    old_grid = torch.cat([pico.pos_embed.data[:, :32], pico.pos_embed.data[:, 33:]], 1).reshape(1, 8, 8, 64).permute(0, 3, 1, 2)
    ref = F.interpolate(old_grid, size=(12, 12), mode="bicubic", antialias=True, align_corners=False)
    new_grid = torch.cat([pe[:, :72], pe[:, 73:]], 1).reshape(1, 12, 12, 64).permute(0, 3, 1, 2)
    assert torch.allclose(new_grid, ref, atol=1e-6)
    big.load_state_dict(sd)                                                      # strict


def test_mismatched_checkpoint_and_offline_errors(pico, tmp_path, monkeypatch):
    path = tmp_path / "vim.pth"
    torch.save({"model": pico.state_dict()}, path)
    with pytest.raises(WeightsError) as e:
        timm.create_model("vim_pico", depth=8, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert "\n" not in str(e.value) and "34 missing (e.g. layers.6." in str(e.value)
    with pytest.raises(WeightsError, match="shape mismatches"):
        timm.create_model("vim_pico", d_state=16, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(mv.PretrainedUnavailableError) as e:
        timm.create_model("vim_tiny", pretrained=True)
    assert "\n" not in str(e.value) and "hustvl/Vim-tiny-midclstok/vim_t_midclstok_76p1acc.pth" in str(e.value)
    assert "pretrained_cfg_overlay=dict(file='/path/to/vim_t_midclstok_76p1acc.pth')" in str(e.value)


def test_constructor_rejects_bad_arguments():
    with pytest.raises(TypeError):
        vim.VisionMamba(if_rope=True)                                   # unsupported official switches are not accepted
    with pytest.raises(ValueError, match="disagree"):
        vim.VisionMamba(depth=1, embed_dim=16, in_chans=1, channels=4)
    assert vim.VisionMamba(depth=1, embed_dim=16, channels=1).patch_embed.proj.in_channels == 1
