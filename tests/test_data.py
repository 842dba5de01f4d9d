"The embedded scene benchmark (vlmssm.data): determinism, geometry, label correctness, balance, formats, safety."
import json, os, pickle, re, shutil
from collections import Counter
from dataclasses import asdict
from pathlib import Path
import numpy as np
import pytest
from PIL import Image
from scipy.stats import chisquare
from vlmssm.config import ConfigError, DataConfig, load_config
from vlmssm.data.scenes import SPLITS, categories, check_data_config, generate_scene, scene_seed
from vlmssm.data.tasks import (BALANCE, FAMILIES, LOCS, RELS, REF_PROMPT, VQA_SUFFIX, Desc, box_from_text, box_to_text,
                               parse_box, relation, resolve, scene_to_tasks, to_conversations)
from vlmssm.data.formats import (DataFormatError, PathEscapeError, read_cls_index, read_coco, read_json, read_llava, read_mask,
                                 read_refcoco, read_seg_folder, read_vqa, write_cls_index, write_coco, write_json, write_llava,
                                 write_mask, write_refcoco, write_vqa)
from vlmssm.data.benchmark import (load_benchmark, ref_baselines, ref_table, tree_hash, vqa_baselines, vqa_table, write_benchmark)

TINY = DataConfig(n_train=16, n_val=4, n_test=10)

@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return write_benchmark(TINY, tmp_path_factory.mktemp("bench")/"scenes", progress=False)

@pytest.fixture(scope="module")
def scenes():
    cfg = DataConfig()
    S = [generate_scene(scene_seed(0, "test", i), cfg) for i in range(400)]
    return cfg, S, [scene_to_tasks(s, cfg) for s in S]

# ---------------------------------------------------------------- determinism

def test_same_seed_same_files(bench, tmp_path):
    h = tree_hash(bench.root)
    again = write_benchmark(DataConfig(**{**asdict(TINY), "workers": 2}), tmp_path/"again", progress=False)
    assert tree_hash(again.root) == h, "same config (any worker count) must give byte-identical files"
    other = write_benchmark(DataConfig(**{**asdict(TINY), "seed": 1}), tmp_path/"other", progress=False)
    assert tree_hash(other.root) != h
    grown = write_benchmark(DataConfig(**{**asdict(TINY), "n_train": 20}), tmp_path/"grown", progress=False)
    for i in range(TINY.n_train):  # growing a split keeps its first scenes
        name = f"images/train/train_{i:06d}.png"
        assert (grown.root/name).read_bytes() == (bench.root/name).read_bytes()
    assert not list(tmp_path.glob(".*tmp*")), "no temporary folders left behind"

def test_jpeg_images(tmp_path):
    b = write_benchmark(DataConfig(n_train=3, n_val=0, n_test=2, image_format="jpg"), tmp_path/"j", progress=False)
    for r in b.coco("train")[0]:
        assert r.file_name.endswith(".jpg") and Image.open(b.root/r.file_name).format == "JPEG"
        assert Image.open(b.root/r.file_name).size == (r.width, r.height)
    assert [l.image for l in b.llava("train")] == [r.file_name for r in b.coco("train")[0]]

def test_overwrite_guard(bench):
    with pytest.raises(FileExistsError, match="exists and is not empty"): write_benchmark(TINY, bench.root, progress=False)

# ---------------------------------------------------------------- geometry: boxes and masks, from the files

def test_boxes_inside_and_masks_consistent(bench):
    for split in SPLITS:
        dets, cats = bench.coco(split)
        assert len(dets) == bench.count(split) and {c["id"] for c in cats} == set(range(1, 37))
        for r in dets:
            stem = Path(r.file_name).stem
            assert Image.open(bench.root/r.file_name).size == (r.width, r.height)
            inst, sem = read_mask(bench.root/f"instances/{split}/{stem}.png"), read_mask(bench.root/f"annotations/{split}/{stem}.png")
            assert inst.shape == sem.shape == (r.height, r.width)
            assert ((inst > 0) == (sem > 0)).all()
            assert sorted(set(np.unique(inst)) - {0}) == [a["instance_id"] for a in sorted(r.attrs, key=lambda a: a["instance_id"])]
            for box, c, area, a in zip(r.boxes, r.category_ids, r.areas, r.attrs):
                x1, y1, x2, y2 = box
                assert 0 <= x1 < x2 <= r.width and 0 <= y1 < y2 <= r.height
                ys, xs = np.nonzero(inst == a["instance_id"])
                assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == box.astype(int).tolist(), "box is tight on the mask"
                assert set(np.unique(sem[inst == a["instance_id"]])) == {c} and area == len(xs)
                assert categories(TINY)[c - 1]["shape"] == a["shape"] and categories(TINY)[c - 1]["color"] == a["color"]

def test_occlusion_knob_keeps_masks_consistent():
    cfg = DataConfig(max_overlap=0.4, min_objects=4, max_objects=5)
    for i in range(30):
        s = generate_scene((3, 0, i), cfg)
        for k, o in enumerate(s.objects):
            ys, xs = np.nonzero(s.instance == k + 1)
            if len(xs):  # visible pixels lie inside the (amodal) box
                assert o.box[0] <= xs.min() and xs.max() < o.box[2] and o.box[1] <= ys.min() and ys.max() < o.box[3]

# ---------------------------------------------------------------- labels are correct, unique and balanced

def _desc(text, cfg):
    "Parse 'the small red circle on the left' / 'the red object' back into a Desc."
    loc = next((k for k, v in LOCS.items() if text.endswith(" " + v)), None)
    if loc: text = text[: -len(LOCS[loc]) - 1]
    w = text.split()
    pick = lambda vocab: next((x for x in w if x in vocab), None)
    return Desc(pick(cfg.size_ranges), pick(cfg.colors), pick(cfg.shapes), loc)

def test_referents_unique(scenes):
    cfg, S, T = scenes
    n = 0
    for s, t in zip(S, T):
        for r in t.refs:
            assert resolve(r.desc, s, cfg.relation_margin) == [r.obj] and _desc(r.sentence, cfg) == r.desc
            assert r.box == s.objects[r.obj].box and r.desc.shape == s.objects[r.obj].shape
            n += 1
    assert n > 600

def test_vqa_answers_are_right(scenes):
    cfg, S, T = scenes
    m = cfg.relation_margin
    for s, t in zip(S, T):
        objs = s.objects
        for q in t.vqa:
            text = q.question
            if q.family == "count":
                w = text[len("How many "):-len(" are there?")].split()
                col = w[0] if w[0] in cfg.colors else None
                shp = next((sh for sh in cfg.shapes if w[-1] in (sh, sh + "s", sh + "es")), None)
                assert q.answer == str(sum((col is None or o.color == col) and (shp is None or o.shape == shp) for o in objs)), text
            elif q.family == "exist":
                c, sh = text[len("Is there a "):-len(" in the image?")].split()
                assert q.answer == ("yes" if any((o.color, o.shape) == (c, sh) for o in objs) else "no")
            elif q.family == "attribute":
                a = q.qtype.split("_")[1]
                d = _desc(re.match(r"What (?:color|shape|size) is (.*)\?$", text)[1], cfg)
                assert getattr(d, a) is None, "the question never names the attribute it asks about"
                (i,) = resolve(d, s, m)
                assert q.answer == getattr(objs[i], a)
            elif q.qtype == "spatial_yn":
                i, j = q.objects
                rel = next(k for k, v in RELS.items() if f" {v} the " in text)
                a_txt, b_txt = text[len("Is "):-1].split(f" {RELS[rel]} ")
                assert resolve(_desc(a_txt, cfg), s, m) == [i] and resolve(_desc(b_txt, cfg), s, m) == [j]
                assert q.answer == ("yes" if relation(objs[i], objs[j], rel, s, m) else "no")
            else:
                i, j = q.objects
                rel = next(k for k, v in RELS.items() if text.startswith(f"What is {v} "))
                assert resolve(_desc(text[len(f"What is {RELS[rel]} "):-1], cfg), s, m) == [j]
                hits = [k for k in range(len(objs)) if k != j and relation(objs[k], objs[j], rel, s, m)]
                assert hits == [i] and q.answer == objs[i].shape

def test_answer_balance(scenes):
    cfg, S, T = scenes
    for fam in FAMILIES:
        items = [q for t in T for q in t.vqa if q.family == fam]
        c = Counter(q.answer for q in items)
        assert len(items) > 300, fam
        if "max_share" in BALANCE[fam]: assert max(c.values())/len(items) <= BALANCE[fam]["max_share"], (fam, c.most_common(3))
        if "yes" in BALANCE[fam]:
            yn = Counter(q.answer for q in items if q.answer_type == "yes/no")
            lo, hi = BALANCE[fam]["yes"]
            assert lo <= yn["yes"]/sum(yn.values()) <= hi, (fam, yn)
    negs = Counter(q.neg_strategy for t in T for q in t.vqa if q.family == "exist" and q.answer == "no")
    assert set(negs) == {"random", "adversarial"} and min(negs.values()) > 100

def test_classification_label_is_largest_and_balanced(scenes):
    cfg, S, T = scenes
    for s, t in zip(S, T):
        areas = sorted(o.area for o in s.objects)
        big = max(s.objects, key=lambda o: o.area)
        assert t.cls["label"] == big.category_id - 1 and t.cls["label_name"] == f"{big.color} {big.shape}"
        assert len(areas) == 1 or areas[-1] >= cfg.largest_margin*areas[-2]
        assert sorted(t.cls["objects"]) == sorted(o.category_id for o in s.objects) and sum(t.cls["shape_counts"]) == len(s.objects)
    counts = Counter(t.cls["label"] for t in T)
    assert chisquare([counts[k] for k in range(36)]).pvalue > 1e-3, "image classes should be uniform"
    assert Counter(len(s.objects) for s in S).keys() == {1, 2, 3, 4, 5}

# ---------------------------------------------------------------- box text

def test_box_text_roundtrip():
    rng = np.random.default_rng(0)
    for _ in range(500):
        W, H = (int(v) for v in rng.integers(16, 400, 2))
        x1, x2 = sorted(rng.uniform(0, W, 2)); y1, y2 = sorted(rng.uniform(0, H, 2))
        if x2 - x1 < 0.02*W or y2 - y1 < 0.02*H: continue
        txt = box_to_text((x1, y1, x2, y2), W, H)
        assert re.fullmatch(r"\[\d\.\d\d, \d\.\d\d, \d\.\d\d, \d\.\d\d\]", txt), txt
        assert parse_box(txt) == [round(v, 2) for v in (x1/W, y1/H, x2/W, y2/H)]
        px = box_from_text(txt, W, H)
        assert all(abs(a - b) <= 0.005*side + 1e-9 for a, b, side in zip(px, (x1, y1, x2, y2), (W, H, W, H)))
    assert box_to_text((0, 0, 96, 64), 96, 64) == "[0.00, 0.00, 1.00, 1.00]", "normalised to the original (non-square) image"
    assert parse_box("[0.1, 0.2, 0.3, 0.4] ") and parse_box("The box: [0.1, 0.2, 0.3, 0.4]") is None and parse_box("[0.3, 0.2, 0.1, 0.4]") is None

def test_files_agree_with_each_other(bench):
    "Ref boxes (RefCOCO JSON) = COCO boxes = the LLaVA grounding answers; VQA ids/images line up."
    coco = {r.image_id: r for r in bench.coco("train")[0]}
    conv = {}
    for rec in bench.llava("train"):
        turns = rec.conversations
        for h, g in zip(turns[::2], turns[1::2]): conv[(rec.image, h["value"].replace("<image>\n", ""))] = g["value"]
    refs = bench.refs("train")
    assert refs
    for r in refs:
        d = coco[r.image_id]
        assert r.box_xyxy in d.boxes.tolist() and (r.width, r.height) == (d.width, d.height)
        assert conv[(r.file_name, REF_PROMPT.format(sentence=r.sentence))] == r.box_text()
    vq = bench.vqa("train")
    assert all(conv[(r.image, r.question + VQA_SUFFIX)] == r.answer for r in vq)
    assert all(r.answers == [r.answer]*10 for r in vq)
    cls = bench.cls("train")
    assert [c.file for c in cls] == [d.file_name for d in coco.values()]
    assert all(sorted(d.category_ids.tolist()) == c.extra["objects"] for c, d in zip(cls, coco.values()))

# ---------------------------------------------------------------- formats round-trip through their readers

def test_every_format_roundtrips(bench, tmp_path):
    ll = bench.llava("train")
    write_llava([{"id": r.id, "image": r.image, "conversations": r.conversations} for r in ll], tmp_path/"l.json")
    assert read_llava(tmp_path/"l.json", bench.root) == ll
    vq = bench.vqa("test")
    write_vqa([dict(question_id=r.question_id, image_id=r.image_id, question=r.question, answer=r.answer, answer_type=r.answer_type,
                    question_type=r.question_type, **r.extra) for r in vq], tmp_path/"q.json", tmp_path/"a.json",
              images=read_json(bench.path("vqa_questions", "test"))["images"], data_subtype="test")
    assert read_vqa(tmp_path/"q.json", tmp_path/"a.json", bench.root) == vq
    assert (tmp_path/"a.json").read_bytes() == bench.path("vqa_annotations", "test").read_bytes()
    raw = read_json(bench.path("coco", "val"))
    write_coco(raw["images"], raw["annotations"], raw["categories"], tmp_path/"c.json")
    a, b = read_coco(tmp_path/"c.json", bench.root), bench.coco("val")
    assert a[1] == b[1] and all(x.image_id == y.image_id and (x.boxes == y.boxes).all() and x.attrs == y.attrs for x, y in zip(a[0], b[0]))
    raw = read_json(bench.path("refcoco"))
    write_refcoco(raw["images"], raw["annotations"], raw["categories"], raw["refs"], tmp_path/"r.json")
    assert read_refcoco(tmp_path/"r.json", bench.root, split="test") == bench.refs("test")
    (tmp_path/"refs(unc).p").write_bytes(pickle.dumps(raw["refs"], protocol=2)); write_coco(raw["images"], raw["annotations"], raw["categories"], tmp_path/"inst.json")
    assert [r.sentence for r in read_refcoco(tmp_path/"refs(unc).p", instances=tmp_path/"inst.json")] == [r.sentence for r in read_refcoco(bench.path("refcoco"))]
    cl = read_cls_index(bench.path("classification"), bench.root)
    write_cls_index([dict(file=c.file, label=c.label, label_name=c.label_name, split=c.split, **c.extra) for c in cl], tmp_path/"c.csv")
    assert (tmp_path/"c.csv").read_bytes() == bench.path("classification").read_bytes()
    for rec in bench.seg("val"):
        m = read_mask(rec.mask)
        assert (read_mask(write_mask(m, tmp_path/"m.png")) == m).all()

# ---------------------------------------------------------------- safety: path escape and malformed files

def test_path_escape_is_refused(tmp_path):
    root = tmp_path/"root"; root.mkdir()
    write_llava([{"id": "x", "image": "../outside.png", "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}], tmp_path/"l.json")
    write_coco([dict(id=1, file_name="/etc/passwd", width=2, height=2)], [], [], tmp_path/"c.json")
    write_refcoco([dict(id=1, file_name="../../x.png", width=2, height=2)], [dict(id=1, image_id=1, category_id=1, bbox=[0, 0, 1, 1])], [],
                  [dict(ref_id=1, ann_id=1, image_id=1, split="val", sentences=[dict(sent_id=1, sent="x")])], tmp_path/"r.json")
    write_vqa([dict(question_id=1, image_id=1, question="q", answer="a", answer_type="other", question_type="t")], tmp_path/"q.json",
              tmp_path/"a.json", images=[dict(id=1, file_name="a/../../x.png", width=2, height=2)])
    (tmp_path/"c.csv").write_text("file,label\n../x.png,0\n")
    os.symlink("/etc", root/"link")
    for f in [lambda: read_llava(tmp_path/"l.json", root), lambda: read_coco(tmp_path/"c.json", root),
              lambda: read_refcoco(tmp_path/"r.json", root), lambda: read_vqa(tmp_path/"q.json", tmp_path/"a.json", root),
              lambda: read_cls_index(tmp_path/"c.csv", root), lambda: read_seg_folder(root, "../.."),
              lambda: read_seg_folder(root, "x", images="link")]:
        with pytest.raises(PathEscapeError, match="escapes its root") as e: f()
        assert "\n" not in str(e.value)

@pytest.mark.parametrize("reader", ["llava", "vqa", "coco", "refcoco", "benchmark"])
def test_malformed_json_one_line(tmp_path, reader):
    bad = tmp_path/"bad.json"; bad.write_text('[{"id": "x", "conversations": [\n  {"from": "human",\n')
    call = dict(llava=lambda: read_llava(bad), vqa=lambda: read_vqa(bad), coco=lambda: read_coco(bad),
                refcoco=lambda: read_refcoco(bad), benchmark=lambda: load_benchmark(tmp_path))[reader]
    if reader == "benchmark": shutil.copy(bad, tmp_path/"benchmark.json")
    with pytest.raises(DataFormatError) as e: call()
    msg = str(e.value)
    assert "\n" not in msg and "invalid JSON at line" in msg and ("bad.json" in msg or "benchmark.json" in msg)

def test_wrong_structure_names_record(tmp_path):
    write_json([{"id": "a", "image": "x.png", "conversations": [{"from": "human", "value": 3}]}], tmp_path/"l.json")
    with pytest.raises(DataFormatError, match=r"l.json: record 0 \(id 'a'\) turn 0: 'value' should be str, got int"): read_llava(tmp_path/"l.json")
    write_json({"images": [], "annotations": [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}], "categories": []}, tmp_path/"c.json")
    with pytest.raises(DataFormatError, match="annotations\\[0\\]: image_id 1 is not in 'images'"): read_coco(tmp_path/"c.json")
    with pytest.raises(DataFormatError, match="not found"): read_vqa(tmp_path/"missing.json")

def test_benchmark_version_checked(bench, tmp_path):
    meta = dict(bench.meta, version=99)
    write_json(meta, tmp_path/"benchmark.json")
    with pytest.raises(DataFormatError, match="version 99"): load_benchmark(tmp_path)
    assert load_benchmark(bench.root).config == TINY

# ---------------------------------------------------------------- config and baselines

def test_config_checks():
    with pytest.raises(ConfigError, match="data.colors': unknown colour 'reed'"): check_data_config(DataConfig(colors=["reed"]))
    with pytest.raises(ConfigError, match="data.image_sizes"): check_data_config(DataConfig(image_sizes=[[8, 8]]))
    with pytest.raises(ConfigError, match="unknown config key 'data.n_trian'"): load_config("smoke", ["data.n_trian=3"])
    for preset in ("smoke", "default"): check_data_config(load_config(preset).data)

def test_baselines_are_sane(bench):
    tr, te = vqa_table(bench, "train"), vqa_table(bench, "test")
    b = vqa_baselines(tr, te).set_index(["family", "qtype"])
    assert set(b.index.get_level_values(0)) == set(FAMILIES) | {"all"}
    for col in ("majority_acc", "blind_template_acc", "blind_question_acc", "top_share"): assert b[col].between(0, 1).all()
    assert b.loc[("exist", "all"), "yes_share"] == 0.5
    r = ref_baselines(ref_table(bench, "train"), ref_table(bench, "test")).iloc[0]
    assert r["n"] == bench.count("test", "refs") and 0 <= r["mean_box_acc"] <= 1
