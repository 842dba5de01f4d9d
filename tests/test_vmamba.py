"VMamba family (vlmssm.backbones.vmamba): official layouts, parameter counts, taps, checkpoint conversion, timm registration."
import math, os
import pytest
import torch
import torch.nn.functional as F
import timm
import vlmssm.ssm_cross as ssm_cross
from vlmssm.ssm import selective_scan_ref
from vlmssm.ssm_cross import SS2D, parse_forward_type
from vlmssm.backbones.core import WeightsError
import vlmssm.backbones.vmamba as vm
from vlmssm.backbones.vmamba import (VSSM, VMambaWeightsUnavailable, checkpoint_filter_fn, feature_to_tokens,
                                     load_vmamba_checkpoint)
from vlmssm.test_utils import check_load_pretrained

@pytest.fixture(autouse=True, scope="module")
def _timm_registry_points_at_the_module():
    "tests/test_notebooks.py runs nbs/04a in this process, which re-registers the notebook's own copies; undo that."
    import warnings, vlmssm.backbones.vmamba as V
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in V.__all__:
            if name.startswith("vmamba_"): timm.models.register_model(getattr(V, name))
    yield

# ---------------------------------------------------------------------------------------------------------------------
# Official configurations (backbones.md §1.2): hyper-parameters and parameter counts incl. the 1000-class head.
V2 = dict(ssm_d_state=1, ssm_conv_bias=False, forward_type="v05_noz", mlp_ratio=4.0, norm_layer="ln2d",
          downsample_version="v3", patchembed_version="v2")
OFFICIAL = {  # name: (dims, depths, ssm_ratio, d_state, v0, params)
    "vmamba_tiny_s1l8": (96, (2, 2, 8, 2), 1.0, 1, False, 30_249_064),
    "vmamba_tiny_s2l5": (96, (2, 2, 5, 2), 2.0, 1, False, 30_705_832),
    "vmamba_small_s2l15": (96, (2, 2, 15, 2), 2.0, 1, False, 50_147_752),
    "vmamba_base_s2l15": (128, (2, 2, 15, 2), 2.0, 1, False, 88_557_800),
    "vmamba_small_s1l20": (96, (2, 2, 20, 2), 1.0, 1, False, 49_012_840),
    "vmamba_base_s1l20": (128, (2, 2, 20, 2), 1.0, 1, False, 86_614_504),
    "vmamba_tiny_vanilla": (96, (2, 2, 9, 2), 2.0, 16, True, 22_893_448),
    "vmamba_small_vanilla": (96, (2, 2, 27, 2), 2.0, 16, True, 44_417_416),
    "vmamba_base_vanilla": (128, (2, 2, 27, 2), 2.0, 16, True, 76_254_056),
}

def release_keys(d, depths, ratio, N, v0, num_classes=1000):
    "The release checkpoints' key -> shape table, written out from backbones.md §1.3/§1.5/§1.6 (not from the model)."
    C = [d * 2 ** i for i in range(4)]
    out = {}
    if v0: out.update({"patch_embed.0.weight": (C[0], 3, 4, 4), "patch_embed.0.bias": (C[0],),
                       "patch_embed.2.weight": (C[0],), "patch_embed.2.bias": (C[0],)})
    else:
        for i, (c, cin) in zip((0, 5), ((C[0] // 2, 3), (C[0], C[0] // 2))):
            out.update({f"patch_embed.{i}.weight": (c, cin, 3, 3), f"patch_embed.{i}.bias": (c,),
                        f"patch_embed.{i + 2}.weight": (c,), f"patch_embed.{i + 2}.bias": (c,)})
    for i in range(4):
        c, Di, R = C[i], int(ratio * C[i]), math.ceil(C[i] / 16)
        for j in range(depths[i]):
            p = f"layers.{i}.blocks.{j}."
            out.update({p + "norm.weight": (c,), p + "norm.bias": (c,), p + "op.x_proj_weight": (4, R + 2 * N, Di),
                        p + "op.A_logs": (4 * Di, N), p + "op.Ds": (4 * Di,), p + "op.dt_projs_weight": (4, Di, R),
                        p + "op.dt_projs_bias": (4, Di), p + "op.out_norm.weight": (Di,), p + "op.out_norm.bias": (Di,),
                        p + "op.in_proj.weight": ((2 if v0 else 1) * Di, c), p + "op.conv2d.weight": (Di, 1, 3, 3),
                        p + "op.out_proj.weight": (c, Di)})
            if v0: out[p + "op.conv2d.bias"] = (Di,)
            else: out.update({p + "norm2.weight": (c,), p + "norm2.bias": (c,), p + "mlp.fc1.weight": (4 * c, c),
                              p + "mlp.fc1.bias": (4 * c,), p + "mlp.fc2.weight": (c, 4 * c), p + "mlp.fc2.bias": (c,)})
        if i < 3:
            p = f"layers.{i}.downsample."
            if v0: out.update({p + "norm.weight": (4 * c,), p + "norm.bias": (4 * c,), p + "reduction.weight": (2 * c, 4 * c)})
            else: out.update({p + "1.weight": (2 * c, c, 3, 3), p + "1.bias": (2 * c,), p + "3.weight": (2 * c,), p + "3.bias": (2 * c,)})
    out.update({"classifier.norm.weight": (C[3],), "classifier.norm.bias": (C[3],),
                "classifier.head.weight": (num_classes, C[3]), "classifier.head.bias": (num_classes,)})
    return out

def meta_model(name, **kw):
    with torch.device("meta"): return timm.create_model(name, **kw)

@pytest.mark.parametrize("name", list(OFFICIAL))
def test_release_keys_shapes_and_param_counts(name):
    d, depths, ratio, N, v0, params = OFFICIAL[name]
    m = meta_model(name)
    expected = release_keys(d, depths, ratio, N, v0)
    got = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert got == expected                                                        # the classification form: release keys only
    assert sum(math.prod(s) for s in expected.values()) == params                 # the spec table is self-consistent
    assert sum(p.numel() for p in m.parameters()) == params
    bb = meta_model(name, out_norms=(0, 1, 2, 3))                                # the authors' dense Backbone_VSSM form
    assert {k: tuple(v.shape) for k, v in bb.state_dict().items() if k.startswith("outnorm")} == \
        {f"outnorm{i}.{p}": (d * 2 ** i,) for i in range(4) for p in ("weight", "bias")}

def test_small_s2l15_matches_the_402_tensor_list():
    got = {k: tuple(v.shape) for k, v in meta_model("vmamba_small_s2l15").state_dict().items() if not k.startswith("outnorm")}
    assert len(got) == 402
    sample = {"patch_embed.0.weight": (48, 3, 3, 3), "patch_embed.5.weight": (96, 48, 3, 3), "patch_embed.7.bias": (96,),
              "layers.2.blocks.0.op.x_proj_weight": (4, 26, 768), "layers.2.blocks.0.op.A_logs": (3072, 1),
              "layers.2.blocks.0.op.Ds": (3072,), "layers.2.blocks.0.op.dt_projs_weight": (4, 768, 24),
              "layers.2.blocks.0.op.dt_projs_bias": (4, 768), "layers.2.blocks.0.op.in_proj.weight": (768, 384),
              "layers.2.blocks.0.op.conv2d.weight": (768, 1, 3, 3), "layers.2.blocks.0.op.out_proj.weight": (384, 768),
              "layers.2.blocks.0.mlp.fc1.weight": (1536, 384), "layers.2.blocks.0.mlp.fc2.weight": (384, 1536),
              "layers.0.downsample.1.weight": (192, 96, 3, 3), "layers.2.downsample.1.weight": (768, 384, 3, 3),
              "layers.0.blocks.0.op.x_proj_weight": (4, 8, 192), "layers.0.blocks.0.op.dt_projs_weight": (4, 192, 6),
              "layers.0.blocks.0.op.A_logs": (768, 1), "classifier.head.weight": (1000, 768)}
    assert {k: got[k] for k in sample} == sample
    assert not any(k.startswith("layers.3.downsample") or "conv2d.bias" in k for k in got)

# ---------------------------------------------------------------------------------------------------------------------
# Token counts: the real VMamba-S architecture on the meta device, with the (value-only) scan replaced by identity.
@pytest.fixture
def shape_only_scan(monkeypatch):
    monkeypatch.setattr(ssm_cross, "selective_scan", lambda u, *a, **k: u)

def test_stage3_tokens_of_vmamba_small(shape_only_scan):
    m = meta_model("vmamba_small_s2l15")
    for hw, grid in (((224, 224), (14, 14)), ((800, 1333), (50, 84)), ((512, 512), (32, 32))):
        feat = m.forward_tap(torch.empty(1, 3, *hw, device="meta"), stage=3, layer=14)
        assert tuple(feat.shape) == (1, 384, *grid) and m.tap_grid(hw, 3) == grid
        assert tuple(feature_to_tokens(feat).shape) == (1, grid[0] * grid[1], 384)
    # 4200, not the 4150 the authors' num_patches formula gives (floor(1333/4 / 4) = 83 columns)
    assert math.prod(m.tap_grid((800, 1333), 3)) == 4200

def test_odd_nonsquare_input_on_a_real_tiny_model():
    # same stride arithmetic as VMamba-S (v2 stem, v3 downsample); stages 1-2 without blocks keep the scan short
    m = VSSM(dims=8, depths=(0, 0, 1, 0), ssm_d_state=1, ssm_ratio=1.0, forward_type="v05_noz", ssm_conv_bias=False,
             norm_layer="ln2d", downsample_version="v3", patchembed_version="v2", mlp_ratio=1.0).eval()
    with torch.no_grad(): feat = m.forward_tap(torch.randn(1, 3, 800, 1333), stage=3)
    assert tuple(feat.shape) == (1, 32, 50, 84) and feature_to_tokens(feat).shape == (1, 4200, 32)
    v0 = timm.create_model("vmamba_test_vanilla", num_classes=3).eval()              # v1 stem floors, merging pads
    with torch.no_grad(): f = v0.forward_intermediates(torch.randn(1, 3, 45, 70), intermediates_only=True)
    assert [tuple(t.shape[-2:]) for t in f] == [(11, 17), (6, 9), (3, 5), (2, 3)]
    assert [v0.tap_grid((45, 70), s) for s in (1, 2, 3, 4)] == [(11, 17), (6, 9), (3, 5), (2, 3)]

# ---------------------------------------------------------------------------------------------------------------------
def randomized(name="vmamba_test", seed=0, **kw):
    "A small registered model with every parameter moved off its init (so loading mistakes show)."
    torch.manual_seed(seed)
    m = timm.create_model(name, **kw).eval()
    with torch.no_grad():
        for p in m.parameters(): p.add_(0.1 * torch.randn_like(p))
    return m

X = torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(1))

def test_forward_tap_equals_blocks_then_outnorm():
    m = randomized(out_norms=(0, 1, 2, 3))
    with torch.no_grad():
        for i in range(4): getattr(m, f"outnorm{i}").weight.normal_()
        x = m.patch_embed(X)
        stage_in = []
        for layer in m.layers: stage_in.append(x); x = layer.downsample(layer.blocks(x))
        for stage, layer in ((3, None), (3, -1), (3, 0), (3, -2), (1, 0), (4, None), (2, 0)):
            si = stage - 1
            j = len(m.layers[si].blocks) - 1 if layer is None else layer % len(m.layers[si].blocks)
            h = stage_in[si]
            for blk in m.layers[si].blocks[:j + 1]: h = blk(h)
            torch.testing.assert_close(m.forward_tap(X, stage, layer), getattr(m, f"outnorm{si}")(h), rtol=0, atol=0)
    with pytest.raises(ValueError, match="stage must be 1..4"): m.forward_tap(X, 5)
    with pytest.raises(ValueError, match="layer 2 out of range for stage 3 with 2 blocks"): m.forward_tap(X, 3, 2)

def test_identical_outputs_for_identical_inputs():
    m = randomized()
    with torch.no_grad():
        a, b = m(X), m(X.clone())
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(m(X[1:]), a[1:], rtol=1e-4, atol=1e-5)           # batch members are independent
        m2 = randomized()
        torch.testing.assert_close(m2(X), a, rtol=0, atol=0)                         # same seed, same model

# ---------------------------------------------------------------------------------------------------------------------
# Independent re-derivation of SS2D (v05_noz and z-gated) from backbones.md §1.4 / §1.6.
def ss2d_by_hand(op: SS2D, x, gated: bool):
    Di, N, R = op.d_inner, op.d_state, op.dt_rank
    B, _, H, W = x.shape
    L = H * W
    ln = lambda t, mod: F.layer_norm(t.permute(0, 2, 3, 1), (t.shape[1],), mod.weight, mod.bias, 1e-5).permute(0, 3, 1, 2)
    u = F.conv2d(x, op.in_proj.weight[:, :, None, None])
    if gated: u, z = u[:, :Di], F.silu(u[:, Di:])
    u = F.silu(F.conv2d(u, op.conv2d.weight, op.conv2d.bias, padding=1, groups=Di))
    row, col = u.reshape(B, Di, L), u.transpose(2, 3).reshape(B, Di, L)
    seqs = [row, col, torch.flip(row, [-1]), torch.flip(col, [-1])]
    y = torch.zeros(B, Di, L)
    for k, s in enumerate(seqs):
        proj = torch.einsum("cd,bdl->bcl", op.x_proj_weight[k], s)
        dt = torch.einsum("dr,brl->bdl", op.dt_projs_weight[k], proj[:, :R])
        ks = slice(k * Di, (k + 1) * Di)
        out = selective_scan_ref(s, dt, -torch.exp(op.A_logs[ks]), proj[:, R:R + N], proj[:, R + N:], D=op.Ds[ks],
                                 delta_bias=op.dt_projs_bias[k], delta_softplus=True)
        if k >= 2: out = torch.flip(out, [-1])
        if k % 2 == 1: out = out.reshape(B, Di, W, H).transpose(2, 3).reshape(B, Di, L)
        y = y + out
    y = ln(y.reshape(B, Di, H, W), op.out_norm)
    if gated: y = y * z
    return F.conv2d(y, op.out_proj.weight[:, :, None, None])

@pytest.mark.parametrize("forward_type,d_state,ratio", [("v05_noz", 1, 2.0), ("v05_noz", 3, 1.0), ("v0", 4, 2.0), ("v2", 2, 1.5)])
def test_ss2d_matches_a_re_derivation(forward_type, d_state, ratio):
    torch.manual_seed(0)
    op = SS2D(12, d_state=d_state, ssm_ratio=ratio, forward_type=forward_type, conv_bias=forward_type != "v05_noz",
              initialize="v1", backend="ref").eval()
    with torch.no_grad():
        for p in op.parameters(): p.add_(0.1 * torch.randn_like(p))
        x = torch.randn(2, 12, 5, 7)                                                  # non-square: catches H/W swaps
        torch.testing.assert_close(op(x), ss2d_by_hand(op, x, gated=forward_type != "v05_noz"), rtol=1e-4, atol=1e-5)

def test_block_matches_a_re_derivation():
    m = randomized()
    blk, x = m.layers[1].blocks[0], torch.randn(1, 32, 6, 5)
    ln = lambda t, mod: F.layer_norm(t.permute(0, 2, 3, 1), (t.shape[1],), mod.weight, mod.bias, 1e-5).permute(0, 3, 1, 2)
    with torch.no_grad():
        h = x + blk.op(ln(x, blk.norm))
        mlp = lambda t: F.conv2d(F.gelu(F.conv2d(t, blk.mlp.fc1.weight[..., None, None], blk.mlp.fc1.bias)),
                                 blk.mlp.fc2.weight[..., None, None], blk.mlp.fc2.bias)
        torch.testing.assert_close(blk(x), h + mlp(ln(h, blk.norm2)), rtol=1e-5, atol=1e-6)

def test_backends_and_forward_types():
    m = randomized()
    with torch.no_grad():
        ref = m.set_ssm_backend("ref")(X)
        torch.testing.assert_close(m.set_ssm_backend("torch")(X), ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="unknown selective-scan backend 'fastest'"): m.set_ssm_backend("fastest")
    with pytest.raises(ValueError, match="unsupported forward_type 'v052d_noz'"): VSSM(forward_type="v052d_noz")
    assert parse_forward_type("v05_noz").z is False and parse_forward_type("v0").z is True
    with pytest.raises(TypeError, match="depht"): VSSM(depht=(1, 1, 1, 1))

def test_classification_form_tap_is_the_untrained_outnorm():
    "Without carried outnorms the tap applies what an identity-initialised outnorm applies (stage 4: classifier.norm), bit for bit."
    m = randomized()
    bb = timm.create_model("vmamba_test", out_norms=(0, 1, 2, 3)).eval()
    assert bb.load_state_dict(m.state_dict(), strict=False).missing_keys == [f"outnorm{i}.{p}" for i in range(4) for p in ("weight", "bias")]
    with torch.no_grad():
        bb.outnorm3.load_state_dict(m.classifier.norm.state_dict())             # what the checkpoint filter fills
        for stage in (1, 2, 3, 4):
            torch.testing.assert_close(m.forward_tap(X, stage), bb.forward_tap(X, stage), rtol=0, atol=0)
        h = m.forward_intermediates(X, indices=[2], intermediates_only=True)[0]
        expect = F.layer_norm(h.permute(0, 2, 3, 1), (64,), eps=1e-5).permute(0, 3, 1, 2)
        torch.testing.assert_close(m.forward_tap(X, 3), expect, rtol=0, atol=0)   # an untrained LN is not the identity

def test_global_pool_empty_means_no_pooling():
    m = randomized(num_classes=0, global_pool="")
    with torch.no_grad():
        f = m.forward_features(X)
        torch.testing.assert_close(m(X), m.classifier.norm(f), rtol=0, atol=0)    # normed, unpooled map
        m.reset_classifier(3, "avg"); assert m(X).shape == (2, 3)
        m.reset_classifier(0, ""); assert m(X).shape == f.shape
    with pytest.raises(ValueError, match="global_pool='avg' or ''"): m.reset_classifier(0, "max")

# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints
def official_state(m):
    "The model's weights as a release checkpoint has them: no outnorms."
    return {k: v.clone() for k, v in m.state_dict().items() if not k.startswith("outnorm")}

def assert_same_outputs(a, b, x=X):
    with torch.no_grad(): torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)

def test_release_file_loads_strict_into_the_classifier():
    "An official classification state dict (training-code layout) is exactly the default model's: strict load_state_dict."
    src = randomized(seed=0)
    dst = VSSM(dims=16, depths=(1, 1, 2, 1), ssm_ratio=1.0, **vm._V2).eval()     # the official constructor kwargs
    dst.load_state_dict(official_state(src), strict=True)
    assert_same_outputs(src, dst)
    assert checkpoint_filter_fn({"model": official_state(src)}, dst).keys() == dst.state_dict().keys()

def test_release_layout_round_trip():
    src, dst = randomized(seed=0), randomized(seed=1, out_norms=(0, 1, 2, 3))
    rep = load_vmamba_checkpoint(dst, {"model": official_state(src), "optimizer": {}, "epoch": 3})
    assert_same_outputs(src, dst)
    assert set(rep.filled) == {f"outnorm{i}.{p}" for i in range(4) for p in ("weight", "bias")}
    assert rep.filled["outnorm3.weight"] == "classifier.norm.weight"                 # the authors' stage-4 tap
    torch.testing.assert_close(dst.outnorm3.weight, src.classifier.norm.weight)
    torch.testing.assert_close(dst.outnorm2.weight, torch.ones(64))                  # untrained LN for stage 3
    torch.testing.assert_close(dst.outnorm2.bias, torch.zeros(64))

def test_single_file_layout_and_legacy_names():
    src, dst = randomized(seed=0), randomized(seed=1)
    sd = {"module." + k: v for k, v in official_state(src).items()}
    for k in [k for k in sd if k.endswith(("op.x_proj_weight", "op.dt_projs_weight"))]:
        v = sd.pop(k)
        sd[k.replace("_weight", ".weight")] = v.flatten(0, 1)                        # (K*(R+2N), Di) / (K*Di, R)
    for k in [k for k in sd if k.endswith("op.in_proj.weight")]: sd[k] = sd[k][..., None, None]  # conv-style 1x1
    sd = {k.replace("module.classifier.", "module."): v for k, v in sd.items()}     # legacy top-level norm/head
    assert "module.layers.0.blocks.0.op.x_proj.weight" in sd and "module.norm.weight" in sd and "module.head.bias" in sd
    load_vmamba_checkpoint(dst, sd)
    assert_same_outputs(src, dst)

def test_legacy_v0_names():
    src, dst = randomized("vmamba_test_vanilla", 0, num_classes=7), randomized("vmamba_test_vanilla", 1, num_classes=7)
    sd = official_state(src)
    legacy = {}
    for k, v in sd.items():                                                          # the Jan-2024 training code's names
        k2 = k.replace("patch_embed.0.", "patch_embed.proj.").replace("patch_embed.2.", "patch_embed.norm.")
        k2 = k2.replace("classifier.", "").replace(".op.", ".self_attention.")
        if ".blocks." in k2: k2 = k2.replace(".norm.", ".ln_1.")
        legacy[k2] = v
    assert {"patch_embed.proj.weight", "layers.0.blocks.0.ln_1.weight", "layers.0.blocks.0.self_attention.A_logs",
            "layers.0.downsample.reduction.weight", "norm.weight", "head.weight"} <= set(legacy)
    load_vmamba_checkpoint(dst, {"model": legacy})
    assert_same_outputs(src, dst)
    single = {k.replace("downsample.norm.", "downsample.1.").replace("downsample.reduction.", "downsample.2."): v
              for k, v in sd.items()}                                                # single-file PatchMerge keys
    dst2 = randomized("vmamba_test_vanilla", 2, num_classes=7)
    load_vmamba_checkpoint(dst2, single)
    assert_same_outputs(src, dst2)

def test_mmdet_checkpoint_with_trained_outnorm():
    src, dst = randomized(seed=0), randomized(seed=1, num_classes=0, out_norms=(0, 1, 2, 3))
    w, b = torch.rand(64) + 0.5, torch.randn(64)
    bb = {k: v for k, v in official_state(src).items() if not k.startswith("classifier")}
    ckpt = {"meta": {"epoch": 12}, "state_dict": {**{"backbone." + k: v for k, v in bb.items()},
                                                  "backbone.outnorm2.weight": w, "backbone.outnorm2.bias": b,
                                                  "neck.lateral_convs.0.conv.weight": torch.zeros(8, 64, 1, 1),
                                                  "rpn_head.rpn_conv.weight": torch.zeros(8, 8, 3, 3)}}
    rep = load_vmamba_checkpoint(dst, ckpt)
    assert "classifier.norm.weight" in rep.filled and not any(k.startswith(("neck", "rpn")) for k in dst.state_dict())
    with torch.no_grad():
        stage3 = src.forward_intermediates(X, indices=[2], stop_early=True, intermediates_only=True)[0]
        expect = F.layer_norm(stage3.permute(0, 2, 3, 1), (64,), w, b, 1e-5).permute(0, 3, 1, 2)
        torch.testing.assert_close(dst.forward_tap(X, 3), expect, rtol=1e-5, atol=1e-5)
    assert checkpoint_filter_fn(ckpt, dst)["outnorm2.weight"] is w                   # pure function, usable by timm
    dst.load_state_dict(checkpoint_filter_fn(ckpt, dst), strict=True)               # strict into the backbone form

def test_mismatched_checkpoint_is_one_clear_line():
    small = official_state(meta_model("vmamba_test", ssm_ratio=2.0))
    with pytest.raises(WeightsError) as e:
        load_vmamba_checkpoint(randomized(), {"model": small})
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("checkpoint does not fit VSSM(dims=[16, 32, 64, 128]")
    assert "50 shape mismatches (layers.0.blocks.0.op.x_proj_weight: checkpoint [4, 3, 32] vs model [4, 3, 16]" in msg
    part = {k: v for k, v in official_state(randomized()).items() if not k.startswith("layers.3")}
    with pytest.raises(WeightsError, match=r"missing \(layers\.3\.blocks\.0\.norm\.weight \[128\]"):
        load_vmamba_checkpoint(randomized(), part)
    rep = load_vmamba_checkpoint(randomized(), {**part, "extra.weight": torch.zeros(1)}, strict=False)
    assert rep.missing[0] == "layers.3.blocks.0.norm.weight" and rep.unexpected == ["extra.weight"]

def test_files_safetensors_and_weights_only(tmp_path):
    from safetensors.torch import save_file
    src = randomized()
    save_file(official_state(src), tmp_path / "w.safetensors")
    torch.save({"model": official_state(src)}, tmp_path / "w.pth")
    for f in ("w.safetensors", "w.pth"):
        dst = randomized(seed=5)
        load_vmamba_checkpoint(dst, tmp_path / f)
        assert_same_outputs(src, dst)
    torch.save({"model": official_state(src), "config": _TrainingConfig(epochs=300)}, tmp_path / "cfg.pth")
    with pytest.raises(WeightsError, match="cfg.pth: refusing to unpickle .*_TrainingConfig.*allow_unsafe_pickle=True") as e:
        load_vmamba_checkpoint(randomized(seed=5), tmp_path / "cfg.pth")
    assert "\n" not in str(e.value)
    dst = randomized(seed=5)
    with pytest.warns(UserWarning, match="allow_unsafe_pickle=True"): dst.load_pretrained(tmp_path / "cfg.pth", allow_unsafe_pickle=True)
    assert_same_outputs(src, dst)
    with pytest.raises(WeightsError, match="weights file not found: .*no.pth"): load_vmamba_checkpoint(dst, tmp_path / "no.pth")
    with pytest.raises(WeightsError, match=r"^checkpoint .*w.pth does not fit VSSM"): load_vmamba_checkpoint(randomized(num_classes=0, ssm_ratio=2.0), tmp_path / "w.pth")

def test_load_pretrained_every_layout_and_every_broken_file(tmp_path):
    src = randomized()
    def load(path):
        m = randomized(seed=5); m.load_pretrained(path); return m
    check_load_pretrained(load, lambda m: assert_same_outputs(src, m), tmp_path, official_state(src))

class _TrainingConfig:  # stands in for the yacs config some training checkpoints pickle next to the weights
    def __init__(self, **kw): self.__dict__.update(kw)

# ---------------------------------------------------------------------------------------------------------------------
# timm integration
def test_timm_registry_and_pretrained_cfgs():
    names = timm.list_models("vmamba_*")
    assert set(OFFICIAL) | {"vmamba_pico", "vmamba_test", "vmamba_test_vanilla"} <= set(names)
    cfg = timm.models.get_pretrained_cfg("vmamba_small_s2l15.in1k")
    assert cfg.url == "https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm_small_0229_ckpt_epoch_222.pth"
    assert (cfg.crop_pct, cfg.interpolation, cfg.input_size, cfg.mean) == (0.875, "bicubic", (3, 224, 224), (0.485, 0.456, 0.406))
    assert timm.models.get_pretrained_cfg("vmamba_small_s2l15.coco_maskrcnn_1x").num_classes == 0
    assert timm.models.get_pretrained_cfg("vmamba_tiny_vanilla.in1k").url.endswith("%23v0cls/vssmtiny_dp01_ckpt_epoch_292.pth")

def test_pretrained_offline_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))                # nothing cached
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")             # a dead proxy: offline even where there is a network
    monkeypatch.delenv("no_proxy", raising=False); monkeypatch.delenv("NO_PROXY", raising=False)
    with pytest.raises(VMambaWeightsUnavailable) as e:
        timm.create_model("vmamba_small_s2l15", pretrained=True)
    msg = str(e.value)
    assert "\n" not in msg and "https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm_small_0229_ckpt_epoch_222.pth" in msg
    assert "pretrained_cfg_overlay=dict(file='/path/to/vssm_small_0229_ckpt_epoch_222.pth')" in msg
    with pytest.raises(VMambaWeightsUnavailable, match="pretrained file not found"):
        timm.create_model("vmamba_test", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "missing.pth")))

def test_pretrained_from_a_local_file(tmp_path):
    src = randomized()
    sd = {k.replace("classifier.", ""): v for k, v in official_state(src).items()}   # legacy names, release layout
    torch.save({"model": sd, "epoch": 1}, tmp_path / "vmamba_test.pth")
    for overlay in (dict(file=str(tmp_path / "vmamba_test.pth")), dict(file=str(tmp_path / "vmamba_test.pth"), custom_load=True)):
        m = timm.create_model("vmamba_test", pretrained=True, pretrained_cfg_overlay=overlay).eval()
        assert_same_outputs(src, m)
    m = timm.create_model("vmamba_test", pretrained=True, num_classes=3, pretrained_cfg_overlay=dict(file=str(tmp_path / "vmamba_test.pth")))
    assert m.get_classifier().out_features == 3
    torch.testing.assert_close(m.layers[2].blocks[1].op.A_logs, src.layers[2].blocks[1].op.A_logs)

def test_timm_feature_api_contract():
    m = randomized()
    with torch.no_grad():
        final, feats = m.forward_intermediates(X)
        torch.testing.assert_close(final, m.forward_features(X), rtol=0, atol=0)
        for f, info in zip(feats, m.feature_info):
            assert f.shape[1] == info["num_chs"] and X.shape[-2] // f.shape[-2] == info["reduction"]  # H=64 divides
        normed = m.forward_intermediates(X, indices=2, norm=True, output_fmt="NHWC", intermediates_only=True)
        torch.testing.assert_close(normed[0], m.forward_tap(X, 3).permute(0, 2, 3, 1))
        assert m.forward_head(final, pre_logits=True).shape == (2, 128)
        fx = timm.create_model("vmamba_test", features_only=True, out_indices=(1, 2)).eval()
        assert [t.shape[1] for t in fx(X)] == [32, 64] and fx.feature_info.channels() == [32, 64]
    m.prune_intermediate_layers(indices=(2,), prune_head=True)
    assert len(m.layers) == 3 and not hasattr(m, "outnorm3") and isinstance(m.classifier.head, torch.nn.Identity)
    m.reset_classifier(4)
    with torch.no_grad(): assert m(X).shape == (2, 4)

def test_grad_checkpointing_same_output_and_grads():
    m = timm.create_model("vmamba_test", num_classes=3)
    x = torch.randn(1, 3, 32, 32)
    m.eval()
    y0 = m(x); y0.sum().backward()
    g0 = m.layers[0].blocks[0].op.A_logs.grad.clone(); m.zero_grad()
    m.set_grad_checkpointing(True)
    y1 = m(x); y1.sum().backward()
    torch.testing.assert_close(y1, y0, rtol=0, atol=0)
    torch.testing.assert_close(m.layers[0].blocks[0].op.A_logs.grad, g0)
    m2 = timm.create_model("vmamba_test", num_classes=3, use_checkpoint=True)
    assert all(b.use_checkpoint for layer in m2.layers for b in layer.blocks)

def test_pico_for_the_cpu_study():
    m = timm.create_model("vmamba_pico", num_classes=0).eval()
    assert 300_000 <= sum(p.numel() for p in m.parameters()) <= 600_000
    with torch.no_grad():
        for px, grid in ((64, 4), (96, 6)):
            assert tuple(m.forward_tap(torch.randn(1, 3, px, px), 3).shape) == (1, 96, grid, grid)
