"The `vlmssm` console script as a user calls it."
import subprocess, sys
from pathlib import Path

BIN = Path(sys.executable).parent/"vlmssm"

def run(*args, cwd=None):
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=300, cwd=cwd)

def test_help_everywhere():
    r = run("--help"); assert r.returncode == 0 and "study" in r.stdout
    for cmd in ("study", "stages", "presets", "config", "encoders", "chat", "score"):
        r = run(cmd, "--help"); assert r.returncode == 0 and "usage: vlmssm " + cmd in r.stdout, (cmd, r.stderr)

def test_stages_and_presets():
    r = run("stages"); assert r.returncode == 0 and "00_data" in r.stdout
    r = run("presets"); assert r.returncode == 0 and all(p in r.stdout for p in ("smoke", "default", "paper"))

def test_user_errors_are_one_line(tmp_path):
    cases = [(("study", "--preset", "smokee"), "unknown preset 'smokee'"),
             (("study", "--preset", "smoke", "--only", "dtaa", "--run_dir", str(tmp_path)), "unknown stage 'dtaa'"),
             (("config", "--preset", "smoke", "--set", "train.lr=fast"), "config key 'train.lr': expected float"),
             (("config", "--preset", "paper"), "missing path(s) or weight(s)"),
             (("nosuch",), "unknown command 'nosuch'"),
             (("chat", "--run", str(tmp_path)), "missing --image"),
             (("score", str(tmp_path/"nope.jsonl")), "predictions: " + str(tmp_path/"nope.jsonl") + " not found")]
    bad = tmp_path/"bad.yaml"; bad.write_text("inherit: smoke\ndata: {n_trian: 3}\n")
    cases.append((("config", "--preset", str(bad)), "unknown config key 'data.n_trian' (did you mean 'n_train'?)"))
    for args, msg in cases:
        r = run(*args)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        assert msg in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, (args, r.stderr)

def test_hyphenated_options(tmp_path):
    "Options take the spelling people type (`--run-dir`, `--max-new-tokens`) as well as the parameter's own."
    r = run("study", "--preset", "smoke", "--only", "dtaa", "--run-dir", str(tmp_path))
    assert r.returncode == 2 and "unknown stage 'dtaa'" in r.stderr, r.stderr       # parsed: the run dir was accepted
    r = run("chat", "--run", str(tmp_path), "--max-new-tokens", "4")
    assert r.returncode == 2 and "missing --image" in r.stderr, r.stderr
