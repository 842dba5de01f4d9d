"vlmssm.connectors / lm / vlm: shapes, prompt format, labels, generation (KV cache, batching), save/load, Prismatic checkpoints, chat."
import json
from pathlib import Path
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from vlmssm.test_utils import FixtureEncoder, QUESTION, colour_pixels as pixels, fixture_tokenizer as tokenizer, tiny_vlm
from vlmssm.backbones.core import WeightsError
from vlmssm.connectors import create_connector, list_connectors
from vlmssm.lm import IGNORE_INDEX, VICUNA_SYSTEM, get_prompt_format, load_lm, LMLoadError
from vlmssm.vlm import VLM, chat, merge_image_tokens, pad_batch

@pytest.fixture(scope="module")
def tok(): return tokenizer()

@pytest.fixture(scope="module")
def vlm(tok):
    v = tiny_vlm(tok, layers=2).eval()
    with torch.no_grad():  # a non-trivial connector so generations depend on the image
        for p in v.connector.parameters(): p.mul_(3)
    return v

PROMPTS = [QUESTION, "Is there a sphere?", "red green blue red green", "What?"]
PX = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))

@pytest.mark.parametrize("cid", list_connectors())
def test_connector_contract(cid):
    c = create_connector(cid, 12, 32, layernorm=True, merge=2, grid=(4, 4))
    assert c(torch.randn(2, 16, 12)).shape == (2, 4, 32)
    a, b = create_connector(cid, 12, 32), create_connector(cid, 12, 32)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))   # seeded by Dv

def test_vicuna_sequence_and_labels(tok):
    fmt = get_prompt_format("vicuna-v15", tok)
    conv = [{"from": "human", "value": "<image>\nq1"}, {"from": "gpt", "value": "red"}, {"from": "human", "value": "q2"}, {"from": "gpt", "value": "blue"}]
    enc = fmt.encode(conv)
    assert tok.decode(enc.input_ids) == f"<s>{VICUNA_SYSTEM} USER: q1 ASSISTANT:red</s>USER: q2 ASSISTANT:blue</s>"
    assert tok.decode([i for i, l in zip(enc.input_ids, enc.labels) if l != IGNORE_INDEX]) == "red</s>blue</s>"
    assert enc.labels[0] == IGNORE_INDEX and enc.image_pos == 1
    assert fmt.prompt_text("<image>\nq1") == f"{VICUNA_SYSTEM} USER: q1 ASSISTANT:"

def test_image_tokens_after_bos_and_masked(vlm, tok):
    enc = vlm.fmt.encode([{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "red"}])
    b = pad_batch([enc], tok.pad_token_id)
    emb, mask, lab = vlm.embed(b["input_ids"], b["attention_mask"], b["image_pos"], b["labels"], pixel_values=PX[:1])
    img = vlm.connector(vlm.encoder(PX[:1]))
    assert torch.allclose(emb[0, 1:17], img[0]) and torch.equal(emb[0, 0], vlm.lm.get_input_embeddings().weight[tok.bos_token_id])
    assert (lab[0, :17] == IGNORE_INDEX).all() and mask.sum() == len(enc.input_ids) + 16

def test_freeze_stages(tok):
    v = tiny_vlm(tok)
    rows = {r["module"]: r["trainable"] for r in v.freeze("align", verbose=False)}
    assert rows == {"encoder": False, "connector": True, "lm": False}
    rows = {r["module"]: r["trainable"] for r in v.freeze("full-finetune", verbose=False)}
    assert all(rows.values())
    with pytest.raises(ValueError, match="unknown stage"): v.freeze("stage2")

def test_batched_generation_equals_batch_of_one(vlm):
    batched = vlm.generate(PROMPTS, pixel_values=PX, max_new_tokens=8)
    single = [vlm.generate([p], pixel_values=PX[i:i + 1], max_new_tokens=8)[0] for i, p in enumerate(PROMPTS)]
    assert batched == single and any(batched)
    pb = vlm.score_options(PROMPTS, ["red", "green", "blue"], pixel_values=PX)
    ps = torch.cat([vlm.score_options([p], ["red", "green", "blue"], pixel_values=PX[i:i + 1]) for i, p in enumerate(PROMPTS)])
    assert torch.allclose(pb, ps, atol=1e-5) and torch.allclose(pb.sum(-1), torch.ones(4))

def test_option_scoring_is_renormalised_first_token_softmax(vlm):
    ids = vlm.option_token_ids(["red", "blue"])
    embeds, mask, _ = vlm._inputs([QUESTION], PX[:1])
    with torch.no_grad(): p = vlm.lm(inputs_embeds=embeds, attention_mask=mask).logits[0, -1].softmax(-1)[ids]
    assert torch.allclose(vlm.score_options([QUESTION], ["red", "blue"], pixel_values=PX[:1])[0], p / p.sum(), atol=1e-5)
    with pytest.raises(ValueError, match="share a first token"): vlm.score_options([QUESTION], ["red", "red"], pixel_values=PX[:1])

def test_save_load_identical_generations(vlm, tmp_path):
    before = vlm.generate(PROMPTS, pixel_values=PX, max_new_tokens=8)
    vlm.freeze("finetune", verbose=False)
    vlm.spec = {"encoder": {"id": "fixture", "weights": ""}, "lm": {"source": "(memory)"}, "resize": "resize-naive"}
    vlm.save_pretrained(tmp_path / "run")
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["parts"] == ["connector", "lm"] and cfg["encoder"]["id"] == "fixture"
    assert {k.split(".")[0] for k in load_file(tmp_path / "run" / "model.safetensors")} == {"connector", "lm"}   # no encoder weights
    loaded = VLM.from_pretrained(tmp_path / "run", encoder=vlm.encoder)
    assert loaded.generate(PROMPTS, pixel_values=PX, max_new_tokens=8) == before
    # chat on the saved run answers like the model
    Image.fromarray((np.random.default_rng(1).random((30, 44, 3)) * 255).astype(np.uint8)).save(tmp_path / "img.png")
    px = vlm.encoder.transform()(Image.open(tmp_path / "img.png").convert("RGB"))[None]
    assert chat(tmp_path / "run", tmp_path / "img.png", QUESTION, max_new_tokens=8, encoder=vlm.encoder) == \
           vlm.generate([QUESTION], pixel_values=px, max_new_tokens=8)[0]

def test_prismatic_checkpoint(vlm, tok, tmp_path):
    (tmp_path / "lm").mkdir(); vlm.lm.save_pretrained(tmp_path / "lm"); tok.save_pretrained(tmp_path / "lm")
    run = tmp_path / "release"; (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": {"vision_backbone_id": "fixture", "llm_backbone_id": "vicuna-v15-7b",
                                                           "arch_specifier": "no-align+gelu-mlp", "image_resize_strategy": "letterbox"}}))
    torch.save({"model": {"projector": vlm.connector.state_dict(), "llm_backbone": {f"llm.{k}": v for k, v in vlm.lm.state_dict().items()}}},
               run / "checkpoints" / "latest-checkpoint.pt")
    pv = VLM.from_prismatic(run, encoder=vlm.encoder, lm=str(tmp_path / "lm"))
    assert pv.generate(PROMPTS, pixel_values=PX, max_new_tokens=8) == vlm.generate(PROMPTS, pixel_values=PX, max_new_tokens=8)
    # weights_only=True: a checkpoint that pickles code is refused
    torch.save({"model": {"projector": vlm.connector.state_dict(), "llm_backbone": {}, "x": Path("/")}}, run / "checkpoints" / "latest-checkpoint.pt")
    with pytest.raises(WeightsError, match="latest-checkpoint.pt: refusing to unpickle pathlib"):
        VLM.from_prismatic(run, encoder=vlm.encoder, lm=str(tmp_path / "lm"))

def test_offline_lm_error_is_one_line():
    with pytest.raises(LMLoadError) as e: load_lm("nobody/missing-model", local_files_only=True)
    assert "\n" not in str(e.value) and "offline" in str(e.value)

def test_merge_handles_rows_without_image():
    E = torch.ones(2, 3, 4); img = torch.full((2, 2, 4), 2.0)
    e, m, l = merge_image_tokens(E, torch.ones(2, 3, dtype=torch.long), img, torch.tensor([1, -1]), torch.zeros(2, 3, dtype=torch.long))
    assert m.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]] and (e[1, 3:] == 0).all() and (l[1, 3:] == IGNORE_INDEX).all()
