"Test fixtures for the VLM tests (test_vlm.py, test_train.py): a stand-in encoder, a tiny LM and a colour task."
import numpy as np
import torch
import torch.nn as nn
from vlmssm.config import EmbeddedLMConfig, TrainConfig
from vlmssm.connectors import create_connector
from vlmssm.lm import build_tokenizer, tiny_llama
from vlmssm.vlm import VLM

class FixtureEncoder(nn.Module):
    "Test fixture (not a study encoder): 8×8 patches of a 32×32 image → a 4×4 grid of 12-wide tokens."
    embed_dim = 12
    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.proj = nn.Conv2d(3, 12, 8, 8)
        with torch.no_grad():
            for p in self.proj.parameters(): p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    def forward(self, x): return self.proj(x).flatten(2).transpose(1, 2)
    def num_tokens(self, h, w): return (h // 8) * (w // 8)
    def grid(self, h, w): return (h // 8, w // 8)
    def transform(self, strategy="resize-naive"):
        import torchvision.transforms.v2 as T
        return T.Compose([T.Resize((32, 32)), T.ToImage(), T.ToDtype(torch.float32, scale=True)])

COLOURS = {"red": (1., 0., 0.), "green": (0., 1., 0.), "blue": (0., 0., 1.)}
QUESTION = "What colour is it?"

def records(n: int) -> list[dict]:
    "Colour-task records: the answer is the image's colour (only a model that looks can get it right)."
    return [{"id": str(i), "image": list(COLOURS)[i % 3], "conversations": [
        {"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": list(COLOURS)[i % 3]}]} for i in range(n)]

def pixels(name: str) -> torch.Tensor:
    return torch.tensor(COLOURS[name]).view(3, 1, 1).expand(3, 32, 32).clone()

def tokenizer():
    return build_tokenizer([f"{QUESTION} red green blue", "Is there a sphere? yes no", "[0.25, 0.50, 0.75, 1.00]"] * 40,
                           vocab_size=320, min_frequency=1)

def tiny_vlm(tok, blind: bool = False, layers: int = 1) -> VLM:
    lm = tiny_llama(tok, EmbeddedLMConfig(hidden_size=32, intermediate_size=64, num_heads=2, num_layers=layers), seed=0)
    return VLM(lm, tok) if blind else VLM(lm, tok, create_connector("gelu-mlp", 12, 32), FixtureEncoder())

CFG = TrainConfig(steps=12, global_batch=16, per_device_batch=8, lr=3e-3, weight_decay=0.0, save_every=2)
