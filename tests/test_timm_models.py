"""timm conformance of the vlmssm model families (VMamba, MambaVision, Vim), after timm's own `tests/test_models.py`
(huggingface/pytorch-image-models): the same checks, written here, run over the registry's cheap `*_test` variants
(and a few real architectures at a small input). What each family supports is declared in `KIND`; Vim is a plain
(ViT-like) token model, so it gets timm's "non-standard" checks, as timm's ViTs do."""
import fnmatch, math, os, time

os.environ.setdefault("OMP_NUM_THREADS", "1")
import pytest
import timm
import torch
from timm.layers import get_channel_dim, get_spatial_dim
from timm.models import FeatureInfo, get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import NodePathTracer, create_feature_extractor, get_graph_node_names

import vlmssm.backbones.mambavision, vlmssm.backbones.vim, vlmssm.backbones.vmamba  # noqa: F401  (registers the families)

torch.set_num_threads(1)

FAMILIES = ["vmamba_*", "mamba_vision_*", "vim_*"]
TEST_MODELS = timm.list_models([f + "test*" for f in FAMILIES])
NON_STD = ["vim_*"]                               # token (NLC) models: timm's non-standard checks, no multi-stage features
REAL = {"vmamba_tiny_s1l8": 64, "mamba_vision_T": 64, "vim_tiny": 64}   # real architectures, random weights, small input


def _non_std(name): return any(fnmatch.fnmatch(name, f) for f in NON_STD)


def _input_size(name, target=None):
    "timm's `_get_input_size` rule: the cfg's size, capped at `target` unless the size is fixed."
    cfg = timm.get_pretrained_cfg(name)
    size = cfg.input_size
    if cfg.fixed_input_size: return size
    return tuple(min(x, target) for x in size) if target else size


def _batch(name, b, target=None, seed=0):
    return torch.randn((b, *_input_size(name, target)), generator=torch.Generator().manual_seed(seed))


def test_registry_has_test_variants():
    "One cheap `*_test` model per family, registered with a default_cfg like the others (26k-510k parameters with the head)."
    for fam in FAMILIES:
        names = timm.list_models(fam + "test*")
        assert names, f"no test variant for {fam}"
        for n in names:
            assert timm.get_pretrained_cfg(n) is not None
            n_params = sum(p.numel() for p in timm.create_model(n).parameters())
            assert 1_000 <= n_params <= 600_000, (n, n_params)


@pytest.mark.parametrize("name", TEST_MODELS)
def test_model_forward(name):
    "Forward: batch kept, no NaNs; gradient checkpointing gives the same output."
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    x = _batch(name, 1, 384)
    out = model(x)
    assert out.shape[0] == 1 and not torch.isnan(out).any()
    model.set_grad_checkpointing()
    torch.testing.assert_close(model(x), out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", TEST_MODELS)
def test_model_backward(name):
    "Backward: every parameter gets a gradient (no unused parameters), 42 classes."
    model = timm.create_model(name, num_classes=42).train()
    out = model(_batch(name, 2, 128))
    out.mean().backward()
    for n, p in model.named_parameters(): assert p.grad is not None, f"No gradient for {n}"
    assert out.shape[-1] == 42 and not torch.isnan(out).any()


@pytest.mark.parametrize("name", timm.list_models([f + "test*" for f in FAMILIES], include_tags=True))
def test_model_default_cfgs(name):
    "forward_features / forward_head(pre_logits) / reset_classifier(0) / reset_classifier(0, '') / num_classes=0, global_pool=''."
    model = timm.create_model(name).eval()
    cfg, sd = model.default_cfg, model.state_dict()
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
    x = torch.randn((1, *cfg["input_size"]))
    feats = model.forward_features(x)
    pre = model.forward_head(feats, pre_logits=True)
    if _non_std(name): assert feats.shape[-1] == model.num_features
    else:
        (h, w), c = get_spatial_dim("NCHW"), get_channel_dim("NCHW")
        assert (feats.shape[h], feats.shape[w]) == tuple(cfg["pool_size"]), feats.shape
        assert feats.shape[c] == model.num_features
    assert pre.shape[1] == model.head_hidden_size
    model.reset_classifier(0)
    assert model.num_classes == 0
    out = model(x)
    assert out.shape == pre.shape and out.ndim == 2
    if not _non_std(name):
        model.reset_classifier(0, "")                      # no classifier, no pooling: the unpooled map
        assert tuple(model(x).shape[2:]) == tuple(cfg["pool_size"])
        m0 = timm.create_model(name, num_classes=0, global_pool="").eval()
        assert tuple(m0(x).shape[2:]) == tuple(cfg["pool_size"])
    else:
        assert timm.create_model(name, num_classes=0).eval()(x).shape[-1] == model.num_features
    for c in ([cfg["classifier"]] if cfg.get("num_classes") else []): assert c + ".weight" in sd
    assert cfg["first_conv"] + ".weight" in sd


def _check_feats(feats, info, size, b):
    assert len(info.channels()) == len(feats)
    for e, r, o in zip(info.channels(), info.reduction(), feats):
        assert o.shape[1] == e and o.shape[0] == b and not torch.isnan(o).any()
        assert o.shape[2] <= math.ceil(size[0] / r) + 1 and o.shape[3] <= math.ceil(size[1] / r) + 1


@pytest.mark.parametrize("name", [n for n in TEST_MODELS if not _non_std(n)])
@pytest.mark.parametrize("feature_cls", [None, "getter"])
def test_model_forward_features(name, feature_cls):
    "features_only=True (default and 'getter' wrappers): channels and strides as feature_info says, >= 3 levels."
    kw = {} if feature_cls is None else dict(feature_cls=feature_cls)
    model = timm.create_model(name, features_only=True, **kw).eval()
    assert len(model.feature_info.channels()) >= 3
    x = _batch(name, 1, 96)
    _check_feats(model(x), model.feature_info, x.shape[-2:], 1)


@pytest.mark.parametrize("name", [n for n in TEST_MODELS if not _non_std(n)])
def test_model_forward_intermediates(name):
    "forward_intermediates: one map per feature_info entry, final output == forward_features (also with checkpointing)."
    model = timm.create_model(name).eval()
    info = FeatureInfo(model.feature_info, len(model.feature_info))
    assert len(info.channels()) >= 3
    x = _batch(name, 1, 96)
    out, inter = model.forward_intermediates(x, output_fmt="NCHW")
    _check_feats(inter, info, x.shape[-2:], 1)
    torch.testing.assert_close(out, model.forward_features(x))
    model.set_grad_checkpointing()
    torch.testing.assert_close(model.forward_intermediates(x, output_fmt="NCHW")[0], out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", [n for n in TEST_MODELS if _non_std(n)])
def test_model_forward_intermediates_tokens(name):
    "Token models: forward_intermediates' final output == forward_features, one (B, D, h, w) map per block by default."
    model = timm.create_model(name).eval()
    x = _batch(name, 1, 96)
    out, inter = model.forward_intermediates(x)
    torch.testing.assert_close(out, model.forward_features(x))
    assert len(inter) == len(model.layers) and all(t.shape[:2] == (1, model.embed_dim) and t.ndim == 4 for t in inter)


def _fx_model(model, train=False):
    "timm's `_create_fx_model`: trace with timm's no-trace leaves, return the last node(s)."
    kw = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(), param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=kw)
    eval_ret, train_ret = [eval_nodes[-1]], [train_nodes[-1]]
    if train:
        graph = NodePathTracer(**kw).trace(model)
        nodes = list(reversed(graph.nodes))
        names = [n.name for n in nodes]
        train_ret = [train_nodes[-names.index(n.name)] for n in nodes[0]._input_nodes.keys()]
    return create_feature_extractor(model, train_return_nodes=train_ret, eval_return_nodes=eval_ret, tracer_kwargs=kw)


@pytest.mark.parametrize("name", TEST_MODELS)
def test_model_forward_fx(name):
    "FX: the traced model gives exactly the eager output (under inference_mode, as timm runs it)."
    model = timm.create_model(name).eval()
    with torch.inference_mode():
        x = _batch(name, 1, 128)
        out = model(x)
        fx_out = torch.cat(tuple(_fx_model(model)(x).values()))
    assert torch.equal(fx_out, out) and not torch.isnan(out).any()


@pytest.mark.parametrize("name", TEST_MODELS)
def test_model_backward_fx(name):
    "FX backward: the traced training graph reaches every parameter."
    model = timm.create_model(name, num_classes=42).train()
    n_params = sum(p.numel() for p in model.parameters())
    fx = _fx_model(model, train=True)
    out = torch.cat(tuple(fx(_batch(name, 2, 128)).values()))
    out.mean().backward()
    for n, p in fx.named_parameters(): assert p.grad is not None, f"No gradient for {n}"
    assert sum(p.grad.numel() for p in fx.parameters()) == n_params and out.shape[-1] == 42


@pytest.mark.parametrize("name,size", REAL.items())
def test_real_architectures_small_input(name, size):
    "The registered full-size architectures (random weights) run forward and forward_features at a small input."
    model = timm.create_model(name, **({"img_size": size} if name.startswith("vim") else {})).eval()
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode(): out = model(x)
    assert out.shape == (1, model.num_classes) and torch.isfinite(out).all()


# ------------------------------------------------------- checkpoint files (one contract for every family)
@pytest.mark.parametrize("name", TEST_MODELS)
def test_load_pretrained_every_layout_and_every_broken_file(name, tmp_path):
    "Each family's `load_pretrained` reads its weights in every layout a release or training script writes, and refuses every broken or hostile file with one `WeightsError` line naming it (`vlmssm.test_utils.check_load_pretrained`)."
    from vlmssm.test_utils import check_load_pretrained
    torch.manual_seed(0)
    src = timm.create_model(name).eval()
    with torch.no_grad():
        for p in src.parameters(): p.add_(0.01 * torch.randn_like(p))   # every tensor distinct from a fresh init
    x = torch.randn(1, *_input_size(name))
    def load(path):
        torch.manual_seed(1); m = timm.create_model(name).eval(); m.load_pretrained(path); return m
    def same(m):
        with torch.no_grad(): assert torch.equal(m(x), src(x))
    check_load_pretrained(load, same, tmp_path, src.state_dict())
