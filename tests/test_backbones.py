"The encoder zoo: registry contract over every id, token counts, weights, errors (vlmssm.backbones)."
import os, pickle, subprocess, sys, tempfile
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from vlmssm.backbones import (create_encoder, encoder_row, encoders_table, get_encoder_spec, list_encoders,
                              unavailable_encoders, UnknownEncoder, WeightsError, save_encoder)
from vlmssm.backbones.core import MetaUnsupported, meta_forward, read_checkpoint
from vlmssm.geometry import list_resize_strategies

os.environ.setdefault("VLMSSM_CACHE", tempfile.mkdtemp(prefix="vlmssm-test-cache-"))  # encoder-table rows: not in ~/.cache
ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ["letterbox", "resize-naive", "resize-crop", "fit-pad", "letterbox-square-48"]
PICO, REAL = list_encoders(pico=True), list_encoders(pico=False)
IMG = Image.fromarray(np.random.default_rng(0).integers(0, 255, (45, 131, 3), dtype=np.uint8))  # non-square, odd


def test_every_family_is_registered():
    fams = {get_encoder_spec(i).family for i in list_encoders()}
    need = {"ViT", "DeiT", "AugReg", "BEiT", "CLIP", "SigLIP", "DINOv2", "DINOv2+SigLIP", "MaxViT", "ViTDet", "Perceiver",
            "VMamba", "MambaVision", "Vim", "ViT-Adapter"}
    assert need <= fams, f"missing families {need - fams}; unavailable: {unavailable_encoders()}"
    for i in ["vit-s-in1k-224", "maxvit-t-in1k-224-s3", "mambavision-b-in1k-224-s3", "vmamba-s-in1k-224-s3", "vitdet-b-coco-1024",
              "vmamba-s-coco-1333x800", "vmamba-s-ade20k-512", "vit-adapter-deit-b-ade20k-512"]:
        assert i in REAL
    assert unavailable_encoders() == {}, unavailable_encoders()           # every encoder of the paper builds


@pytest.mark.parametrize("id", PICO)
def test_pico_contract(id):
    "Create, run a non-square image under every strategy; tokens match num_tokens; same input → same tokens."
    enc = create_encoder(id)
    assert not enc.training
    pc = enc.param_count()
    assert 0 < pc["tapped"] <= pc["total"] and 250_000 < pc["total"] < 1_200_000, pc
    for s in STRATEGIES:
        h, w = enc.input_size(s)
        if not enc.dynamic and (h, w) != enc.default_resolution:  # fixed position tables / windows: built at N for letterbox-square-N
            with pytest.raises(ValueError, match="only takes"): enc.transform(s)
            enc_n = create_encoder(id, resize=s)
            assert enc_n.default_resolution == (h, w)
            with torch.no_grad(): assert enc_n(enc_n.transform()(IMG)[None]).shape[1] == enc_n.num_tokens()
            continue
        x = enc.transform(s)(IMG)[None]
        assert x.shape == (1, enc.in_chans, h, w)
        with torch.no_grad(): t1, t2 = enc(x), enc(x.clone())
        assert t1.shape == (1, enc.num_tokens(h, w), enc.embed_dim), (s, t1.shape)
        assert torch.equal(t1, t2) and torch.isfinite(t1).all()
        g = enc.geometry(*IMG.size, strategy=s)
        assert np.allclose(g.to_original(g.to_input([[3, 4, 100, 40]])), [[3, 4, 100, 40]])


@pytest.mark.parametrize("id", REAL)
def test_real_encoder_contract_on_meta(id):
    "Build every real encoder without memory; tokens from the stride arithmetic equal a meta forward where one is possible."
    enc = create_encoder(id, device="meta")
    h, w = enc.default_resolution
    try:
        out, _ = meta_forward(enc)
        assert out.shape[1:] == (enc.num_tokens(), enc.embed_dim)
    except RuntimeError as e:                                  # data-dependent ops (SSM scans, Perceiver masks)
        assert "meta" in str(e)
    for s in list_resize_strategies()[:-1] + ["letterbox-square-64"]:
        if not enc.dynamic and enc.input_size(s) != enc.default_resolution: continue
        x = enc.transform(s)(IMG)
        assert x.shape == (enc.in_chans, *enc.input_size(s))


@pytest.mark.parametrize("id,res,tokens", [
    ("vit-s-in1k-224", None, 196), ("vit-b-in1k-224", None, 196), ("deit-b-in1k-224", None, 196), ("beit-b-in22k-ft-in1k-224", None, 196),
    ("clip-vit-l-336", None, 576), ("siglip-vit-so400m-384", None, 729), ("dinov2-vit-l-reg4-224", None, 256),
    ("dinosiglip-vit-so-224", None, 256), ("maxvit-t-in1k-224-s3", None, 196), ("maxvit-l-in1k-224-s3", None, 196),
    ("vitdet-b-coco-1024", None, 4096), ("vitdet-b-coco-1024", (512, 768), 1536), ("perceiver-learned-in1k-224", None, 512),
    ("mambavision-b-in1k-224-s3", None, 196), ("mambavision-b-in1k-224-s3", (512, 512), 1024),
    ("vmamba-s-in1k-224-s3", None, 196), ("vmamba-s-ade20k-512", None, 1024), ("vmamba-s-coco-1333x800", None, 4200),
    ("vmamba-s-in1k-224-s3", (800, 1333), 4200), ("vim-s-in1k-224", None, 196), ("vit-adapter-deit-b-ade20k-512", None, 1024),
    ("vit-adapter-deit-b-ade20k-512", (800, 1333), 50 * 84)])
def test_token_counts(id, res, tokens):
    enc = create_encoder(id, device="meta", resolution=res)
    assert enc.num_tokens() == tokens


@pytest.mark.parametrize("id,size", [("vmamba-pico", (50, 83)), ("vmamba-pico", (100, 167)), ("mambavision-pico", (50, 83)),
                                     ("vitdet-pico", (50, 83)), ("maxvit-pico", (64, 96)), ("vit-adapter-pico", (50, 83))])
def test_stride_arithmetic_matches_real_forward(id, size):
    "The analytic grid (e.g. VMamba's ceil-halving: 800×1333 → 50×84) equals a real forward at odd sizes."
    enc = create_encoder(id, resolution=size)
    with torch.no_grad(): n = enc(torch.randn(1, 3, *size)).shape[1]
    assert n == enc.num_tokens(*size)
    if id == "vmamba-pico": assert create_encoder("vmamba-s-coco-1333x800", device="meta").token_grid() == (50, 84)


def test_param_counts_are_exact():
    assert encoder_row("vit-s-in1k-224")["params_total"] == 22_050_664           # timm: vit_small_patch16_224 22.05M
    assert encoder_row("vmamba-s-in1k-224-s3")["params_total"] == 50_147_752 + 2 * (96 + 192 + 384 + 768)  # backbones.md + 4 outnorms
    assert encoder_row("mambavision-b-in1k-224-s3")["params_total"] == 97_685_288  # backbones.md §2.1
    r = encoder_row("mambavision-b-in1k-224-s3")                                   # stage 3: stem + two conv levels only
    assert r["params_tapped"] < 0.1 * r["params_total"]
    v = encoder_row("vit-s-in1k-224")                                             # all but the last block, norm and head
    assert v["params_total"] - v["params_tapped"] == 1_774_464 + 768 + 385_000


def test_encoders_table_columns():
    t = encoders_table(family="MaxViT")
    assert list(t.columns) == ["id", "family", "variant", "pretraining", "resolution", "tap", "tokens", "params_tapped",
                               "params_total", "timm_name", "weights"]
    assert set(t.id) == {"maxvit-t-in1k-224-s3", "maxvit-s-in1k-224-s3", "maxvit-b-in1k-224-s3", "maxvit-l-in1k-224-s3", "maxvit-pico"}
    assert t.attrs["unavailable"] == unavailable_encoders()


def test_registry_errors_are_one_line():
    for bad, hint in [("vit-s-in1k", "vit-s-in1k-224"), ("vmamba-s-coco-1333", "vmamba-s-coco-1333x800"), ("mambavision_b", None)]:
        with pytest.raises(UnknownEncoder) as e: create_encoder(bad)
        msg = str(e.value)
        assert "\n" not in msg and f"unknown encoder {bad!r}" in msg
        if hint: assert repr(hint) in msg
    from vlmssm.backbones import _registry
    _registry()[1]["demo-unbuildable"] = "its family module does not import here"   # how a broken family is reported
    try:
        with pytest.raises(UnknownEncoder, match="'demo-unbuildable' cannot be built here: its family"): create_encoder("demo-unbuildable")
    finally: del _registry()[1]["demo-unbuildable"]
    with pytest.raises(ValueError, match="not available for ViT"): create_encoder("vit-pico", tap="stage 3")
    with pytest.raises(ValueError, match="unknown resize strategy"): create_encoder("vit-pico", resize="squash")
    with pytest.raises(ValueError, match="meta device"): create_encoder("vit-pico", pretrained="x.pth", device="meta")
    with pytest.raises(WeightsError, match="not found"): create_encoder("vit-pico", pretrained="/nonexistent/w.safetensors")


def test_taps_can_be_changed():
    a, b = create_encoder("vit-pico"), create_encoder("vit-pico", tap="block -1")
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(): assert not torch.equal(a(x), b(x))
    assert b.param_count()["tapped"] > a.param_count()["tapped"]
    assert create_encoder("vmamba-pico", tap="stage 2").num_tokens() == 64


def test_saved_checkpoint_round_trip(tmp_path):
    for id in ["vit-pico", "vmamba-pico", "dinosiglip-pico", "vitdet-pico", "perceiver-pico", "mambavision-pico", "vim-pico"]:
        enc = create_encoder(id, resolution=(64, 64)).reset_classifier(7)
        p = save_encoder(enc, tmp_path / f"{id}.safetensors", resolution=[64, 64])
        again = create_encoder(id, pretrained=str(p))
        x = torch.randn(2, enc.in_chans, 64, 64)
        with torch.no_grad(): assert torch.equal(enc(x), again(x)), id


def test_resolution_travels_with_the_checkpoint(tmp_path):
    enc = create_encoder("vit-pico", resolution=96)
    p = save_encoder(enc, tmp_path / "v.safetensors", resolution=[96, 96])
    assert create_encoder("vit-pico", pretrained=str(p)).default_resolution == (96, 96)


def test_foreign_checkpoints_go_through_family_filters(tmp_path):
    # timm layout (torch.save, weights_only load) for a timm family
    enc = create_encoder("vit-pico")
    torch.save({"state_dict": {k[len("model."):]: v for k, v in enc.state_dict().items()}}, tmp_path / "timm.pth")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(): assert torch.equal(create_encoder("vit-pico", pretrained=str(tmp_path / "timm.pth"))(x), enc(x))
    # detectron2 ViTDet layout (.pkl of numpy arrays, read by the numpy-only unpickler)
    det = create_encoder("vitdet-pico")
    ren = [("embeddings.projection.", "patch_embed.proj."), ("embeddings.position_embeddings", "pos_embed"),
           ("encoder.layer.", "blocks."), (".attention.", ".attn.")]
    d2 = {}
    for k, v in det.state_dict().items():
        k = k[len("model.net."):]
        for a, b in ren: k = k.replace(a, b, 1)
        d2["backbone.net." + k] = v.numpy()
    d2["backbone.simfp_2.0.weight"] = np.zeros(3, np.float32)
    with open(tmp_path / "model_final.pkl", "wb") as f: pickle.dump({"model": d2, "__author__": "Detectron2 Model Zoo"}, f)
    with torch.no_grad(): assert torch.equal(create_encoder("vitdet-pico", pretrained=str(tmp_path / "model_final.pkl"))(x), det(x))
    # a checkpoint of another architecture fails with one line
    with pytest.raises(WeightsError) as e: create_encoder("maxvit-pico", pretrained=str(tmp_path / "timm.pth"))
    assert "\n" not in str(e.value) and "do not fit encoder 'maxvit-pico'" in str(e.value)


def test_unsafe_pickles_are_refused(tmp_path):
    with open(tmp_path / "evil.pkl", "wb") as f: pickle.dump({"model": {"w": np.zeros(2)}, "x": os.system}, f)
    with pytest.raises(WeightsError, match="evil.pkl: refusing to unpickle posix.system"): read_checkpoint(tmp_path / "evil.pkl")
    torch.save({"model": {"w": torch.zeros(2)}, "f": os.system}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="evil.pth: refusing to unpickle posix.system"): read_checkpoint(tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="evil.pth: refusing to unpickle"):
        create_encoder("vit-pico", pretrained=str(tmp_path / "evil.pth"))


def test_offline_hub_is_one_clear_line(monkeypatch):
    code = ("from vlmssm.backbones import create_encoder\n"
            "try: create_encoder('vit-s-in1k-224', pretrained='hub')\n"
            "except Exception as e: print(type(e).__name__, '|', e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    line = r.stdout.strip()
    assert line.startswith("WeightsError |") and "\n" not in line, r.stdout + r.stderr
    assert "timm/vit_small_patch16_224.augreg_in1k" in line and "pretrained=<local file>" in line
    import torch.hub
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(OSError("no route to host")))
    monkeypatch.setenv("HOME", "/nonexistent-home-for-test")
    with pytest.raises(WeightsError, match="cannot fetch the published weights from https://dl.fbaipublicfiles.com"):
        create_encoder("vitdet-b-coco-1024", pretrained="hub")


def test_published_table_agrees_with_the_registry():
    t = pd.read_csv(ROOT / "data" / "encoders.csv").set_index("id")
    avail = t[t.available == "yes"]
    assert set(avail.index) == set(REAL)
    for i, r in avail.iterrows():
        assert create_encoder(i, device="meta").num_tokens() == r.tokens, i
        assert pd.isna(r.top1) or (isinstance(r.top1_source, str) and r.top1_source.startswith("http")), i
        assert pd.notna(r.top1) or isinstance(r.notes, str), f"{i}: no top-1 and no note saying why"
    for i in ["vit-s-in1k-224", "maxvit-t-in1k-224-s3", "mambavision-b-in1k-224-s3", "vitdet-b-coco-1024", "perceiver-learned-in1k-224"]:
        row = encoder_row(i)
        assert (row["params_tapped"], row["params_total"]) == (t.loc[i, "params_tapped"], t.loc[i, "params_total"]), i
    paper = pd.read_csv(ROOT / "data" / "paper_results.csv")
    assert len(paper) == 8 and paper.source.str.startswith("https://github.com/raykuo18/vlm-ssm-vision-encoders").all()
    for r in paper.itertuples():
        if r.public_id in REAL: assert create_encoder(r.public_id, device="meta").num_tokens() == r.vision_tokens_exact


def test_pretraining_is_independent_of_parallelism(tmp_path):
    "Two pico encoders pretrained in 2 processes give the same curves and cards as in one."
    from vlmssm.config import load_config, EncoderEntry
    from vlmssm.data.benchmark import write_benchmark
    from vlmssm.pretrain import pretrain_study
    from vlmssm.analysis import learning_curves
    cfg = load_config("smoke")
    write_benchmark(replace(cfg.data, n_train=24, n_val=8, n_test=8), tmp_path / "scenes", progress=False)
    cfg = replace(cfg, encoders=[EncoderEntry("vit-pico"), EncoderEntry("mambavision-pico"), EncoderEntry("vit-s-in1k-224")],
                  pretrain=replace(cfg.pretrain, steps=3, batch_size=8, eval_every=2))
    one = pretrain_study(replace(cfg, runtime=replace(cfg.runtime, jobs=1)), tmp_path / "scenes", tmp_path / "a", log=lambda m: None, progress=False)
    two = pretrain_study(replace(cfg, runtime=replace(cfg.runtime, jobs=2)), tmp_path / "scenes", tmp_path / "b", log=lambda m: None, progress=False)
    cols = ["encoder", "top1", "val_top1", "test_loss", "params_tapped", "tokens"]
    pd.testing.assert_frame_equal(one[cols].iloc[:2], two[cols].iloc[:2])
    pd.testing.assert_frame_equal(learning_curves(tmp_path / "a").drop(columns="seconds"), learning_curves(tmp_path / "b").drop(columns="seconds"))
    assert one.set_index("encoder").loc["vit-s-in1k-224", "top1"] == pytest.approx(0.78842)
    assert "results-imagenet.csv" in one.set_index("encoder").loc["vit-s-in1k-224", "source"]
    assert sorted(p.name for p in (tmp_path / "a" / "encoders").iterdir()) == ["mambavision-pico.safetensors", "vit-pico.safetensors"]
