"Every stage notebook, smoke-run in order with papermill on the `smoke` preset through the study runner."
import json
from pathlib import Path
import pytest
from vlmssm.pipeline import discover_stages, run_study

# `smoke_run` (the smoke study, once per session) is in conftest.py: tests/test_evaluate.py reads it too

STAGES = [s.name for s in discover_stages()]

@pytest.mark.parametrize("stage", STAGES)
def test_stage_smoke(smoke_run, stage):
    rd, table = smoke_run
    assert stage in list(table.stage), f"{stage} did not run"
    m = json.loads((rd/stage/"manifest.json").read_text())
    assert m["status"] == "ok" and m["stage"] == stage
    assert (rd/stage/f"{stage}.ipynb").exists(), "executed notebook kept next to the outputs"
    files = [f["path"] for f in m["files"]]
    figs = [f for f in files if f.startswith("figures/")]
    assert not figs or {Path(f).suffix for f in figs} == {".png", ".pdf"}, f"figures must come as PNG + PDF: {figs}"

def test_rerun_skips_everything(smoke_run):
    rd, _ = smoke_run
    table = run_study("smoke", run_dir=rd, progress=False, overrides=["paths.figures_dir=" + str(rd/"figures")])
    assert set(table.status) == {"skipped"}

def test_chat_answers_from_a_trained_run(smoke_run):
    "`vlmssm chat --run DIR --image X --prompt …` on a run the smoke study trained (the issue's user check)."
    import subprocess, sys
    rd, _ = smoke_run
    run = next(p for p in sorted((rd/"30_vlm_train"/"runs").iterdir()) if not p.name.startswith("blind"))
    image = sorted((rd/"00_data"/"scenes"/"images"/"val").iterdir())[0]
    r = subprocess.run([str(Path(sys.executable).parent/"vlmssm"), "chat", "--run", str(run), "--image", str(image),
                        "--prompt", "How many objects are there?", "--max_new_tokens", "4"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.endswith("\n"), (r.returncode, r.stderr[-500:])
    # the smoke run is barely trained (its answer may be empty): the CLI must print what the library's greedy chat gives
    from vlmssm.vlm import chat
    assert r.stdout[:-1] == chat(str(run), str(image), "How many objects are there?", max_new_tokens=4)
    summary = json.loads((rd/"30_vlm_train"/"summary.json").read_text())
    assert (rd/"30_vlm_train"/"val_vs_blind.csv").exists() and "best_minus_blind_vqa_acc" in summary
    assert summary["best_grounding_acc@0.5"] >= summary["best_val_acc@0.5"] and summary["best_grounding_encoder"] != "blind"

def test_chat_prompts_like_training_and_talks(smoke_run):
    "A run records its prompt conventions; chat applies them (a question gets the short-answer suffix) unless `--raw`; without `--prompt` it is a multi-turn conversation read line by line."
    import subprocess, sys
    from vlmssm.vlm import ChatSession, VLM, apply_conventions
    from vlmssm.data.tasks import VQA_SUFFIX
    rd, _ = smoke_run
    run = next(p for p in sorted((rd/"30_vlm_train"/"runs").iterdir()) if not p.name.startswith("blind"))
    image = sorted((rd/"00_data"/"scenes"/"images"/"val").iterdir())[0]
    assert VLM.from_pretrained(run/"model").spec["prompting"]["answer_suffix"] == VQA_SUFFIX
    s = ChatSession(str(run), str(image), max_new_tokens=4)
    q = "What color is the large object?"
    ans = s.ask(q)
    assert s.history[0]["value"] == q + VQA_SUFFIX
    assert ans == s.vlm.generate([q + VQA_SUFFIX], pixel_values=s.px, max_new_tokens=4)[0]
    assert ChatSession(str(run), str(image), max_new_tokens=4, raw=True).ask(q) == s.vlm.generate([q], pixel_values=s.px, max_new_tokens=4)[0]
    lines = [q, "How many objects are there?"]
    r = subprocess.run([str(Path(sys.executable).parent/"vlmssm"), "chat", "--run", str(run), "--image", str(image), "--max-new-tokens", "4"],
                       input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-500:]
    t = ChatSession(str(run), str(image), max_new_tokens=4)
    assert r.stdout == "".join(t.ask(m) + "\n" for m in lines)           # the same turns, the second with the first as history

def test_stages_report_progress(smoke_run):
    "What the console line showed, as each smoke stage's manifest keeps its last state: counts of scenes, encoders, runs and steps."
    from vlmssm.config import load_config
    rd, _ = smoke_run
    cfg = load_config("smoke")
    tasks = {s: {t["task"]: t for t in json.loads((rd/s/"manifest.json").read_text())["progress"]["tasks"]} for s in STAGES}
    n = cfg.data.n_train + cfg.data.n_val + cfg.data.n_test
    if "00_data" in tasks: assert (tasks["00_data"]["scenes"]["done"], tasks["00_data"]["scenes"]["total"]) == (n, n)
    encs = [e.id for e in cfg.encoders]
    if "10_pretrain" in tasks:
        encs = [e for e in encs if "@" not in e]                                 # dense variants are made by 20_dense, not pretrained
        t = tasks["10_pretrain"]
        assert (t["encoders"]["done"], t["encoders"]["total"]) == (len(encs), len(encs))
        assert {e: (t[e]["parent"], t[e]["done"], t[e]["total"]) for e in encs} == {e: ("encoders", cfg.pretrain.steps, cfg.pretrain.steps) for e in encs}
    if "30_vlm_train" in tasks:
        t, runs = tasks["30_vlm_train"], [f"{e.id}-s{s}" for e in cfg.encoders + [type(cfg.encoders[0])("blind")] for s in cfg.seeds]
        assert (t["runs"]["done"], t["runs"]["total"]) == (len(runs), len(runs)) and "LM + feature caches" in t
        assert all(t[r]["parent"] == "runs" and t[r]["unit"] == "step" and t[r]["done"] == t[r]["total"] > 0 for r in runs), t
