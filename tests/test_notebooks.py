"""Every library notebook runs top to bottom (its assert cells are its unit tests), through nbdev's own runner.

Each notebook runs in its own interpreter: notebooks register models with timm and other global registries, and
re-registering their own copies in this process would change the classes later tests see."""
import os, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for p in (ROOT/"nbs").glob("*.ipynb") if not p.name.startswith(("_", ".")))
RUN = ("import sys; from pathlib import Path; from nbdev.test import test_nb as run\n"
       "ok, secs = run(Path(sys.argv[1]), skip_flags=['notest', 'slow', 'cuda'], force_flags=[], showerr=True, basepath=Path(sys.argv[2]))\n"
       "print(f'{sys.argv[1]}: {secs:.1f}s'); sys.exit(0 if ok else 1)")

@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_library_notebook(nb: Path):
    r = subprocess.run([sys.executable, "-c", RUN, str(nb), str(ROOT)], capture_output=True, text=True, timeout=900,
                       env=os.environ | {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    assert r.returncode == 0, f"{nb.name} failed:\n{(r.stdout + r.stderr)[-6000:]}"

def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 3
