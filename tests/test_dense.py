"Dense tuning (issue #14): the zoo round trip of a dense variant, metrics against pycocotools, official dense-checkpoint layouts, and the 20_dense → 30_vlm_train smoke run."
import contextlib, io, json
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
import torch
from vlmssm.backbones import create_encoder, checkpoint_metadata
from vlmssm.dense import SemanticFPN, detection_metrics, save_dense_encoder

@pytest.mark.parametrize("source", ["vmamba-pico", "vit-pico"])
def test_round_trip_through_the_zoo(tmp_path, source):
    "Tune an encoder one step with a dense head, save it as <id>@seg, rebuild it by zoo id: the same tokens, no head, the card's metadata."
    torch.manual_seed(0)
    enc = create_encoder(source)
    seg = SemanticFPN(enc, 5).train()
    opt = torch.optim.SGD(seg.parameters(), lr=0.5)
    x, m = torch.randn(2, 3, 64, 64), torch.randint(0, 5, (2, 64, 64))
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    seg.loss(x, m).backward(); opt.step()
    assert any(not torch.equal(before[k], v) for k, v in enc.state_dict().items() if "outnorm" in k or "blocks" in k)   # the tap (and its norms) trained
    p = save_dense_encoder(enc.eval(), f"{source}@seg", tmp_path/f"{source}@seg.safetensors", steps=1)
    back = create_encoder(f"{source}@seg", pretrained=str(p))
    with torch.no_grad(): assert torch.equal(back(x), enc(x))
    md = checkpoint_metadata(p)
    assert (md["id"], md["task"], md["source_encoder"], json.loads(md["resolution"])) == (f"{source}@seg", "segmentation", source, [64, 64])
    assert (back.id, enc.id) == (f"{source}@seg", source)

def _coco(pr, gt):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    ims, anns, dets = [], [], []
    xywh = lambda b: [b[0], b[1], b[2] - b[0], b[3] - b[1]]
    for i, (p, g) in enumerate(zip(pr, gt)):
        ims.append(dict(id=i + 1, width=64, height=64))
        for b, l in zip(g["boxes"].tolist(), g["labels"].tolist()):   # annotation ids must be unique
            anns.append(dict(id=len(anns) + 1, image_id=i + 1, category_id=l, bbox=xywh(b), area=(b[2] - b[0]) * (b[3] - b[1]), iscrowd=0))
        dets += [dict(image_id=i + 1, category_id=l, bbox=xywh(b), score=s) for b, s, l in zip(p["boxes"].tolist(), p["scores"].tolist(), p["labels"].tolist())]
    c = COCO(); c.dataset = dict(images=ims, annotations=anns, categories=[dict(id=k) for k in (1, 2, 3)])
    with contextlib.redirect_stdout(io.StringIO()):
        c.createIndex(); e = COCOeval(c, c.loadRes(dets), "bbox"); e.evaluate(); e.accumulate(); e.summarize()
    return e.stats[0], e.stats[1]

def test_detection_metrics_match_pycocotools():
    "Random jittered detections on 6 hand-made images: torchmetrics' numbers are pycocotools' own."
    g = torch.Generator().manual_seed(3)
    gt, pr = [], []
    for i in range(6):
        xy = torch.randint(0, 40, (3, 2), generator=g).float(); wh = torch.randint(6, 24, (3, 2), generator=g).float()
        b = torch.cat([xy, xy + wh], 1); lab = torch.randint(1, 4, (3,), generator=g)
        gt.append(dict(boxes=b, labels=lab))
        jit = b + torch.randn(3, 4, generator=g) * 3
        pr.append(dict(boxes=jit.clamp(0, 64), scores=torch.rand(3, generator=g), labels=torch.where(torch.rand(3, generator=g) < 0.8, lab, 1)))
    r = detection_metrics(pr, gt)
    ref = _coco(pr, gt)
    assert abs(r["map"] - ref[0]) < 1e-6 and abs(r["map_50"] - ref[1]) < 1e-6 and 0 < r["map"] < r["map_50"] < 1

def test_official_dense_layouts_import(tmp_path):
    "mmdet / mmseg checkpoints (`{'meta', 'state_dict': {'backbone.*', 'neck.*', 'decode_head.*'}}`) of a VMamba rebuild its tokens, heads ignored."
    torch.manual_seed(1)
    src = create_encoder("vmamba-pico")
    with torch.no_grad():
        for p in src.parameters(): p.add_(torch.randn_like(p) * 0.05)
    bb = {f"backbone.{k}": v for k, v in src.model.state_dict().items() if not k.startswith("classifier.")}
    x = torch.randn(1, 3, 64, 64)
    for name, extra in [("mmdet", {"neck.lateral_convs.0.conv.weight": torch.zeros(2, 2, 1, 1), "roi_head.bbox_head.fc_cls.weight": torch.zeros(3, 2)}),
                        ("mmseg", {"decode_head.conv_seg.weight": torch.zeros(150, 2, 1, 1), "auxiliary_head.conv_seg.bias": torch.zeros(150)})]:
        torch.save({"meta": {"epoch": 12}, "state_dict": {**bb, **extra}}, tmp_path/f"{name}.pth")
        back = create_encoder("vmamba-pico", pretrained=str(tmp_path/f"{name}.pth"))
        with torch.no_grad(): assert torch.allclose(back(x), src(x)), name

def test_detectron2_vitdet_layout_import(tmp_path):
    "A detectron2 ViTDet model file (`{'model': {'backbone.net.*': ndarray, 'roi_heads.*': …}}`, pickled numpy) of the pico ViTDet rebuilds its tokens."
    import pickle
    from vlmssm.backbones.zoo import _D2
    torch.manual_seed(2)
    src = create_encoder("vitdet-pico")
    with torch.no_grad():
        for p in src.parameters(): p.add_(torch.randn_like(p) * 0.05)
    d2 = {}
    for k, v in src.model.state_dict().items():
        k2 = k[len("net."):]
        for a, b in _D2: k2 = k2.replace(b, a, 1)
        d2["backbone.net." + k2] = v.numpy()
    d2["roi_heads.box_predictor.cls_score.weight"] = np.zeros((81, 4), np.float32)
    with open(tmp_path/"model_final.pkl", "wb") as f: pickle.dump({"model": d2, "__author__": "synthetic"}, f)
    back = create_encoder("vitdet-pico", pretrained=str(tmp_path/"model_final.pkl"))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(): assert torch.allclose(back(x), src(x))

@pytest.fixture(scope="module")
def dense_stage(smoke_run):
    rd, table = smoke_run
    assert "20_dense" in list(table.stage)
    return rd, rd/"20_dense"

def test_stage_20_dense_outputs(dense_stage):
    "The smoke study's 20_dense: one zoo encoder and card per variant, the baselines in the table, probes of each variant and its source, the figures."
    from vlmssm.config import load_config
    rd, out = dense_stage
    cfg = load_config("smoke")
    ids = [f"{e}@{t[:3]}" for e in cfg.dense.encoders for t in cfg.dense.tasks]
    res = pd.read_csv(out/"results.csv")
    assert list(res[res.kind == "dense"].encoder) == ids
    assert set(res[res.kind == "baseline"].encoder) == {"prior-box", "majority-class", "colour-threshold"}
    d = res[res.kind == "dense"]
    assert np.allclose(d.margin, d.value - d.baseline_value) and set(d.steps) == {cfg.dense.steps}
    for i in ids:
        card = json.loads((out/"cards"/f"{i}.json").read_text())
        assert {card[k] for k in ("encoder", "source_encoder", "resolution")} == {i, i.split("@")[0], "64x64"} and card["task"] in cfg.dense.tasks
        assert checkpoint_metadata(out/"encoders"/f"{i}.safetensors")["id"] == i
    pr = pd.read_csv(out/"probes.csv")
    assert set(pr.encoder) == set(ids) | set(cfg.dense.encoders) and pr.filter(like="probe_").notna().all().all()
    assert {"metrics.png", "learning_curves.pdf", "examples.png", "probes.pdf"} <= {p.name for p in (out/"figures").iterdir()}

def test_stage_30_trains_on_the_dense_variant(dense_stage):
    "Stage 30 finds vit-pico@det's weights in 20_dense and trains a VLM on it like on any encoder; chat loads the run."
    from vlmssm.vlm import chat
    rd, out = dense_stage
    run = rd/"30_vlm_train"/"runs"/"vit-pico@det-s7"
    assert (run/"model").is_dir() and json.loads((run/"summary.json").read_text())["steps"] > 0
    ref = json.dumps(json.loads((run/"model"/"config.json").read_text()))
    assert str((out/"encoders"/"vit-pico@det.safetensors").resolve()).split("/20_dense/")[1] in ref
    vs = pd.read_csv(rd/"30_vlm_train"/"val_dense_vs_source.csv")
    assert set(vs.encoder) == {"vit-pico@det"} and set(vs.reference) == {"vit-pico"} and np.allclose(vs["diff"], vs.value - vs.reference_value)
    image = sorted((rd/"00_data"/"scenes"/"images"/"val").iterdir())[0]
    assert isinstance(chat(str(run), str(image), "How many objects are there?", max_new_tokens=2), str)
