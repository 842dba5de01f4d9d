"vlmssm.train / cache: the recipe, exact resume after a real kill, accumulation, learning signal, feature cache (CPU semantics: device='cpu')."
import json, os, signal, subprocess, sys, time
from dataclasses import replace
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
import torch
from vlmssm.config import TrainConfig
from vlmssm.test_utils import COLOURS, QUESTION, FixtureEncoder, colour_pixels as pixels, colour_records as records, fixture_tokenizer as tokenizer, tiny_vlm

CFG = TrainConfig(steps=12, global_batch=16, per_device_batch=8, lr=3e-3, weight_decay=0.0, save_every=2, precision="fp32")  # float comparisons: one precision on every CPU
from vlmssm.cache import FeatureCache
from vlmssm.train import ConversationDataset, epoch_batches, param_groups, train

HERE = Path(__file__).parent

@pytest.fixture(scope="module")
def tok(): return tokenizer()

def _run(tok, out, cfg=CFG, **kw):
    v = tiny_vlm(tok)
    s = train(v, ConversationDataset(records(48), v.fmt), cfg, out, pixels=pixels, progress=False, device="cpu", **kw)
    return v, s

KILL_SCRIPT = """
import time
from dataclasses import replace
from vlmssm.config import TrainConfig
from vlmssm.test_utils import colour_pixels as pixels, colour_records as records, fixture_tokenizer as tokenizer, tiny_vlm
CFG = TrainConfig(steps=12, global_batch=16, per_device_batch=8, lr=3e-3, weight_decay=0.0, save_every=2)
from vlmssm.train import ConversationDataset, train
v = tiny_vlm(tokenizer())
CFG = replace(CFG, precision={precision!r})
def slow(state):
    if state["step"] >= 4: time.sleep(0.5)   # widen the window in which the test kills the process
train(v, ConversationDataset(records(48), v.fmt), CFG, {out!r}, pixels=pixels, progress=False, callbacks=[slow], device="cpu")
"""

@pytest.mark.parametrize("precision", ["fp32", "bf16"])  # the default preset trains with bf16 autocast on CPU
def test_resume_after_sigkill_is_identical(tok, tmp_path, precision):
    "A run killed with SIGKILL mid-training and resumed ends with the same weights, loss curve and answers."
    cfg = replace(CFG, precision=precision)
    full, sf = _run(tok, tmp_path / "full", cfg=cfg)
    assert sf["bf16"] == (precision == "bf16")
    out = tmp_path / "killed"
    p = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT.format(here=str(HERE), out=str(out), precision=precision)], env={**os.environ, "OMP_NUM_THREADS": "1"})
    t0 = time.time()
    while not ((out / "checkpoints" / "latest").exists() and (out / "checkpoints" / "latest").read_text() >= "step-000004"):
        assert p.poll() is None, "the training subprocess ended before it could be killed"
        assert time.time() - t0 < 240, "no checkpoint appeared"
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL); p.wait()
    assert not (out / "summary.json").exists()
    resumed, s = _run(tok, out, cfg=cfg, resume=True)
    for (n, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()): assert torch.equal(a, b), n
    f, r = pd.read_csv(tmp_path / "full" / "loss.csv"), pd.read_csv(out / "loss.csv")
    assert f.drop(columns="seconds").equals(r.drop(columns="seconds"))
    px = torch.stack([pixels(c) for c in COLOURS])
    assert full.generate([QUESTION] * 3, pixel_values=px, max_new_tokens=3) == resumed.generate([QUESTION] * 3, pixel_values=px, max_new_tokens=3)
    assert s["steps"] == cfg.steps and (out / "model" / "config.json").exists()

def test_precision_auto_is_bf16_only_with_native_bf16(tok, tmp_path):
    "`precision: auto` autocasts on a CPU with native bf16 and stays fp32 on one without; the run records which."
    from vlmssm.train import cpu_has_native_bf16
    _, s = _run(tok, tmp_path / "auto", cfg=replace(CFG, steps=2, save_every=0, precision="auto"), save_model=False)
    assert s["precision"] == ("bf16" if cpu_has_native_bf16() else "fp32") and s["bf16"] == (s["precision"] == "bf16")
    _, s = _run(tok, tmp_path / "fp32", cfg=replace(CFG, steps=2, save_every=0), save_model=False)
    assert s["precision"] == "fp32"

def test_checkpoint_contents_and_refusal(tok, tmp_path):
    _run(tok, tmp_path / "r", cfg=replace(CFG, steps=4))
    ck = tmp_path / "r" / "checkpoints"
    d = ck / (ck / "latest").read_text()
    assert {p.name for p in d.iterdir()} == {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json"}
    for f in ("optimizer.pt", "scheduler.pt", "rng.pt"): torch.load(d / f, weights_only=True)
    assert len(list(ck.glob("step-*"))) == 1 and not list(ck.glob(".*"))          # old checkpoints pruned, no temp dirs left
    (tmp_path / "r" / "summary.json").unlink()
    with pytest.raises(ValueError, match="different config"): _run(tok, tmp_path / "r", cfg=replace(CFG, steps=4, lr=1e-2), resume=True)

def test_accumulation_matches_one_big_batch(tok, tmp_path):
    c = replace(CFG, steps=3, save_every=0)
    a, _ = _run(tok, tmp_path / "a", cfg=c, save_model=False)
    b, _ = _run(tok, tmp_path / "b", cfg=replace(c, per_device_batch=16), save_model=False)
    for x, y in zip(a.parameters(), b.parameters()): assert torch.allclose(x, y, atol=1e-5)

@pytest.mark.parametrize("option,passes", [({"length_split": 3}, "more"), ({"pack": True}, "same")])
def test_length_split_and_packing_keep_the_loss(tok, tmp_path, option, passes):
    "Length-homogeneous passes (`length_split`) and packed rows (`pack`) give the same updates as plain padded batches."
    recs = records(48)
    for r in recs[::3]: r["conversations"] = r["conversations"] * 12   # long, multi-turn records beside short ones
    c = replace(CFG, steps=3, save_every=0, per_device_batch=16)
    runs = {}
    for name, kw in (("plain", {}), ("option", option)):
        v = tiny_vlm(tok); calls, rows = [], []
        def count(m, a, kw, o, calls=calls, rows=rows): calls.append(1); rows.append(o.last_hidden_state.shape[0])
        v.lm.base_model.register_forward_hook(count, with_kwargs=True)
        data = ConversationDataset(recs, v.fmt)
        train(v, data, replace(c, **kw), tmp_path / name, pixels=pixels, progress=False, device="cpu", save_model=False)
        runs[name] = v, len(calls), sum(rows), pd.read_csv(tmp_path / name / "loss.csv")
    assert runs["plain"][1] == 3 and runs["plain"][2] == 48
    if passes == "more": assert runs["option"][1] > 3                  # several passes per step
    else: assert runs["option"][1] == 3 and runs["option"][2] < 48      # one pass per step, fewer rows
    for x, y in zip(runs["plain"][0].parameters(), runs["option"][0].parameters()): assert torch.allclose(x, y, atol=1e-5)
    assert np.allclose(runs["plain"][3].loss, runs["option"][3].loss, atol=1e-5)

def test_recipe_pieces(tok, tmp_path):
    v = tiny_vlm(tok); v.freeze("finetune", verbose=False)
    g = param_groups(v, 0.1)
    assert all(p.ndim >= 2 for p in g[0]["params"]) and all(p.ndim <= 1 for p in g[1]["params"]) and g[1]["weight_decay"] == 0
    assert sum(len(x["params"]) for x in g) == sum(p.requires_grad for p in v.parameters())
    _, s = _run(tok, tmp_path / "w", cfg=replace(CFG, steps=100, save_every=0, warmup_ratio=0.1, global_batch=48, per_device_batch=48), save_model=False)
    lr = pd.read_csv(tmp_path / "w" / "loss.csv").lr
    assert lr.iloc[0] == 0 and lr.iloc[10] == pytest.approx(3e-3) and lr.iloc[-1] < 1e-5 and lr.idxmax() == 10   # 3%-style warmup, cosine
    gn = pd.read_csv(tmp_path / "w" / "loss.csv").grad_norm
    assert np.isfinite(gn).all()

def test_batches_split_and_grouped():
    L, m = np.arange(40) % 13, np.arange(40) % 4 == 0
    bs = epoch_batches(L, m, 8, seed=1, epoch=0)
    assert sorted(sum(bs, [])) == list(range(40)) and all(len(set(m[b])) == 1 for b in bs)
    assert all((np.diff(L[b]) <= 0).all() for b in bs)

def test_images_are_used(tok, tmp_path):
    "On the colour task the VLM learns the answer from the image tokens; the blind baseline cannot."
    cfg = replace(CFG, steps=40, lr=5e-3, save_every=0)
    v = tiny_vlm(tok); train(v, ConversationDataset(records(48), v.fmt), cfg, tmp_path / "v", pixels=pixels, progress=False, save_model=False, device="cpu")
    px = torch.stack([pixels(c) for c in COLOURS])
    assert v.generate([QUESTION] * 3, pixel_values=px, max_new_tokens=3) == list(COLOURS)
    b = tiny_vlm(tok, blind=True)
    train(b, ConversationDataset(records(48), b.fmt, use_images=False), cfg, tmp_path / "b", progress=False, save_model=False, device="cpu")
    assert len(set(b.generate([QUESTION] * 3, max_new_tokens=3))) == 1

def test_cached_features_train_like_pixels(tok, tmp_path):
    "Training from the feature cache equals training from pixels (frozen encoder), and a hit equals a recompute."
    enc = FixtureEncoder()
    imgs = [np.asarray(pixels(c).permute(1, 2, 0).mul(255).byte()) for c in COLOURS]
    tf = lambda im: torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255
    c1 = FeatureCache(tmp_path / "c").features(enc, imgs, tf, "fixture", ids=list(COLOURS), progress=False)
    c2 = FeatureCache(tmp_path / "c").features(enc, imgs, tf, "fixture", ids=list(COLOURS), progress=False)
    c3 = FeatureCache(tmp_path / "c2").features(enc, imgs, tf, "fixture", ids=list(COLOURS), progress=False)
    assert (not c1.hit) and c2.hit and np.array_equal(c2.features, c3.features)
    cfg = replace(CFG, steps=4, save_every=0)
    a = tiny_vlm(tok); train(a, ConversationDataset(records(48), a.fmt), cfg, tmp_path / "a", features=c2, progress=False, save_model=False, device="cpu")
    b = tiny_vlm(tok); train(b, ConversationDataset(records(48), b.fmt), cfg, tmp_path / "b", pixels=pixels, progress=False, save_model=False, device="cpu")
    for x, y in zip(a.parameters(), b.parameters()): assert torch.allclose(x, y, atol=1e-5)
