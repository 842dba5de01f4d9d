"Plumbing contracts over the whole package: one atomic-write implementation, safe checkpoint loading."
import re
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "vlmssm"
RAW_WRITES = re.compile(r"\bos\.(replace|rename)\(|\bmkdtemp\(|\bmkstemp\(|NamedTemporaryFile\(")

def _sources():
    return [p for p in sorted(PKG.rglob("*.py")) if p.name != "_modidx.py"]

def test_atomic_writes_only_in_utils():
    "Every atomic file or folder write goes through `vlmssm.utils` (no hand-written temp + rename elsewhere)."
    bad = [f"{p.relative_to(PKG)}:{i}" for p in _sources() if p.name != "utils.py"
           for i, line in enumerate(p.read_text().splitlines(), 1) if RAW_WRITES.search(line)]
    assert not bad, f"hand-written atomic writes outside vlmssm.utils: {bad}"

def test_torch_load_is_weights_only():
    "Checkpoints load with `torch.load(..., weights_only=True)` (or safetensors); a full unpickle only behind `allow_unsafe_pickle`."
    bad = []
    for p in _sources():
        if p.name == "test_utils.py": continue  # its hostile-checkpoint fixture unpickles on purpose, as the control
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if "torch.load(" in line and "weights_only=True" not in line and not ("weights_only=False" in line and "if allow_unsafe_pickle" in line):
                bad.append(f"{p.relative_to(PKG)}:{i}")
    assert not bad, f"torch.load without weights_only=True: {bad}"
