"Stage 40 (evaluation) on the smoke study: re-scoring reproduces every table, aggregates recomputed by hand, batching, resume, released checkpoints."
import json, shutil, subprocess, sys
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
import torch
from vlmssm.evals.core import EvalItem, predict
from vlmssm.evals.study import evaluate_study, generate_items
from vlmssm.test_utils import QUESTION, fixture_tokenizer, tiny_vlm

BIN = Path(sys.executable).parent/"vlmssm"
TABLES = ("results", "aggregates", "breakdown", "differences")

@pytest.fixture(scope="module")
def stage(smoke_run):
    rd, table = smoke_run
    assert "40_evaluate" in list(table.stage)
    return rd, rd/"40_evaluate"

def test_batch_32_gives_the_answers_of_batch_1():
    "Sorted, left-padded batches of 32 (and of 5) answer exactly as one prompt at a time, on a tiny VLM with image features."
    vlm = tiny_vlm(fixture_tokenizer(), layers=2).eval()
    with torch.no_grad():
        for p in vlm.lm.parameters(): p.mul_(4)                              # a sharp LM: answers depend on prompt and image
    g = torch.Generator().manual_seed(1)
    feats = {f"i{k}": torch.randn(16, 12, generator=g) * 3 for k in range(6)}  # cached encoder tokens per image id
    class F:
        def get(self, ids): return torch.stack([feats[i] for i in ids])
    prompts = [QUESTION, "Is there a sphere?", "red green blue red green", "What?", "[0.25, 0.50, 0.75"]
    items = [EvalItem("vqa" if k % 4 else "ref", k, "f", prompts[k % 5] + " yes" * (k % 3), f"i{k % 6}", "red") for k in range(70)]
    one = [predict(vlm, [it], F(), batch_size=1, max_new_tokens=8)[0] for it in items]
    assert len(set(one)) > 3, "the fixture must answer differently per item for the check to mean anything"
    assert generate_items(vlm, items, F(), batch_size=32, max_new_tokens=8) == one
    assert generate_items(vlm, items, F(), batch_size=5, max_new_tokens=8) == one

def test_stage_outputs(stage):
    rd, out = stage
    runs = sorted(p.name for p in (rd/"30_vlm_train"/"runs").iterdir() if (p/"model").exists())
    preds = sorted(p.stem for p in (out/"predictions").glob("*.jsonl"))
    assert preds == sorted(runs + ["prior"]) and any(r.startswith("blind") for r in runs)
    res = pd.read_csv(out/"results.csv")
    n_test = sum(1 for _ in open(out/"predictions"/"prior.jsonl"))
    recs = [json.loads(l) for l in open(out/"predictions"/"prior.jsonl")]
    assert {r["kind"] for r in recs} == {"vqa", "ref"} and all({"prompt", "output", "parsed", "score", "answer"} <= set(r) for r in recs)
    assert n_test == len(recs) and res.groupby("run").n.sum().nunique() > 0
    loc = res[res.group == "loc"]
    assert {"acc@0.5", "acc@0.5_lenient", "parse_rate", "parse_rate_lenient"} <= set(loc.metric)   # strict and lenient apart
    # one row per run × task × metric, every VQA family a task
    assert not res.duplicated(["run", "task", "metric"]).any()
    assert {r["family"] for r in recs if r["kind"] == "vqa"} == {t.removeprefix("scenes-") for t in res[res.group == "vqa"].task}
    diffs = pd.read_csv(out/"differences.csv")
    models = set(res.encoder)
    for m in ("weighted_overall", "weighted_vqa", "weighted_loc"):
        d = diffs[diffs.metric == m]
        assert len(d) == len(models) * (len(models) - 1), m                 # every ordered pair of models
    figs = {p.name for p in (out/"figures").iterdir()}
    assert {"scores.png", "scores.pdf", "breakdown.png", "differences_overall.pdf"} <= figs
    bd = pd.read_csv(out/"breakdown.csv", keep_default_na=False)
    qtypes = {r["qtype"] for r in recs if r["kind"] == "vqa"}
    assert qtypes <= set(bd.qtype) and len(qtypes) > 3                     # every question type reported

def test_rescoring_reproduces_the_stage(stage, tmp_path):
    "`vlmssm score PREDICTIONS` recomputes every score from the raw outputs and writes byte-identical tables."
    rd, out = stage
    r = subprocess.run([str(BIN), "score", str(out/"predictions"), "--out", str(tmp_path/"re")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "0 item score(s) differ" in r.stderr and "prior" in r.stdout and "Overall" in r.stdout
    for name in TABLES: assert (tmp_path/"re"/f"{name}.csv").read_bytes() == (out/f"{name}.csv").read_bytes(), name
    # the check can fail: one changed output changes the re-scored tables
    tampered = tmp_path/"tampered"; shutil.copytree(out/"predictions", tampered)
    f = next(tampered.glob("blind-*.jsonl"))
    lines = f.read_text().splitlines()
    rec = json.loads(lines[0]); rec["output"] = rec["answer"] if rec["score"] < 1 else "zzz"; lines[0] = json.dumps(rec)
    f.write_text("\n".join(lines) + "\n")
    r = subprocess.run([str(BIN), "score", str(tampered), "--out", str(tmp_path/"t")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "1 item score(s) differ" in r.stderr, r.stderr[-2000:]
    assert (tmp_path/"t"/"results.csv").read_bytes() != (out/"results.csv").read_bytes()

def test_weighted_aggregates_recomputed_from_the_item_files(stage):
    "Σ n_d·acc_d / Σ n_d per model, computed here from the JSONL files with plain json, equals aggregates.csv (and its n_d)."
    _, out = stage
    recs = [json.loads(l) for f in sorted((out/"predictions").glob("*.jsonl")) for l in open(f)]
    agg = pd.read_csv(out/"aggregates.csv").set_index(["encoder", "view", "scope"])
    for enc in {r["encoder"] for r in recs}:
        tasks = {}
        for r in recs:
            if r["encoder"] == enc: tasks.setdefault((r["group"], r["task"]), []).append((r["id"], r["score"]))
        acc = {k: np.mean([s for _, s in v]) for k, v in tasks.items()}        # mean over seeds and items
        n = {k: len({i for i, _ in v}) for k, v in tasks.items()}            # distinct items
        for scope, keys in (("vqa", [k for k in acc if k[0] == "vqa"]), ("loc", [k for k in acc if k[0] == "loc"]), ("overall", list(acc))):
            want = 100 * sum(n[k] * acc[k] for k in keys) / sum(n[k] for k in keys)
            row = agg.loc[(enc, "weighted", scope)]
            assert abs(row.value - want) < 1e-9, (enc, scope, row.value, want)
            assert row.n_d == "; ".join(f"{t}={n[(g, t)]}" for g, t in sorted(keys, key=lambda k: k[1])), (enc, scope)
            eq = 100 * np.mean([acc[k] for k in keys])
            assert abs(agg.loc[(enc, "equal-task", scope)].value - eq) < 1e-9

def test_prior_matches_stage_00_baselines(stage):
    "The prior's per-family VQA accuracy and mean-box Acc@0.5 equal what stage 00_data computed for the test split."
    rd, out = stage
    res = pd.read_csv(out/"results.csv")
    p = res[res.encoder == "prior"].set_index(["task", "metric"]).value
    vb = pd.read_csv(rd/"00_data"/"vqa_baselines.csv")
    vb = vb[(vb.split == "test") & (vb.qtype == "all") & (vb.family != "all")].set_index("family")
    for fam, row in vb.iterrows(): assert abs(p[(f"scenes-{fam}", "accuracy")] - 100 * row.blind_template_acc) < 1e-6, fam
    rb = pd.read_csv(rd/"00_data"/"ref_baselines.csv").set_index("split").loc["test"]
    assert abs(p[("scenes-ref", "acc@0.5")] - 100 * rb.mean_box_acc) < 1e-6

def test_resume_reuses_finished_predictions(stage, tmp_path):
    "A second evaluation reuses every run's predictions (same key) from the earlier output and gives the same tables."
    from vlmssm.config import load_config
    rd, out = stage
    cfg = load_config(str(rd/"config.yaml"))
    cfg.runtime.jobs = 2                                                      # the worker-pool path: the same tables
    logs = []
    t = evaluate_study(cfg, rd/"00_data"/"scenes", rd/"30_vlm_train"/"runs", tmp_path, rd/"cache"/"features", reuse_from=out, log=logs.append, progress=False)
    assert t["timing"].set_index("run").reused.drop("prior").all(), t["timing"]
    assert f"{len(t['timing']) - 1} reused, 1 to evaluate" in logs[0], logs[0]
    for name in TABLES: assert t[name].to_csv(index=False) == (out/f"{name}.csv").read_text(), name

def test_released_checkpoint_is_evaluated(stage, tmp_path):
    "A Prismatic-format run directory listed in `eval.checkpoints` is loaded with `VLM.from_prismatic` and answers as that model does from pixels."
    from PIL import Image
    from vlmssm.backbones import create_encoder
    from vlmssm.config import from_dict, load_config, to_dict
    from vlmssm.connectors import create_connector
    from vlmssm.vlm import VLM
    rd, _ = stage
    run = next(p for p in sorted((rd/"30_vlm_train"/"runs").iterdir()) if p.name.startswith("vmamba"))
    trained = VLM.from_pretrained(run/"model")
    weights = str(next((rd/"10_pretrain").rglob("vmamba-pico.safetensors")))
    rel = tmp_path/"released"; (rel/"checkpoints").mkdir(parents=True)
    (rel/"config.json").write_text(json.dumps({"model": {"vision_backbone_id": "released-vmamba-id", "llm_backbone_id": "vicuna-v15-7b",
                                                          "arch_specifier": "no-align+gelu-mlp", "image_resize_strategy": "letterbox"}}))
    conn = create_connector("gelu-mlp", trained.encoder.embed_dim, trained.lm.config.hidden_size, seed=3)   # Prismatic's: no LayerNorm
    torch.save({"model": {"projector": conn.state_dict(), "llm_backbone": {f"llm.{k}": v for k, v in trained.lm.state_dict().items()}}},
               rel/"checkpoints"/"latest-checkpoint.pt")
    d = to_dict(load_config(str(rd/"config.yaml")))
    d["eval"]["checkpoints"] = [{"name": "released", "path": str(rel), "encoder": "vmamba-pico", "weights": weights, "lm": str(rd/"30_vlm_train"/"lm")}]
    cfg = from_dict(type(load_config("smoke")), d)
    t = evaluate_study(cfg, rd/"00_data"/"scenes", None, tmp_path/"out", rd/"cache"/"features", log=lambda m: None, progress=False)
    assert set(t["timing"].run) == {"released", "prior"}
    got = [json.loads(l) for l in open(tmp_path/"out"/"predictions"/"released.jsonl")]
    enc = create_encoder("vmamba-pico", pretrained=weights)
    vlm = VLM.from_prismatic(rel, encoder=enc, lm=str(rd/"30_vlm_train"/"lm"))
    tf = enc.transform("letterbox")
    for r in got[::max(1, len(got) // 8)]:                                   # a few items, one at a time, from pixels
        px = tf(Image.open(rd/"00_data"/"scenes"/r["image"]).convert("RGB"))[None]
        assert vlm.generate([r["prompt"]], pixel_values=px, max_new_tokens=cfg.eval.max_new_tokens)[0] == r["output"], r["id"]
    assert "released" in set(t["aggregates"].encoder)
