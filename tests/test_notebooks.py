"Every library notebook runs top to bottom (its assert cells are its unit tests), through nbdev's own runner."
from pathlib import Path
import pytest
from nbdev.test import test_nb as _run_nb  # aliased so pytest does not collect it

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for p in (ROOT/"nbs").glob("*.ipynb") if not p.name.startswith(("_", ".")))

@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_library_notebook(nb: Path):
    ok, _ = _run_nb(nb, skip_flags=["notest", "slow", "cuda"], force_flags=[], showerr=True, basepath=ROOT)
    assert ok, f"{nb.name} failed (traceback above)"

def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 3
