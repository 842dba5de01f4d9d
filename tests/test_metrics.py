"vlmssm.metrics: VQAv2 normalisation and soft accuracy, strict/lenient box parsing (vlm-evaluation rules), IoU, Acc@τ, aggregates, CIs."
import ast, sys
import numpy as np
import pytest
from vlmssm.metrics import (acc_at, bootstrap_ci, box_iou_from_text, choice_accuracy, exact_match, grounding_hit, iou,
                            normalize_vqa_answer, paired_difference, parse_box, parse_yes_no, seed_item_bootstrap,
                            vqa_accuracy, weighted_scores, yes_no_accuracy)

def test_metrics_imports_no_models():
    import subprocess
    code = "import sys, vlmssm.metrics; bad=[m for m in ('transformers','timm','vlmssm.vlm','vlmssm.backbones') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout.strip()
    assert out == "[]", out

# --- strict box parsing: known cases (VE harnesses/refcoco.py) -----------------------------------------------------
STRICT_OK = {"[0.1, 0.2, 0.5, 0.6]": [0.1, 0.2, 0.5, 0.6], "[0, 0, 1, 1]": [0.0, 0.0, 1.0, 1.0],
             " [0.12345, 0.2, 0.5, 0.6]\n": [0.12345, 0.2, 0.5, 0.6], "[0.10,0.20,0.50,0.60]": [0.1, 0.2, 0.5, 0.6],
             "[1e-1, 0.2, 0.5, 0.6]": [0.1, 0.2, 0.5, 0.6]}
STRICT_BAD = ["[0.1, 0.2, 0.5, 0.6].", "Box: [0.1, 0.2, 0.5, 0.6]", "[0.1, 0.2, 0.5, 0.6] [0.1, 0.2, 0.5, 0.6]",
              "(0.1, 0.2, 0.5, 0.6)", "{0.1, 0.2, 0.5, 0.6}", "[0.1, 0.2, 0.5]", "[0.1, 0.2, 0.5, 0.6, 0.7]", "[]",
              "[0.5, 0.2, 0.1, 0.6]", "[0.1, 0.6, 0.5, 0.2]", "[0.1, 0.2, 0.1, 0.6]", "[0.1, 0.2, 0.5, 0.2]",
              "[0.1, 0.2, 1.01, 0.6]", "[-0.1, 0.2, 0.5, 0.6]", "[10, 20, 50, 60]", "[True, 0.2, 0.5, 0.6]",
              "['0.1', '0.2', '0.5', '0.6']", "[[0.1], 0.2, 0.5, 0.6]", "[0.1, 0.2, 0.5, 0.6]</s>", "", "none",
              "[0.1, 0.2, 0.5, float('inf')]", "__import__('os').system('true')", "[0.1 0.2 0.5 0.6]", "[0.1, 0.2, 0.5, 0.6j]"]

@pytest.mark.parametrize("text,box", STRICT_OK.items())
def test_strict_accepts(text, box): assert parse_box(text) == pytest.approx(box)

@pytest.mark.parametrize("text", STRICT_BAD)
def test_strict_rejects(text): assert parse_box(text) is None

def test_strict_matches_vlm_evaluation_rule():
    "Re-derive VE's rule independently for every case: literal_eval, list of 4 numbers in [0,1], x1<x2, y1<y2."
    def ve(t):
        try:
            b = ast.literal_eval(t)
            assert isinstance(b, list) and len(b) == 4 and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in b)
            assert all(0 <= c <= 1 for c in b) and b[0] < b[2] and b[1] < b[3]
            return [float(c) for c in b]
        except (AssertionError, ValueError, SyntaxError, TypeError): return None
    for t in list(STRICT_OK) + STRICT_BAD: assert parse_box(t) == ve(t), t

def test_lenient_parse_is_separate():
    assert parse_box("Box: [0.1, 0.2, 0.5, 0.6].", strict=False) == pytest.approx([0.1, 0.2, 0.5, 0.6])
    assert parse_box("first (0.1,0.2,0.5,0.6) then [0.2, 0.2, 0.3, 0.3]", strict=False) == pytest.approx([0.1, 0.2, 0.5, 0.6])
    assert parse_box("[0.5, 0.2, 0.1, 0.6]", strict=False) is None
    assert parse_box("no box", strict=False) is None

def test_grounding_hits_and_acc():
    gt = [0.2, 0.2, 0.6, 0.6]
    assert grounding_hit("[0.2, 0.2, 0.6, 0.6]", gt)
    assert grounding_hit("[0.25, 0.2, 0.6, 0.6]", gt)                                  # IoU 0.875
    assert not grounding_hit("[0.2, 0.2, 0.4, 0.4]", gt)                               # IoU 0.25
    assert grounding_hit("[0.2, 0.2, 0.4, 0.4]", gt, iou=0.25)                         # OCID-Ref threshold
    assert not grounding_hit("Sure: [0.2, 0.2, 0.6, 0.6]", gt) and grounding_hit("Sure: [0.2, 0.2, 0.6, 0.6]", gt, strict=False)
    assert iou([0, 0, 0.5, 1], [0.5, 0, 1, 1]) == 0.0 and iou([0, 0, 1, 1], [0, 0, 0.5, 0.5]) == pytest.approx(0.25)
    ious = [box_iou_from_text(t, gt) for t in ["[0.2, 0.2, 0.6, 0.6]", "garbage", "[0.2, 0.2, 0.4, 0.4]"]]
    assert ious == pytest.approx([1.0, 0.0, 0.25])
    assert acc_at(ious, 0.5) == pytest.approx(1 / 3) and acc_at(ious, 0.25) == pytest.approx(2 / 3)    # unparseable stays in the denominator

# --- VQA -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw,norm", [("Yes.", "yes"), ("The Red One", "red 1"), ("two", "2"), ("Ten apples", "10 apples"),
                                      ("isnt", "isn't"), ("3.5", "3.5"), ("hello!world", "hello world"), ("1,000", "1000"),
                                      ("an apple, please", "apple please"), ("\tcat\n", "cat")])
def test_vqa_normalisation(raw, norm): assert normalize_vqa_answer(raw) == norm

def test_vqa_soft_accuracy_official_rule():
    gts = ["yes"] * 2 + ["no"] * 8
    # leave-one-out: dropping a "yes" leaves 1 match (1/3), dropping a "no" leaves 2 matches (2/3)
    assert vqa_accuracy("yes", gts) == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)
    assert vqa_accuracy("no", gts) == 1.0 and vqa_accuracy("maybe", gts) == 0.0
    assert vqa_accuracy("Two", ["2"] * 10) == 1.0
    assert vqa_accuracy("the cube", "cube") == 1.0 and vqa_accuracy("sphere", "cube") == 0.0
    with pytest.raises(ValueError, match="empty"): vqa_accuracy("x", [])

def test_exact_yes_no_choice():
    assert exact_match("A cube.", "cube") == 1.0 and exact_match("A cube.", "cube", normalize="gqa") == 0.0
    assert parse_yes_no("No, there isn't.") == "no" and parse_yes_no("It is yes") is None
    assert yes_no_accuracy(["Yes", "no", "dunno"], ["yes", "yes", "no"]) == pytest.approx(1 / 3)
    assert yes_no_accuracy([[0.2, 0.8], 0.7], ["no", "yes"]) == 1.0
    assert choice_accuracy(["A", "c", [0.1, 0.9]], [0, "C", "B"]) == 1.0

# --- aggregates and CIs ----------------------------------------------------------------------------------------------
def test_weighted_scores_example_count():
    # the authors' released Overall fits alpha = N_vqa/(N_vqa+N_loc) (recipe_eval.md §3): check that identity
    w = weighted_scores([{"group": "vqa", "n": 866, "score": 62.39}, {"group": "loc", "n": 134, "score": 39.17}])
    assert w["weighted_overall"] == pytest.approx(0.866 * 62.39 + 0.134 * 39.17)
    with pytest.raises(ValueError, match="outside 0–100"): weighted_scores([{"group": "vqa", "n": 1, "score": -1}])
    with pytest.raises(ValueError, match="not 'vqa' or 'loc'"): weighted_scores([{"group": "pope", "n": 1, "score": 1}])

def test_bootstrap_intervals_cover_and_separate():
    rng = np.random.default_rng(0)
    a = (rng.random((3, 600)) < 0.7).astype(float)
    b = (rng.random((3, 600)) < 0.5).astype(float)
    m, lo, hi = seed_item_bootstrap(a, n_resamples=500)
    assert lo < m < hi and lo > 0.65 and hi < 0.75
    d = paired_difference(a, b, n_resamples=500)
    assert d["low"] > 0.1 and d["p_le_0"] == 0.0
    e, l1, h1 = bootstrap_ci(a[0], n_resamples=500)
    assert l1 < e < h1
    assert seed_item_bootstrap(a, seed=3) == seed_item_bootstrap(a, seed=3)

# --- the other official rules (recipe_eval.md §2.3): VizWiz, TextVQA, GQA, TallyQA, POPE, VSR, AI2D ------------------
from vlmssm.metrics import (CONTRACTIONS, VIZWIZ_CONTRACTIONS, choice_index, count_accuracy, gqa_accuracy, is_unanswerable,
                            leave_one_out_accuracy, normalize_textvqa_answer, normalize_vizwiz_answer, parse_true_false,
                            textvqa_accuracy, vizwiz_accuracy, yes_no_metrics)
from itertools import combinations

@pytest.mark.parametrize("k", range(11))
def test_leave_one_out_is_the_mean_over_10_choose_9_subsets(k):
    refs = ["cat"] * k + ["dog"] * (10 - k)
    subsets = list(combinations(range(10), 9))
    assert len(subsets) == 10
    want = np.mean([min(1.0, sum(refs[i] == "cat" for i in s) / 3) for s in subsets])
    assert leave_one_out_accuracy("cat", refs) == pytest.approx(want)
    assert vqa_accuracy("A cat.", refs) == pytest.approx(want) and textvqa_accuracy("CAT", refs) == pytest.approx(want)
    assert vizwiz_accuracy("the cat", refs) == pytest.approx(want)

@pytest.mark.parametrize("pred,gts,vqa,vizwiz,textvqa", [
    ("Two", ["2"] * 10, 1.0, 1.0, 1.0),
    ("2", ["two"] * 10, 0.0, 0.0, 1.0),                   # only TextVQA normalises the human answers
    ("dont", ["don't"] * 10, 1.0, 0.0, 1.0),              # VizWiz's contraction map writes "don`t"
    ("cant", ["can't"] * 10, 1.0, 1.0, 1.0),              # ... but keeps "can't"
    ("The dog's bowl", ["dog's bowl"] * 10, 1.0, 1.0, 1.0),
    ("Yes", ["Yes"] * 10, 0.0, 0.0, 1.0),                 # human answers are not lowercased by VQAv2 / VizWiz
    ("an orange", ["orange"] * 10, 1.0, 1.0, 1.0),
    ("unanswerable", ["unanswerable"] * 10, 1.0, 1.0, 1.0)])
def test_soft_accuracy_normalisations_differ_as_officially(pred, gts, vqa, vizwiz, textvqa):
    assert (vqa_accuracy(pred, gts), vizwiz_accuracy(pred, gts), textvqa_accuracy(pred, gts)) == (vqa, vizwiz, textvqa)

def test_vizwiz_contraction_map_and_unanswerable():
    assert len(VIZWIZ_CONTRACTIONS) == len(CONTRACTIONS)
    assert sum("`" in v for v in VIZWIZ_CONTRACTIONS.values()) > 100 and VIZWIZ_CONTRACTIONS["wheres"] == "where's"
    assert normalize_vizwiz_answer("Unanswerable!") == "unanswerable" and is_unanswerable("UNANSWERABLE.")
    assert not is_unanswerable("it is unanswerable") and normalize_textvqa_answer("Joe's, Bar?") == "joe 's bar"

def test_gqa_count_true_false_choice():
    assert [gqa_accuracy(p, "left") for p in ("Left.", "left ", "the left", "LEFT!")] == [1.0, 0.0, 0.0, 1.0]
    assert [count_accuracy(p, "2") for p in ("2", "two", "Two.", "2 dogs", "")] == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert parse_true_false("TRUE") == "true" and parse_true_false("not true") is None
    assert choice_index("C", ["x", "y", "z"]) == 2 and choice_index("D", ["x", "y", "z"]) is None and choice_index("Y.", ["x", "y"]) == 1

def test_pope_yes_no_metrics():
    m = yes_no_metrics(["yes", "yes", "yes", "no", "no", "no"], ["yes", "yes", "no", "no", "no", "yes"])
    assert m["accuracy"] == pytest.approx(4 / 6) and m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3) and m["yes_ratio"] == 0.5
    assert yes_no_metrics([[0.9, 0.1], 0.2], ["yes", "no"])["accuracy"] == 1.0

@pytest.mark.parametrize("text,box", [("[0.1, 0.2, 0.5, 0.6,]", [0.1, 0.2, 0.5, 0.6]),          # a trailing comma is still a list
                                      ("[.1, .2, .5, .6]", [0.1, 0.2, 0.5, 0.6]),
                                      ("[0.1, 0.2, 0.5, 0.6]  # box", [0.1, 0.2, 0.5, 0.6]),    # literal_eval ignores a comment
                                      ("[0, 0, 1, 1.0]", [0.0, 0.0, 1.0, 1.0]),
                                      ("[0.1, 0.2, 0.5, 0.6]\n\n", [0.1, 0.2, 0.5, 0.6]),
                                      ("[0.1, 0.2, 0.5, 0.6];", None), ("[0.1, 0.2, 0.5, 0.6]]", None), ("[[0.1, 0.2, 0.5, 0.6]]", None),
                                      ("[0.1, 0.2, 0.5, 0.6] The box", None), ("[1/10, 0.2, 0.5, 0.6]", None),
                                      ("[0.10, 0.20, 0.50, 0.60", None), ("[-0.0, 0.2, 0.5, 0.6]", [0.0, 0.2, 0.5, 0.6]),
                                      ("[0.1, 0.2, 0.1000001, 0.6]", [0.1, 0.2, 0.1000001, 0.6]), ("[1, 0.2, 1, 0.6]", None)])
def test_strict_parse_more_edge_cases(text, box):
    got = parse_box(text)
    assert (got is None) if box is None else got == pytest.approx(box)
