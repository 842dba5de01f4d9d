"Stage 60 (stabilization) on the smoke study: outputs, the planted collapse, recovery recomputed from the per-item files."
import json
from pathlib import Path
import numpy as np
import pandas as pd
import pytest

@pytest.fixture(scope="module")
def stage(smoke_run):
    rd, table = smoke_run
    assert "60_stabilization" in list(table.stage)
    return rd, rd/"60_stabilization"

def _preds(folder: Path) -> list[dict]:
    return [json.loads(l) for f in sorted(folder.glob("*.jsonl")) for l in open(f) if l.strip()]

def test_stage_outputs(stage):
    rd, out = stage
    for f in ("detection.csv", "signals.csv", "selection.csv", "reruns.csv", "recovery.csv", "after.csv", "timing.csv"): assert (out/f).exists(), f
    det = pd.read_csv(out/"detection.csv", keep_default_na=False)
    assert {"blind", "prior"} <= set(det.encoder) and set(det[det.role == "baseline"]["flags"]) == {""}
    enc = det[det.role == "encoder"]
    assert set(enc.encoder) == {"vmamba-pico", "vit-pico", "vit-pico@det"}      # the smoke encoders and their dense variant
    assert all((r.flags == "") == (r.reasons == "") for r in enc.itertuples())          # every flag carries its reason
    sel, reruns = pd.read_csv(out/"selection.csv"), pd.read_csv(out/"reruns.csv")
    assert len(sel) >= 1 and set(sel.stabilization) == {"mlp3+square"}
    assert len(reruns) == len(sel) and set(reruns.connector) == {"fused-gelu-mlp"} and set(reruns.resize) == {"letterbox-square-64"}
    # the same recipe and seed as the original run: the training fingerprint is the original's
    for r in reruns.itertuples():
        orig = json.loads((rd/"30_vlm_train"/"runs"/f"{r.encoder}-s{r.seed}"/"summary.json").read_text())
        assert r.fingerprint == orig["fingerprint"] and r.steps == orig["steps"], r.run
        cfg = json.loads((out/"runs"/r.run/"model"/"config.json").read_text())
        assert cfg["connector"]["id"] == "fused-gelu-mlp" and cfg["resize"] == "letterbox-square-64"
    figs = {p.name for p in (out/"figures").iterdir()}
    assert {"detection.png", "detection.pdf", "recovery.png", "recovery.pdf"} <= figs

def test_reruns_scored_on_stage_40_items(stage):
    rd, out = stage
    orig = {(r["task"], r["id"]) for r in _preds(rd/"40_evaluate"/"predictions") if r["run"] == "prior"}
    new = _preds(out/"predictions")
    for run in {r["run"] for r in new}: assert {(r["task"], r["id"]) for r in new if r["run"] == run} == orig, run

def test_planted_collapse_ignores_the_image(stage):
    "The planted run sees one constant token map: its answer to a prompt is the same on every image."
    _, out = stage
    planted = [r for r in _preds(out/"predictions") if r["encoder"].endswith("+planted")]
    assert planted, "the smoke preset plants a collapse"
    by_prompt = pd.DataFrame(planted).groupby("prompt").output.nunique()
    assert (by_prompt == 1).all() and pd.DataFrame(planted).image.nunique() > 5
    after = pd.read_csv(out/"after.csv", keep_default_na=False)
    assert planted[0]["encoder"] in set(after.encoder)

def test_recovery_recomputed_from_the_item_files(stage):
    "rerun − original per metric, from the JSONL files with plain json and numpy (same seeds, same items), equals recovery.csv."
    rd, out = stage
    recs = _preds(rd/"40_evaluate"/"predictions") + _preds(out/"predictions")
    rec = pd.read_csv(out/"recovery.csv")
    assert len(rec)
    for r in rec.itertuples():
        group = "loc" if r.metric == "acc@0.5" else "vqa"
        score = lambda enc: {(x["seed"], x["task"], x["id"]): x["score"] for x in recs if x["encoder"] == enc and x["group"] == group}
        a, b = score(r.label), score(r.encoder)
        keys = sorted(set(a) & set(b))
        assert len(keys) == r.seeds * r.items, r.label
        want = 100 * np.mean([a[k] - b[k] for k in keys])
        assert abs(r.diff - want) < 1e-9 and r.low <= r.diff + 1e-9 and r.diff - 1e-9 <= r.high, (r.label, r.metric, r.diff, want)
        assert abs(r.value - 100 * np.mean([a[k] for k in keys])) < 1e-9

def test_recovery_table_on_perturbed_item_files(stage, tmp_path):
    "The smoke models score 0 everywhere, so the recomputation above compares zeros; here the reruns' item scores are perturbed (a fixed pattern) in copies of the files, and `recovery_table` read from them must equal the plain-json differences."
    from vlmssm.evals.study import read_predictions
    from vlmssm.stabilize import recovery_table
    rd, out = stage
    (tmp_path/"p").mkdir()
    for f in sorted((out/"predictions").glob("*.jsonl")):
        recs = [json.loads(l) for l in open(f) if l.strip()]
        for k, r in enumerate(recs): r["score"] = float((k * 7 + r["seed"]) % 3 == 0)
        (tmp_path/"p"/f.name).write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    items = read_predictions([rd/"40_evaluate"/"predictions", tmp_path/"p"])
    labels = sorted({e for e in items.encoder if "+" in e})
    rec = recovery_table(items, {l: l.split("+")[0] for l in labels}, n_resamples=200)
    recs = _preds(rd/"40_evaluate"/"predictions") + _preds(tmp_path/"p")
    assert len(rec) == 2 * len(labels)
    for r in rec.itertuples():
        group = "loc" if r.metric == "acc@0.5" else "vqa"
        score = lambda enc: {(x["seed"], x["task"], x["id"]): x["score"] for x in recs if x["encoder"] == enc and x["group"] == group}
        a, b = score(r.label), score(r.encoder)
        keys = sorted(set(a) & set(b))
        want = 100 * np.mean([a[k] - b[k] for k in keys])
        assert abs(want) > 1 and abs(r.diff - want) < 1e-9 and r.low < r.diff < r.high, (r.label, r.metric, r.diff, want)
