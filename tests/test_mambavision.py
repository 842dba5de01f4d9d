"""MambaVision family (`vlmssm.backbones.mambavision`): keys/params of the released sizes, taps, the mixer math re-derived
independently, window padding, checkpoint loading and errors. Big models are only built on the meta device."""
import argparse, fractions, math, os, warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")
import pytest
import timm
import torch
import torch.nn.functional as F

from vlmssm.backbones import mambavision as mv
from vlmssm.backbones.core import WeightsError

torch.set_num_threads(1)


def meta(name, **kw):
    with torch.device("meta"):
        return timm.create_model(name, **kw)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(scope="module")
def pico():
    torch.manual_seed(0)
    m = timm.create_model("mambavision_pico").eval()
    # non-trivial BN statistics, layer-scale-free but random biases: make every parameter matter
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for k, t in m.state_dict().items():
            if t.dtype.is_floating_point:
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if k.endswith("running_var") else t + 0.05 * torch.randn(t.shape, generator=g))
    return m


# ---------------------------------------------------------------- sizes, keys, registry
def test_param_counts_of_released_sizes():
    assert n_params(meta("mamba_vision_B")) == 97_685_288
    assert n_params(meta("mamba_vision_B", num_classes=0)) == 96_660_288
    assert n_params(meta("mamba_vision_T")) == 31_794_248
    assert 300_000 <= n_params(meta("mambavision_pico")) <= 600_000


def test_level2_keys_of_B_match_the_spec():
    sd = {k: tuple(v.shape) for k, v in meta("mamba_vision_B").state_dict().items()}
    mixer = {k.split("mixer.", 1)[1]: s for k, s in sd.items() if k.startswith("levels.2.blocks.0.mixer.")}
    assert mixer == {"A_log": (256, 8), "D": (256,), "in_proj.weight": (512, 512), "x_proj.weight": (48, 256),
                     "dt_proj.weight": (256, 32), "dt_proj.bias": (256,), "out_proj.weight": (512, 512),
                     "conv1d_x.weight": (256, 1, 3), "conv1d_z.weight": (256, 1, 3)}
    attn = {k.split("blocks.5.", 1)[1]: s for k, s in sd.items() if k.startswith("levels.2.blocks.5.")}
    assert attn == {"norm1.weight": (512,), "norm1.bias": (512,), "mixer.qkv.weight": (1536, 512), "mixer.qkv.bias": (1536,),
                    "mixer.proj.weight": (512, 512), "mixer.proj.bias": (512,), "norm2.weight": (512,), "norm2.bias": (512,),
                    "mlp.fc1.weight": (2048, 512), "mlp.fc1.bias": (2048,), "mlp.fc2.weight": (512, 2048),
                    "mlp.fc2.bias": (512,), "gamma_1": (512,), "gamma_2": (512,)}
    # conv stages, stem, downsample, head
    assert {k for k in sd if k.startswith("levels.0.blocks.0.")} == {
        f"levels.0.blocks.0.{m}.{p}" for m in ("conv1", "conv2") for p in ("weight", "bias")} | {
        f"levels.0.blocks.0.{m}.{p}" for m in ("norm1", "norm2")
        for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    assert sd["patch_embed.conv_down.0.weight"] == (64, 3, 3, 3) and sd["patch_embed.conv_down.3.weight"] == (128, 64, 3, 3)
    assert [k for k in sd if "downsample" in k] == [f"levels.{i}.downsample.reduction.0.weight" for i in range(3)]
    assert sd["norm.running_mean"] == (1024,) and sd["head.weight"] == (1000, 1024)
    assert not any("gamma" in k for k in meta("mamba_vision_T").state_dict())        # T/T2/S: no layer scale


def test_official_layer_hyperparameters():
    "BN eps 1e-4 in the stem and 1e-5 elsewhere, GELU(tanh) in conv blocks, exact GELU in MLPs, LN eps 1e-5, no conv biases."
    m = meta("mamba_vision_B")
    stem = m.patch_embed.conv_down
    assert [type(l).__name__ for l in stem] == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU"]
    assert stem[1].eps == stem[4].eps == 1e-4 and stem[0].bias is None and stem[3].bias is None
    cb = m.levels[0].blocks[0]
    assert cb.norm1.eps == cb.norm2.eps == 1e-5 and cb.act1.approximate == "tanh" and cb.conv1.bias is not None
    blk = m.levels[2].blocks[0]
    assert blk.norm1.eps == blk.norm2.eps == 1e-5 and blk.mlp.act.approximate == "none"
    assert blk.mixer.conv1d_x.bias is None and blk.mixer.conv1d_z.bias is None and blk.mixer.in_proj.bias is None
    assert blk.mixer.dt_proj.bias is not None and (blk.mixer.d_state, blk.mixer.dt_rank) == (8, 32)
    assert m.norm.eps == 1e-5 and m.levels[0].downsample.reduction[0].bias is None


@pytest.mark.parametrize("name,att", [("mamba_vision_B", {2: [5, 6, 7, 8, 9], 3: [3, 4]}),
                                      ("mamba_vision_T", {2: [4, 5, 6, 7], 3: [2, 3]}),
                                      ("mamba_vision_S", {2: [4, 5, 6], 3: [3, 4]})])
def test_mixer_first_half_attention_second_half(name, att):
    m = meta(name)
    for lvl, idx in att.items():
        kinds = [type(b.mixer).__name__ for b in m.levels[lvl].blocks]
        assert [i for i, k in enumerate(kinds) if k == "Attention"] == idx
        assert all(k == "MambaVisionMixer" for i, k in enumerate(kinds) if i not in idx)


def test_registry_and_pretrained_cfgs():
    names = ["mamba_vision_T", "mamba_vision_T2", "mamba_vision_S", "mamba_vision_B", "mamba_vision_L", "mamba_vision_L2"]
    assert set(names + ["mambavision_pico"]) <= set(timm.list_models("mamba*vision*"))
    crop = dict(T=1.0, T2=0.98, S=0.93, B=1.0, L=1.0, L2=1.0)
    files = dict(T="tiny", T2="tiny2", S="small", B="base", L="large", L2="large2")
    for n in names:
        v = n.split("_")[-1]
        cfg = timm.models.get_pretrained_cfg(f"{n}.in1k").to_dict()
        assert cfg["hf_hub_id"] == f"nvidia/MambaVision-{v}-1K" and cfg["hf_hub_filename"] == f"mambavision_{files[v]}_1k.pth.tar"
        assert cfg["crop_pct"] == crop[v] and cfg["input_size"] == (3, 224, 224) and cfg["interpolation"] == "bicubic"
    d = meta("mamba_vision_B")
    assert [f["num_chs"] for f in d.feature_info] == [128, 256, 512, 1024]
    assert [f["reduction"] for f in d.feature_info] == [4, 8, 16, 32]


# ---------------------------------------------------------------- taps and shapes
def test_stage3_tap_of_B_is_196_tokens_of_4dim():
    x = torch.empty(1, 3, 224, 224, device="meta")
    m = meta("mamba_vision_B")
    s3 = m.forward_tap(x, 3)
    assert tuple(s3.shape) == (1, 512, 14, 14)
    assert s3.flatten(2).transpose(1, 2).shape == (1, 196, 512)
    assert m.tap_info(3) == dict(num_chs=512, reduction=16)
    assert [tuple(m.forward_tap(x, s).shape[1:]) for s in (1, 2)] == [(128, 56, 56), (256, 28, 28)]   # conv-only stages
    assert [m.tap_info(s) for s in (4, 5)] == [dict(num_chs=1024, reduction=32)] * 2
    assert m.tap_info(4, layer=0) == dict(num_chs=512, reduction=16)
    t = meta("mamba_vision_T")
    assert tuple(t.forward_tap(x, 3).shape) == (1, 320, 14, 14)


def test_stage3_tap_runs_no_mixer_and_no_norm(pico):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = pico.levels[1](pico.levels[0](pico.patch_embed(x)))
        assert torch.equal(pico.forward_tap(x, 3), ref)


def test_taps_agree_with_features_and_intermediates(pico):
    x = torch.randn(2, 3, 96, 80)                  # level 2: 6x5 → padded to 8x8; level 3: 3x3 → 4x4 (window 2)
    with torch.no_grad():
        f = pico.forward_features(x)
        last, inter = pico.forward_intermediates(x)
        assert torch.equal(last, f)
        assert [tuple(t.shape[1:]) for t in inter] == [(16, 24, 20), (32, 12, 10), (64, 6, 5), (128, 3, 3)]
        assert [t.shape[1] for t in inter] == [fi["num_chs"] for fi in pico.feature_info]
        assert torch.equal(pico.forward_tap(x, 5), f)
        assert torch.equal(pico.forward_tap(x, 5, layer=-1), f)
        assert torch.equal(pico.forward_tap(x, 4, layer=1), inter[2])           # block 1 of level 2, before downsample
        assert torch.equal(pico.forward_tap(x, 4), pico.levels[2].downsample(inter[2]))
        normed = pico.forward_intermediates(x, indices=[-1], norm=True, intermediates_only=True)[0]
        assert torch.equal(normed, f)
        assert torch.allclose(pico(x), pico.head(f.mean((2, 3))), atol=1e-6)
    with pytest.raises(ValueError, match="stage must be"):
        pico.forward_tap(x, 0)
    with pytest.raises(ValueError, match="out of range"):
        pico.forward_tap(x, 4, layer=2)
    with pytest.raises(ValueError, match="no layers"):
        pico.forward_tap(x, 1, layer=0)


def test_features_only_and_pruning():
    f = timm.create_model("mambavision_pico", features_only=True, out_indices=(1, 2))
    out = f(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in out] == [(1, 32, 8, 8), (1, 64, 4, 4)]
    m = timm.create_model("mambavision_pico")
    assert m.prune_intermediate_layers([1]) == [1] and len(m.levels) == 2 and m.levels[1].downsample is None


def test_deterministic_and_grad_checkpointing(pico):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = pico(x), pico(x)
    assert torch.equal(a, b)
    pico.set_grad_checkpointing(True)
    try:
        y = pico(x)
        y.sum().backward()
        assert torch.equal(y.detach(), a)
        assert pico.levels[2].blocks[0].mixer.A_log.grad is not None
    finally:
        pico.set_grad_checkpointing(False)
        pico.zero_grad(set_to_none=True)


# ---------------------------------------------------------------- independent re-derivations
def _scan(u, delta, A, B, C, D):
    "Sequential ZOH/Euler selective scan written out for this test: u, delta (b, d, l), A (d, n), B, C (b, n, l)."
    b, d, L = u.shape
    h = torch.zeros(b, d, A.shape[1], dtype=torch.float64)
    ys = []
    for t in range(L):
        dt = delta[:, :, t, None]
        h = torch.exp(dt * A) * h + dt * B[:, None, :, t] * u[:, :, t, None]
        ys.append((h * C[:, None, :, t]).sum(-1) + D * u[:, :, t])
    return torch.stack(ys, -1)


def test_mambavision_mixer_math_rederived():
    torch.manual_seed(0)
    m = mv.MambaVisionMixer(24, d_state=8, d_conv=3, expand=1).double().eval()
    with torch.no_grad():
        m.dt_proj.bias.normal_()                       # a visible bias, so adding it once or twice differs
    hs = torch.randn(3, 11, 24, dtype=torch.float64)
    W = {k: v.detach() for k, v in m.state_dict().items()}
    xz = torch.einsum("oi,bli->bol", W["in_proj.weight"], hs)
    x, z = xz[:, :12], xz[:, 12:]

    def same_dwconv(t, w):                              # non-causal 'same' padding, kernel 3, no bias
        tp = F.pad(t, (1, 1))
        return sum(tp[:, :, k:k + t.shape[-1]] * w[:, 0, k, None] for k in range(3))
    x, z = F.silu(same_dwconv(x, W["conv1d_x.weight"])), F.silu(same_dwconv(z, W["conv1d_z.weight"]))
    dbl = torch.einsum("oi,bil->bol", W["x_proj.weight"], x)
    R = m.dt_rank
    dt = torch.einsum("or,brl->bol", W["dt_proj.weight"], dbl[:, :R]) + 2 * W["dt_proj.bias"][:, None]   # bias twice
    y = _scan(x, F.softplus(dt), -torch.exp(W["A_log"]), dbl[:, R:R + 8], dbl[:, R + 8:], W["D"])
    out = torch.einsum("oi,bil->blo", W["out_proj.weight"], torch.cat([y, z], 1))                          # concat, no gate
    with torch.no_grad():
        got = m(hs)
    assert torch.allclose(got, out, atol=1e-6, rtol=0)        # A, D, dt bias pass through .float() as upstream
    # and the bias-once variant is measurably different (the test can fail)
    dt1 = dt - W["dt_proj.bias"][:, None]
    y1 = _scan(x, F.softplus(dt1), -torch.exp(W["A_log"]), dbl[:, R:R + 8], dbl[:, R + 8:], W["D"])
    assert (torch.einsum("oi,bil->blo", W["out_proj.weight"], torch.cat([y1, z], 1)) - got).abs().max() > 1e-4


def test_window_padding_rederived():
    "A hybrid level == pad right/bottom with zeros, run the blocks per window (row-major tokens), crop."
    torch.manual_seed(0)
    lvl = mv.MambaVisionLayer(16, 2, 2, window_size=4, conv=False, downsample=True).eval()
    x = torch.randn(2, 16, 6, 9)
    with torch.no_grad():
        xp = F.pad(x, (0, 3, 0, 2))                    # 8 x 12
        out = torch.zeros_like(xp)
        for b in range(2):
            for i in range(2):
                for j in range(3):
                    win = xp[b, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4].reshape(16, 16).t()[None]    # (1, 16 tokens, C)
                    for blk in lvl.blocks:
                        win = blk(win)
                    out[b, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4] = win[0].t().reshape(16, 4, 4)
        ref = out[:, :, :6, :9]
        assert torch.allclose(lvl.forward_blocks(x), ref, atol=1e-6)
        assert torch.allclose(lvl(x), lvl.downsample.reduction(ref), atol=1e-6)


def test_scan_backends_agree(pico):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a = pico(x)
        pico.set_scan_backend("ref")
        b = pico(x)
        pico.set_scan_backend("auto")
    assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="unknown selective-scan backend"):
        pico.set_scan_backend("fast")


# ---------------------------------------------------------------- checkpoints
def test_official_layout_round_trip(pico, tmp_path):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = pico(x)
    sd = {"module." + k: v for k, v in pico.state_dict().items()}
    path = tmp_path / "mambavision_pico_1k.pth.tar"
    torch.save({"state_dict": sd, "epoch": 310, "arch": "mambavision_pico", "args": argparse.Namespace(lr=1e-3)}, path)
    m = timm.create_model("mambavision_pico", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    # backbone only: the head is dropped, the rest loads strictly
    b = timm.create_model("mambavision_pico", num_classes=0, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    with torch.no_grad():
        assert torch.equal(b.forward_tap(x, 3), pico.forward_tap(x, 3))
    # a new 10-class head: everything but the head is loaded
    c = timm.create_model("mambavision_pico", num_classes=10, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.equal(c.levels[3].blocks[0].mixer.A_log, pico.levels[3].blocks[0].mixer.A_log)


def test_filter_is_pure_and_handles_encoder_prefix(pico):
    raw = {"model": {"encoder." + k: v for k, v in pico.state_dict().items()} | {"decoder.x": torch.ones(1)}}
    snapshot = dict(raw["model"])
    sd = mv.checkpoint_filter_fn(raw, pico)
    assert raw["model"].keys() == snapshot.keys()
    assert set(sd) == set(pico.state_dict())
    nohead = timm.create_model("mambavision_pico", num_classes=0)
    assert not any(k.startswith("head.") for k in mv.checkpoint_filter_fn({"state_dict": pico.state_dict()}, nohead))


def test_mismatched_checkpoint_is_one_clear_line(pico, tmp_path):
    path = tmp_path / "pico.pth"
    torch.save({"state_dict": pico.state_dict()}, path)
    with pytest.raises(WeightsError) as e:
        timm.create_model("mambavision_pico", dim=24, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    msg = str(e.value)
    assert "\n" not in msg and "shape mismatches" in msg and "pico.pth" in msg
    torch.save({"state_dict": {k: v for k, v in pico.state_dict().items() if "levels.3" not in k}}, path)
    with pytest.raises(WeightsError, match=r"missing \(e\.g\. levels\.3"):
        timm.create_model("mambavision_pico", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    with pytest.raises(WeightsError, match="not found"):
        timm.create_model("mambavision_pico", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "nope.pth")))


def test_weights_only_refuses_unknown_pickles_unless_opted_in(pico, tmp_path):
    path = tmp_path / "odd.pth.tar"
    torch.save({"state_dict": pico.state_dict(), "metric": fractions.Fraction(81, 100)}, path)
    with pytest.raises(WeightsError, match="fractions.Fraction.*allow_unsafe_pickle=True"):
        timm.create_model("mambavision_pico", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    m = timm.create_model("mambavision_pico")
    with pytest.warns(UserWarning, match="weights_only=False"):
        m.load_pretrained(path, allow_unsafe_pickle=True)
    assert torch.equal(m.norm.running_var, pico.norm.running_var)


def test_offline_pretrained_is_one_clear_line(monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    for name in ("mamba_vision_T", "mamba_vision_T.in1k"):
        with pytest.raises(mv.PretrainedUnavailableError) as e:
            timm.create_model(name, pretrained=True)
        msg = str(e.value)
        assert "\n" not in msg and "nvidia/MambaVision-T-1K/mambavision_tiny_1k.pth.tar" in msg
        assert "pretrained_cfg_overlay=dict(file='/path/to/mambavision_tiny_1k.pth.tar')" in msg
