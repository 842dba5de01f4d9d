"Training under several processes (DDP, gloo on CPU through accelerate) against one process: same global batches, same curve, same model."
import json, os, subprocess, sys
from pathlib import Path
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

SCRIPT = """
import sys
from vlmssm.config import TrainConfig
from vlmssm.test_utils import colour_pixels as pixels, colour_records as records, fixture_tokenizer as tokenizer, tiny_vlm
from vlmssm.train import ConversationDataset, train
cfg = TrainConfig(steps=6, global_batch=16, per_device_batch=8, lr=3e-3, weight_decay=0.0, save_every=3, precision="fp32")
v = tiny_vlm(tokenizer())
train(v, ConversationDataset(records(48), v.fmt), cfg, sys.argv[1], pixels=pixels, progress=False, device="cpu")
"""

def _launch(tmp_path, out, procs):
    script = tmp_path / "train_fixture.py"; script.write_text(SCRIPT)
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(script), str(out)] if procs == 1 else \
          [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", str(script), str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]

def test_two_processes_train_like_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _launch(tmp_path, one, 1); _launch(tmp_path, two, 2)
    a, b = pd.read_csv(one / "loss.csv"), pd.read_csv(two / "loss.csv")
    assert list(b.step) == list(range(1, 7))                       # one writer: no duplicated rows
    assert (a.targets == b.targets).all() and (a.examples == b.examples).all()   # the same global batches
    assert (a.loss - b.loss).abs().max() < 1e-4, (a.loss - b.loss).abs().max()  # the global loss, all-reduced
    assert json.loads((two / "summary.json").read_text())["processes"] == 2
    wa, wb = load_file(one / "model" / "model.safetensors"), load_file(two / "model" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
    from vlmssm.vlm import VLM
    from vlmssm.test_utils import COLOURS, QUESTION, FixtureEncoder, colour_pixels
    px = torch.stack([colour_pixels(c) for c in COLOURS])
    ans = [VLM.from_pretrained(d / "model", encoder=FixtureEncoder()).generate([QUESTION] * len(COLOURS), pixel_values=px, max_new_tokens=3) for d in (one, two)]
    assert ans[0] == ans[1]
