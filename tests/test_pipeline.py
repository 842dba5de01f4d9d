"The study runner on throwaway stage notebooks: order, skip on rerun, force, one-line failures, atomic outputs, recorded config reads, resuming."
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest
from vlmssm.pipeline import make_stage, run_study, StageFailed
from vlmssm.config import ConfigError

WRITE = "import pandas as pd\nctx.write_csv(pd.DataFrame({'x': [1, 2]}), 'r.csv')\nctx.record(rows=2)"

@pytest.fixture
def stages(tmp_path):
    d = tmp_path/"stages"; d.mkdir()
    make_stage(d, "00_first", WRITE)
    make_stage(d, "10_second", "p = ctx.upstream_dir('00_first')/'r.csv'\nctx.record(seen=p.exists())", upstream=["00_first"], uses=["data", "pretrain"])
    return d

def test_run_skip_force(stages, tmp_path):
    rd = tmp_path/"run"
    t = run_study("smoke", run_dir=rd, stages_path=stages, progress=False)
    assert list(t.status) == ["ran", "ran"]
    m = json.loads((rd/"10_second"/"manifest.json").read_text())
    assert m["status"] == "ok" and m["summary"] == {"seen": True} and m["seed"] == 7
    assert {"torch", "papermill", "python"} <= set(m["versions"]) and m["inputs"]["upstream"]["00_first"]
    assert (rd/"10_second"/"10_second.ipynb").exists() and (rd/"config.yaml").exists()
    assert not [p for p in rd.iterdir() if p.name.startswith(".")], "temporary folders left behind"
    t = run_study("smoke", run_dir=rd, stages_path=stages, progress=False)
    assert list(t.status) == ["skipped", "skipped"]
    t = run_study("smoke", run_dir=rd, stages_path=stages, progress=False, overrides=["pretrain.steps=5"])
    assert list(t.status) == ["skipped", "ran"], "a change in a used section reruns only that stage"
    t = run_study("smoke", run_dir=rd, stages_path=stages, progress=False, force=True, only=["first"])
    assert list(t.status) == ["ran"]
    t = run_study("smoke", run_dir=rd, stages_path=stages, progress=False, overrides=["pretrain.steps=5"])
    assert list(t.status) == ["skipped", "ran"], "a rerun upstream stage invalidates its dependents"

def test_failure_is_one_line_and_keeps_good_outputs(stages, tmp_path):
    rd = tmp_path/"run"
    run_study("smoke", run_dir=rd, stages_path=stages, progress=False)
    good = (rd/"10_second"/"manifest.json").read_text()
    make_stage(stages, "10_second", "x = 1\nraise ValueError('boom at step 3')", upstream=["00_first"], uses=["data", "pretrain"])
    with pytest.raises(StageFailed) as e:
        run_study("smoke", run_dir=rd, stages_path=stages, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("stage 10_second failed in cell 3: ValueError: boom at step 3"), msg
    assert (rd/"10_second"/"manifest.json").read_text() == good, "previous good outputs must stay intact"
    executed = Path(msg.split("(executed notebook: ")[1].split(";")[0])
    assert executed.exists() and executed.parent.name.startswith(".10_second."), "the failed attempt is kept for inspection"

def test_interrupted_stage_leaves_nothing_half_written(stages, tmp_path):
    rd = tmp_path/"run"
    make_stage(stages, "20_slow", "import time\nctx.record(started=True)\ntime.sleep(60)", upstream=[], uses=["data"])
    code = (f"from vlmssm.pipeline import run_study\n"
            f"run_study('smoke', run_dir={str(rd)!r}, stages_path={str(stages)!r}, progress=False)")
    p = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(rd.glob(".20_slow.*.tmp/summary.json")): time.sleep(0.5)
    assert list(rd.glob(".20_slow.*.tmp/summary.json")), "the slow stage never started"
    os.killpg(p.pid, signal.SIGKILL); p.wait(30)
    assert not (rd/"20_slow").exists(), "a killed stage must not appear as finished"
    t = run_study("smoke", run_dir=rd, stages_path=stages, progress=False, only=["first", "second"])
    assert list(t.status) == ["skipped", "skipped"], "finished stages survive a killed run"

def test_bad_inputs_are_one_line(stages, tmp_path):
    with pytest.raises(ConfigError, match="unknown stage 'thrid'"):
        run_study("smoke", run_dir=tmp_path/"r", stages_path=stages, only=["thrid"])
    with pytest.raises(ConfigError, match="unknown preset 'smkoe'"):
        run_study("smkoe", run_dir=tmp_path/"r", stages_path=stages)

# --- what a stage reads (issue #11): reads are recorded, an undeclared section fails the stage, a read section keys it

def test_eval_iou_invalidates_00_data():
    "00_data reads `eval.iou` (image-free grounding baselines): changing it must change the stage's key."
    from vlmssm.pipeline import discover_stages, stage_key
    from vlmssm.config import load_config
    data = next(s for s in discover_stages() if s.name == "00_data")
    a = stage_key(data, load_config("smoke"), {})[0]
    assert a != stage_key(data, load_config("smoke", ["eval.iou=0.6"]), {})[0], "stale ref_baselines.csv would be reused"

def test_undeclared_read_fails_in_one_line(stages, tmp_path):
    "A stage reading a section it does not declare fails, naming the stage, the key and where to declare it; also inside library calls."
    make_stage(stages, "10_second", "x = ctx.cfg.eval.iou", upstream=["00_first"], uses=["data"])
    with pytest.raises(StageFailed) as e:
        run_study("smoke", run_dir=tmp_path/"run", stages_path=stages, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "stage 10_second" in msg and "'eval.iou'" in msg and "uses" in msg, msg
    make_stage(stages, "10_second", "from vlmssm.config import validate\nvalidate(ctx.cfg)", upstream=["00_first"], uses=["data"])
    with pytest.raises(StageFailed, match=r"stage 10_second .*'pretrain\.batch_size'.*uses"):  # read inside a library function
        run_study("smoke", run_dir=tmp_path/"run", stages_path=stages, progress=False)

def test_swallowed_undeclared_read_is_still_caught(stages, tmp_path):
    "The runner checks the recorded reads after the stage, so a library `except Exception` cannot hide one."
    make_stage(stages, "10_second", "try: ctx.cfg.eval.iou\nexcept Exception: pass\nctx.record(ok=1)", upstream=["00_first"], uses=["data"])
    with pytest.raises(StageFailed, match=r"stage 10_second read undeclared config section\(s\) eval \(eval.iou\)"):
        run_study("smoke", run_dir=tmp_path/"run", stages_path=stages, progress=False)

def test_a_read_section_change_reruns(stages, tmp_path, capsys):
    rd = tmp_path/"run"
    make_stage(stages, "10_second", "ctx.record(iou=ctx.cfg.eval.iou)", upstream=["00_first"], uses=["data", "eval"])
    assert list(run_study("smoke", run_dir=rd, stages_path=stages, progress=False).status) == ["ran", "ran"]
    m = json.loads((rd/"10_second"/"manifest.json").read_text())
    assert "eval.iou" in m["config_reads"] and "data" not in {k.split(".")[0] for k in m["config_reads"]}
    capsys.readouterr()
    t = run_study("smoke", run_dir=rd, stages_path=stages, progress=False, overrides=["eval.iou=0.6"])
    assert list(t.status) == ["skipped", "ran"]
    assert "10_second: running (config eval.iou)" in capsys.readouterr().out
    t = run_study("smoke", run_dir=rd, stages_path=stages, progress=False, overrides=["eval.iou=0.6", "runtime.jobs=2"])
    assert list(t.status) == ["skipped", "skipped"], "runtime settings never enter a key"

# --- interrupted and failed stages resume in their work folder

RESUMABLE = ("m = ctx.out/'partial.txt'\nfirst = not m.exists()\nm.write_text('finished work')\nctx.record(resumed=not first)\n"
             "if first: raise RuntimeError('interrupted')")

def test_failed_stage_resumes_its_work(stages, tmp_path, capsys):
    rd = tmp_path/"run"
    make_stage(stages, "10_second", RESUMABLE, upstream=["00_first"])
    with pytest.raises(StageFailed, match="RuntimeError: interrupted"): run_study("smoke", run_dir=rd, stages_path=stages, progress=False)
    t = run_study("smoke", run_dir=rd, stages_path=stages, progress=False)
    assert list(t.status) == ["skipped", "ran"]
    assert json.loads((rd/"10_second"/"summary.json").read_text()) == {"resumed": True}, "the rerun must continue in the partial folder"
    assert "resuming in .10_second." in capsys.readouterr().out
    assert not [p for p in rd.iterdir() if p.name.startswith(".")], "work folders left behind"

def test_killed_stage_resumes_and_stale_folders_go(stages, tmp_path, capsys):
    rd = tmp_path/"run"
    body = ("import time\nif (ctx.out/'started').exists(): ctx.record(resumed=True)\n"
            "else:\n    (ctx.out/'started').write_text('x'); ctx.record(started=True); time.sleep(120)")
    make_stage(stages, "20_slow", body, upstream=[], uses=["data"])
    code = f"from vlmssm.pipeline import run_study\nrun_study('smoke', run_dir={str(rd)!r}, stages_path={str(stages)!r}, progress=False)"
    p = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline and not list(rd.glob(".20_slow.*.tmp/summary.json")): time.sleep(0.5)
    assert list(rd.glob(".20_slow.*.tmp/summary.json")), "the slow stage never started"
    os.killpg(p.pid, signal.SIGKILL); p.wait(30)
    for stale in (".20_slow.0123456789abcdef.tmp", ".20_slow.tmp-99", ".20_slow.x1.old", ".failed-20_slow"): (rd/stale).mkdir()
    capsys.readouterr()
    t = run_study("smoke", run_dir=rd, stages_path=stages, progress=False)
    assert list(t.status) == ["skipped", "skipped", "ran"], "finished stages survive a killed run"
    assert json.loads((rd/"20_slow"/"summary.json").read_text()) == {"resumed": True}
    out = capsys.readouterr().out
    assert "removed stale .20_slow.0123456789abcdef.tmp" in out and "removed stale .failed-20_slow" in out, out
    assert not [p.name for p in rd.iterdir() if p.name.startswith(".")], "stale folders left behind"

def test_force_starts_afresh(stages, tmp_path):
    rd = tmp_path/"run"
    make_stage(stages, "10_second", RESUMABLE, upstream=["00_first"])
    with pytest.raises(StageFailed): run_study("smoke", run_dir=rd, stages_path=stages, progress=False)
    with pytest.raises(StageFailed, match="interrupted"):  # --force discards the partial folder: the first attempt again
        run_study("smoke", run_dir=rd, stages_path=stages, progress=False, force=True)

def test_console_gets_no_kernel_startup_warnings(tmp_path, capfd):
    "The stage kernel's own start-up warnings (e.g. 'Kernel is running over TCP without encryption') do not reach the console."
    d = tmp_path/"stages"; d.mkdir()
    make_stage(d, "00_first", WRITE)
    run_study("smoke", run_dir=tmp_path/"run", stages_path=d, progress=False)
    err = capfd.readouterr().err
    assert "Kernel is running over TCP without encryption" not in err, err[-500:]   # (kernel errors still reach the console)

# --- live progress (issue #12): the stage's kernel and its worker processes report; the manifest keeps the last state

PROGRESS = ("from functools import partial\nfrom vlmssm.utils import Progress, process_pool, report_progress\n"
            "runs = Progress('runs', total=2)\n"
            "with process_pool(1) as ex:  # a spawned worker, as VLM runs and pretraining use\n"
            "    for i, r in enumerate(ex.map(partial(report_progress, done=5, total=5, unit='step', parent='runs'), ['a-s7', 'b-s7']), 1): runs.update(i)\n"
            "ctx.record(ok=1)")

def test_stage_progress_reaches_the_runner(stages, tmp_path):
    "Progress reported in the kernel and in a spawned worker goes to the runner's folder; the manifest records the last state."
    rd = tmp_path/"run"
    make_stage(stages, "10_second", PROGRESS, upstream=["00_first"])
    before = os.environ.get("VLMSSM_PROGRESS_DIR")
    run_study("smoke", run_dir=rd, stages_path=stages, progress=False)
    m = json.loads((rd/"10_second"/"manifest.json").read_text())
    tasks = {t["task"]: t for t in m["progress"]["tasks"]}
    assert (tasks["runs"]["done"], tasks["runs"]["total"]) == (2, 2)
    assert {k: (tasks[k]["parent"], tasks[k]["done"], tasks[k]["total"], tasks[k]["unit"]) for k in ("a-s7", "b-s7")} == \
        {"a-s7": ("runs", 5, 5, "step"), "b-s7": ("runs", 5, 5, "step")}, "the worker's reports"
    assert m["progress"]["line"].endswith("runs 2/2") and "cell " in m["progress"]["line"], m["progress"]["line"]
    assert not [f for f in m["files"] if f["path"].startswith(".progress")] and not (rd/"10_second"/".progress").exists()
    assert os.environ.get("VLMSSM_PROGRESS_DIR") == before, "the runner restores the environment"
    assert json.loads((rd/"00_first"/"manifest.json").read_text())["progress"]["tasks"] == [], "a stage that reports nothing"
