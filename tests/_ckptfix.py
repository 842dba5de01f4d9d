"Checkpoint files in every layout the families meet, and in every way a file can be broken or hostile (test_vmamba/mambavision/vim)."
import os, pickle
import pytest
import torch
from safetensors.torch import save_file
from vlmssm.backbones.core import WeightsError


class CodeRunner:
    "Unpickling this runs a shell command that creates `marker`: what a hostile checkpoint would do."
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (os.system, (f"touch {self.marker}",))


def layouts(tmp, sd: dict) -> dict:
    "The same weights as a release or a training script writes them: {file name: path}."
    ddp = {"module." + k: v for k, v in sd.items()}
    contents = {"flat.pth": sd, "release.pth": {"model": sd, "optimizer": {}, "epoch": 3},
                "mmdet.pth.tar": {"meta": {"epoch": 12}, "state_dict": sd}, "ddp.pth": {"model": ddp}}
    out = {}
    for name, obj in contents.items(): torch.save(obj, tmp / name); out[name] = tmp / name
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp / "flat.safetensors")); out["flat.safetensors"] = tmp / "flat.safetensors"
    return out


def broken(tmp, sd: dict) -> dict:
    "Files that must be refused: {file name: (path, what the one-line error says)}."
    torch.save({"model": sd}, tmp / "whole.pth"); save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp / "whole.safetensors"))
    (tmp / "zero.pth").touch()
    for ext in ("pth", "safetensors"):                                      # an interrupted download: the first half
        whole = (tmp / f"whole.{ext}").read_bytes(); (tmp / f"truncated.{ext}").write_bytes(whole[: len(whole) // 2])
    (tmp / "notes.pth").write_text("these are not weights\n" * 20)
    torch.save({"model": sd, "hook": CodeRunner(tmp / "pwned")}, tmp / "hostile.pth")
    return {"zero.pth": "empty file (0 bytes", "truncated.pth": "truncated or corrupt?", "truncated.safetensors": "truncated or corrupt?",
            "notes.pth": "not a readable checkpoint", "hostile.pth": "refusing to unpickle posix.system",
            "missing.pth": "weights file not found"}


def check_load_pretrained(load, same, tmp, sd: dict):
    """Every layout loads through `load(path)` (a family's `load_pretrained`) to the same tensors (`same(model)`); every broken
    or hostile file is one `WeightsError` line naming the file, and the hostile one runs nothing (a naive `torch.load` would)."""
    for name, path in layouts(tmp, sd).items(): same(load(path))
    for name, what in broken(tmp, sd).items():
        with pytest.raises(WeightsError) as e: load(tmp / name)
        msg = str(e.value)
        assert "\n" not in msg and name in msg and what in msg, msg
    assert not (tmp / "pwned").exists()                                  # refused without running
    torch.load(tmp / "hostile.pth", weights_only=False)                   # the control: a naive load runs the payload
    assert (tmp / "pwned").exists()
