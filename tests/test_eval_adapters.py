"Real-benchmark adapters (vlmssm.evals.adapters): official-format samples → items → made-up predictions → official scores."
import json, pickle
import pytest
from vlmssm.data.formats import DataFormatError, PathEscapeError
from vlmssm.evals.adapters import get_task, list_tasks
from vlmssm.evals.core import score_items, with_resize

def wjson(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path

def wlines(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path

def scores(task, root, preds, **kw):
    items = get_task(task).load(root, **kw)
    return items, score_items(items, preds)

# --- the interface the evaluation stage uses -------------------------------------------------------------------------
def test_registry_interface():
    assert list_tasks() == ["vqav2", "gqa", "vizwiz", "textvqa", "pope", "vsr", "tallyqa", "ai2d", "refcoco", "refcoco+",
                            "refcocog", "ocid-ref", "scenes"]
    t = get_task("vqav2")
    assert (t.name, t.group, t.metric, t.tau) == ("vqav2", "vqa", "vqa", None)
    assert {get_task(n).tau for n in ("refcoco", "refcoco+", "refcocog")} == {0.5} and get_task("ocid-ref").tau == 0.25
    assert all(get_task(n).group == "loc" for n in list_tasks("loc")) and len(list_tasks("vqa")) == 8
    with pytest.raises(KeyError, match="did you mean 'ocid-ref'"): get_task("ocidref")

# --- VQA: soft accuracy and exact match, hand-computed --------------------------------------------------------------
def test_vqav2(tmp_path):
    wjson(tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json", {"data_subtype": "val2014", "questions": [
        {"image_id": 1, "question": "What is it?", "question_id": 11}, {"image_id": 1, "question": "How many?", "question_id": 12}]})
    ans = lambda xs: [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(xs)]
    wjson(tmp_path / "v2_mscoco_val2014_annotations.json", {"annotations": [
        {"question_id": 11, "image_id": 1, "question_type": "what", "answer_type": "other", "multiple_choice_answer": "t shirt",
         "answers": ans(["t shirt"] + ["shirt"] * 9)},
        {"question_id": 12, "image_id": 1, "question_type": "how many", "answer_type": "number", "multiple_choice_answer": "4",
         "answers": ans(["4"] * 2 + ["5"] * 8)}]})
    items, rows = scores("vqav2", tmp_path, ["The T-shirt.", "four"])
    assert items[0].image == "val2014/COCO_val2014_000000000001.jpg" and [i.family for i in items] == ["other", "number"]
    # "The T-shirt." → "t shirt": 1 match → 9 subsets keep it → 9·(1/3)/10 = 0.3; "four" → "4": 2 matches → (2·1/3 + 8·2/3)/10 = 0.6
    assert rows.score.tolist() == pytest.approx([0.3, 0.6])

def test_gqa_vizwiz_textvqa(tmp_path):
    wjson(tmp_path / "g/testdev_balanced_questions.json", {
        "1": {"imageId": "n1", "question": "Which side?", "answer": "left", "isBalanced": True, "types": {"structural": "query"}},
        "2": {"imageId": "n2", "question": "Is it a cat?", "answer": "no", "isBalanced": True, "types": {"structural": "verify"}}})
    _, rows = scores("gqa", tmp_path / "g", ["Left!", "No, it is a dog"])
    assert rows.score.tolist() == [1.0, 0.0]                                   # exact match after punctuation/lowercase
    wjson(tmp_path / "w/val.json", [{"image": "VizWiz_val_00000003.jpg", "question": "What is this?", "answerable": 1, "answer_type": "other",
                                      "answers": [{"answer": "can't tell", "answer_confidence": "no"}] * 3 + [{"answer": "soda", "answer_confidence": "yes"}] * 7}])
    items, rows = scores("vizwiz", tmp_path / "w", ["cant tell"])
    assert items[0].image == "val/VizWiz_val_00000003.jpg" and rows.score.tolist() == [pytest.approx(0.9)]   # "cant" keeps its apostrophe
    wjson(tmp_path / "t/TextVQA_0.5.1_val.json", {"data": [{"question_id": 5, "image_id": "abc", "question": "what time?",
                                                             "answers": ["Two o'clock"] * 5 + ["2"] * 5}]})
    _, rows = scores("textvqa", tmp_path / "t", ["2 oclock"])
    assert rows.score.tolist() == [1.0]                                       # both sides → "2 o'clock", 5 matches

# --- probability-scored tasks: the prediction is the chosen option's text ---------------------------------------------
def test_pope_vsr_tallyqa_ai2d(tmp_path):
    for s in ("adversarial", "popular", "random"):
        wlines(tmp_path / f"p/coco_pope_{s}.json", [{"question_id": 3, "image": "COCO_val2014_000000000042.jpg", "text": "Is there a dog?", "label": "no"}])
    items, rows = scores("pope", tmp_path / "p", ["No", "Yes", "No"])
    assert [i.id for i in items] == ["adversarial-3", "popular-3", "random-3"] and rows.score.tolist() == [1.0, 0.0, 1.0]
    assert get_task("pope").pooling == "families" and {i.image for i in items} == {"val2014/COCO_val2014_000000000042.jpg"}
    wlines(tmp_path / "v/test.jsonl", [{"image": "a.jpg", "caption": "The cat is left of the dog.", "label": 1}])
    _, rows = scores("vsr", tmp_path / "v", ["True"])
    assert rows.score.tolist() == [1.0]
    wjson(tmp_path / "q/test.json", [{"image": "VG_100K/9.jpg", "question": "How many people?", "answer": 12, "issimple": False, "question_id": 1}])
    items, rows = scores("tallyqa", tmp_path / "q", ["12"])
    assert items[0].option_tokens[12] == "M" and "\nM. 12\n" in items[0].prompt and rows.score.tolist() == [1.0]
    (tmp_path / "a").mkdir(); (tmp_path / "a/ai2d_test_ids.csv").write_text("1\n2\n")
    wjson(tmp_path / "a/ai2d/questions/3.png.json", {"imageName": "3.png", "questions": {
        "Which stage comes first?": {"answerTexts": ["egg", "larva", "pupa"], "correctAnswer": 0, "questionId": "3.png-0", "abcLabel": False}}})
    items, rows = scores("ai2d", tmp_path / "a", ["larva"])
    assert items[0].family == "val" and items[0].option_tokens == ["A", "B", "C"] and rows.score.tolist() == [0.0]
    assert get_task("ai2d").load(tmp_path / "a", split="test") == []

# --- grounding -----------------------------------------------------------------------------------------------------------
def test_refcocog_and_ocid(tmp_path):
    wjson(tmp_path / "refcocog/instances.json", {"images": [{"id": 5, "file_name": "COCO_train2014_000000000005.jpg", "width": 400, "height": 200}],
                                                 "annotations": [{"id": 2, "image_id": 5, "bbox": [100, 50, 100, 100]}]})
    (tmp_path / "refcocog/refs(umd).p").write_bytes(pickle.dumps([
        {"ref_id": 1, "ann_id": 2, "image_id": 5, "split": "val", "sentences": [{"sent_id": 7, "sent": "the man in a hat"}]}]))
    items, rows = scores("refcocog", tmp_path, ["[0.25, 0.25, 0.5, 0.75]"])
    assert items[0].box == [0.25, 0.25, 0.5, 0.75] and items[0].image_size == (400, 200) and rows.score.tolist() == [1.0]
    # the same answer given in the letterboxed (400x400) frame: y ↦ (y·200 + 100)/400, so [0.25, 0.25, 0.5, 0.75] there
    # is [0.25, 0, 0.5, 1] in the original image (IoU 0.5, not 1), and the ground truth itself is [0.25, 0.375, 0.5, 0.625] there
    lb = score_items(with_resize(items, "letterbox"), ["[0.25, 0.25, 0.5, 0.75]"])
    assert lb.iou_strict.tolist() == [pytest.approx(0.5)]
    lb = score_items(with_resize(items, "letterbox"), ["[0.25, 0.375, 0.5, 0.625]"])
    assert lb.iou_strict.tolist() == [pytest.approx(1.0)]
    wjson(tmp_path / "o/val_expressions.json", {"3": {"scene_path": "ARID10/floor/seq03/rgb/x.png", "sentence": "blue box",
                                                      "bbox": "[0, 0, 320, 480]", "take_id": 20}})
    items, rows = scores("ocid-ref", tmp_path / "o", ["[0.0, 0.0, 0.2, 1.0]"])   # IoU 0.4: a hit at OCID's τ = 0.25
    assert items[0].family == "Maximum Clutter" and rows.iou_strict.tolist() == [pytest.approx(0.4)] and rows.score.tolist() == [1.0]

# --- bad input: one-line errors ---------------------------------------------------------------------------------------
MISSING = {"vqav2": "v2_OpenEnded_mscoco_val2014_questions.json", "gqa": "testdev_balanced_questions.json", "vizwiz": "val.json",
           "textvqa": "TextVQA_0.5.1_val.json", "pope": "coco_pope_adversarial.json", "vsr": "test.jsonl", "tallyqa": "test.json",
           "ai2d": "ai2d_test_ids.csv", "refcoco": "refs(unc).p", "refcoco+": "refs(unc).p", "refcocog": "refs(umd).p",
           "ocid-ref": "val_expressions.json"}

@pytest.mark.parametrize("task", list(MISSING))
def test_missing_file_names_task_and_file(tmp_path, task):
    with pytest.raises(DataFormatError) as e: get_task(task).load(tmp_path)
    msg = str(e.value)
    assert f"task {task!r}" in msg and MISSING[task] in msg and "\n" not in msg

@pytest.mark.parametrize("task,rel,record", [
    ("gqa", "testdev_balanced_questions.json", {"1": {"imageId": "../../secret", "question": "q", "answer": "a"}}),
    ("vizwiz", "val.json", [{"image": "../../x.jpg", "question": "q", "answers": [{"answer": "a"}]}]),
    ("tallyqa", "test.json", [{"image": "/etc/passwd", "question": "q", "answer": 1, "issimple": True, "question_id": 1}]),
    ("ocid-ref", "val_expressions.json", {"1": {"scene_path": "../../../x.png", "sentence": "s", "bbox": "[0, 0, 10, 10]", "take_id": 0}})])
def test_escaping_image_paths(tmp_path, task, rel, record):
    wjson(tmp_path / "root" / rel, record)
    with pytest.raises(PathEscapeError, match="escapes its root"): get_task(task).load(tmp_path / "root")

def test_symlink_out_of_root_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir(); (tmp_path / "root").mkdir()
    (tmp_path / "root/VG_100K").symlink_to(tmp_path / "elsewhere")
    wjson(tmp_path / "root/test.json", [{"image": "VG_100K/1.jpg", "question": "q", "answer": 1, "issimple": True, "question_id": 1}])
    with pytest.raises(PathEscapeError): get_task("tallyqa").load(tmp_path / "root")

def test_malformed_files(tmp_path):
    (tmp_path / "g").mkdir(); (tmp_path / "g/testdev_balanced_questions.json").write_text('{"1": {"imageId": "n1", ')
    with pytest.raises(DataFormatError, match=r"invalid JSON at line 1"): get_task("gqa").load(tmp_path / "g")
    wlines(tmp_path / "v/test.jsonl", [{"image": "a.jpg", "caption": "c", "label": 1}]); (tmp_path / "v/test.jsonl").write_text((tmp_path / "v/test.jsonl").read_text() + "{oops\n")
    with pytest.raises(DataFormatError, match=r"test.jsonl: line 2: invalid JSON"): get_task("vsr").load(tmp_path / "v")
    wjson(tmp_path / "t/TextVQA_0.5.1_val.json", {"data": [{"question_id": "5", "image_id": "abc", "question": "q", "answers": ["a"]}]})
    with pytest.raises(DataFormatError, match=r"data\[0\]: 'question_id' should be int, got str"): get_task("textvqa").load(tmp_path / "t")
    wlines(tmp_path / "v2/test.jsonl", [{"image": "a.jpg", "caption": "c", "label": 2}])
    with pytest.raises(DataFormatError, match="label 2 is not 0 or 1"): get_task("vsr").load(tmp_path / "v2")
    wjson(tmp_path / "a/ai2d/questions/1.png.json", {"imageName": "1.png", "questions": {"q": {"answerTexts": ["x"], "correctAnswer": 3, "questionId": "1"}}})
    (tmp_path / "a/ai2d_test_ids.csv").write_text("1\n")
    with pytest.raises(DataFormatError, match="correctAnswer index"): get_task("ai2d").load(tmp_path / "a")
    with pytest.raises(ValueError, match="unknown split 'hard'"): get_task("tallyqa").load(tmp_path, split="hard")
