"Live progress: status files written by `vlmssm.utils.Progress`, the line the runner renders from them, and the console."
import io, json, os
from pathlib import Path
import pytest
from vlmssm.utils import PROGRESS_ENV, Progress, read_progress, report_progress
from vlmssm.pipeline import ProgressConsole, progress_line

def write_status(folder: Path, **s):
    "A fake status file, as a `Progress` in some process would write it."
    name = (f"{s['parent']}." if s.get("parent") else "") + s["task"] + ".json"
    (folder/name).write_text(json.dumps(s))

@pytest.fixture
def fake(tmp_path):
    "A 30_vlm_train in the middle of its runs: 2 of 6 runs done, two running in live workers, one in a dead one."
    t0 = 10_000.0
    write_status(tmp_path, task="LM + feature caches", done=0, total=None, started=t0, pid=os.getpid())
    write_status(tmp_path, task="runs", done=2, total=6, started=t0 + 100, pid=os.getpid())
    write_status(tmp_path, task="vmamba-pico-s8", parent="runs", unit="step", done=750, total=1500, started=t0 + 500, pid=101)
    write_status(tmp_path, task="blind-s7", parent="runs", unit="step", done=0, detail="validating", started=t0 + 400, pid=102)
    write_status(tmp_path, task="vit-pico-s8", parent="runs", unit="step", done=100, total=1500, started=t0 + 510, pid=666)
    write_status(tmp_path, task="vit-pico-s7", parent="runs", unit="step", done=1500, total=1500, started=t0 + 300, pid=101)
    return tmp_path, t0

def test_rendered_line_from_status_files(fake):
    folder, t0 = fake
    st = read_progress(folder)
    assert [s["task"] for s in st][:2] == ["LM + feature caches", "runs"], "oldest task first"
    alive = lambda pid: pid != 666
    # the current task (started last) with its running parts in live processes, oldest first; finished and dead ones drop out
    # ETA: 2 runs + half of one = 2.5 of 6 done in 900 s → 3.5 × 360 s = 1,260 s = 21 min
    assert progress_line(st, now=t0 + 1000, alive=alive) == "runs 2/6 · blind-s7 (validating) · vmamba-pico-s8 step 750/1500 · ETA 21 min"
    assert progress_line(st, now=t0 + 1000, alive=lambda pid: True).count("vit-pico-s8 step 100/1500") == 1  # alive: shown

def test_console_line_tty_and_log(fake):
    folder, t0 = fake
    tty = io.StringIO()
    con = ProgressConsole(folder, "[3/3] 30_vlm_train", stream=tty, tty=True)
    con.cells.write("\r5/14")
    con.tick(now=con.t0 + 125)
    out = tty.getvalue()
    assert out.startswith("\r\x1b[2K[3/3] 30_vlm_train 2:05 · cell 6/14 · runs 2/6 · ") and "\n" not in out, out
    con.tick(now=con.t0 + 125.2); assert tty.getvalue() == out, "an unchanged line is not rewritten"
    log = io.StringIO()
    con = ProgressConsole(folder, "[3/3] 30_vlm_train", stream=log, tty=False, every=30)
    for dt in (0, 1, 2): con.tick(now=con.t0 + dt)
    assert log.getvalue().count("\n") == 1 and log.getvalue().startswith("[3/3] 30_vlm_train 0:00 · runs 2/6"), log.getvalue()

def test_progress_files_are_atomic_json_and_noop_without_runner(tmp_path, monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    assert Progress("runs", total=3).update(1).path is None and not list(tmp_path.iterdir())
    monkeypatch.setenv(PROGRESS_ENV, str(tmp_path/"progress"))
    p = Progress("encoders", total=2, every=0)
    r = report_progress("vit-pico", 40, 600, unit="step", parent="encoders", every=0)
    p.update(1); report_progress("vit-pico", 600, parent="encoders")
    files = sorted(x.name for x in (tmp_path/"progress").iterdir())
    assert files == ["encoders.json", "encoders.vit-pico.json"], files   # no temporaries left behind
    st = {s["task"]: s for s in read_progress(tmp_path/"progress")}
    assert (st["encoders"]["done"], st["vit-pico"]["done"], st["vit-pico"]["total"], st["vit-pico"]["parent"]) == (1, 600, 600, "encoders")
    assert r is report_progress("vit-pico", 600, parent="encoders"), "one reporter per task"

def test_reporting_survives_a_removed_folder(tmp_path):
    "The runner removes the progress folder when a stage ends; a late report must not fail the work."
    import shutil
    p = Progress("runs", total=2, folder=tmp_path/"progress", every=0)
    shutil.rmtree(tmp_path/"progress")
    (tmp_path/"progress").write_text("not a folder")   # the worst case: the path now names a file
    p.update(2)
    assert p.path is None
