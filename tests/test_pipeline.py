"The study runner on throwaway stage notebooks: order, skip on rerun, force, one-line failures, atomic outputs."
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
    assert (rd/".failed-10_second"/"10_second.ipynb").exists()

def test_interrupted_stage_leaves_nothing_half_written(stages, tmp_path):
    rd = tmp_path/"run"
    make_stage(stages, "20_slow", "import time\nctx.record(started=True)\ntime.sleep(60)", upstream=[], uses=["data"])
    code = (f"from vlmssm.pipeline import run_study\n"
            f"run_study('smoke', run_dir={str(rd)!r}, stages_path={str(stages)!r}, progress=False)")
    p = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(rd.glob(".20_slow.tmp-*/summary.json")): time.sleep(0.5)
    assert list(rd.glob(".20_slow.tmp-*/summary.json")), "the slow stage never started"
    os.killpg(p.pid, signal.SIGKILL); p.wait(30)
    assert not (rd/"20_slow").exists(), "a killed stage must not appear as finished"
    t = run_study("smoke", run_dir=rd, stages_path=stages, progress=False, only=["first", "second"])
    assert list(t.status) == ["skipped", "skipped"], "finished stages survive a killed run"

def test_bad_inputs_are_one_line(stages, tmp_path):
    with pytest.raises(ConfigError, match="unknown stage 'thrid'"):
        run_study("smoke", run_dir=tmp_path/"r", stages_path=stages, only=["thrid"])
    with pytest.raises(ConfigError, match="unknown preset 'smkoe'"):
        run_study("smkoe", run_dir=tmp_path/"r", stages_path=stages)
