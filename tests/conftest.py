"Shared pytest set-up: one thread per process (the CPU is small), repo paths."
import os
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]

@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT

@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    "The whole smoke study, run once per session through the runner: (run dir, the runner's table)."
    from vlmssm.pipeline import run_study
    rd = tmp_path_factory.mktemp("smoke")/"run"
    table = run_study("smoke", run_dir=rd, progress=False, overrides=["paths.figures_dir=" + str(rd/"figures")])
    return rd, table
