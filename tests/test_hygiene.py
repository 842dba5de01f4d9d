"The library is exactly what the notebooks export, and the notebooks are clean (nbdev_export / nbdev_clean change nothing)."
import os, shutil, subprocess, sys, filecmp
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

def _copy(tmp: Path) -> Path:
    dst = tmp/"repo"; dst.mkdir()
    for name in ("settings.ini", "pyproject.toml"): shutil.copy(ROOT/name, dst/name)
    shutil.copytree(ROOT/"nbs", dst/"nbs", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    shutil.copytree(ROOT/"vlmssm", dst/"vlmssm", ignore=shutil.ignore_patterns("__pycache__"))
    return dst

def _diff(a: Path, b: Path, pattern: str) -> list[str]:
    out = []
    for p in sorted(a.rglob(pattern)):
        if "__pycache__" in p.parts or ".ipynb_checkpoints" in p.parts: continue
        q = b/p.relative_to(a)
        if not q.exists() or not filecmp.cmp(p, q, shallow=False): out.append(str(p.relative_to(a)))
    out += [str(q.relative_to(b)) for q in sorted(b.rglob(pattern)) if "__pycache__" not in q.parts and not (a/q.relative_to(b)).exists()]
    return out

def _run(cmd, cwd):
    env = {k: v for k, v in os.environ.items() if k != "IN_TEST"}  # nbdev_export is a no-op under IN_TEST
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{cmd[0]} failed: {r.stderr[-2000:]}"

def test_export_changes_nothing(tmp_path):
    work = _copy(tmp_path)
    _run([str(BIN/"nbdev_export")], work)
    changed = _diff(ROOT/"vlmssm", work/"vlmssm", "*.py")
    assert not changed, f"nbdev_export changed {changed}: vlmssm/ was edited by hand or not re-exported"

def test_clean_changes_nothing(tmp_path):
    work = _copy(tmp_path)
    _run([str(BIN/"nbdev_clean")], work)
    changed = _diff(ROOT/"nbs", work/"nbs", "*.ipynb")
    assert not changed, f"nbdev_clean changed {changed}: run nbdev_clean and commit"

def test_stage_parameters_tag_survives_clean():
    import json
    for p in sorted((ROOT/"nbs"/"stages").glob("*.ipynb")):
        tags = [t for c in json.loads(p.read_text())["cells"] for t in c.get("metadata", {}).get("tags", [])]
        assert "parameters" in tags, f"{p.name}: no cell tagged 'parameters'"

def test_settings_ini_drives_nbdev():
    from nbdev.config import get_config
    cfg = get_config(path=ROOT)
    assert cfg.lib_name == "vlmssm" and cfg.allowed_cell_metadata_keys == "tags"
    assert (ROOT/"nbs"/"stages"/".notest").exists()
