"""Bounded fuzzing of every entry point that reads user input (issue #17, hardening): data readers, images and masks,
evaluation adapters, answer/box parsers and scorers, the config loader, encoder ids and checkpoints.

Every generated input is bad by construction. Each must end as one of
  rejected  a one-line error of a user-error type (what the CLI reports as one line: ValueError / KeyError /
            FileNotFoundError and the project's subclasses), raised by vlmssm code, naming the input;
            for parsers and scorers: unparseable → None, scored 0;
  skipped   a counted, reported skip;
  escaped   anything else that raised (a library's exception, a traceback the CLI would print, an unclear message);
  silent    accepted as good data.
The test prints the counts per target and fails on any escape or silent acceptance. Generation is hypothesis with
`derandomize=True` (the same inputs every run), no shrinking, no example database: the counts are reproducible.
"""
from __future__ import annotations
import io, json, math, os, pickle, re, shutil, string, struct, sys, traceback, zlib
from collections import Counter, defaultdict
from pathlib import Path
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings, strategies as st
from PIL import Image

import vlmssm
PKG = str(Path(vlmssm.__file__).resolve().parent)
USER_ERRORS = (ValueError, KeyError, FileNotFoundError)  # what `vlmssm.cli.main` turns into one line (ConfigError, WeightsError… are ValueErrors)
TARGETS: dict = {}
REPORT: dict = {}

def target(n: int):
    "Register a fuzz target: `fn(data, tmp) -> (outcome, detail)` run on `n` generated inputs."
    def deco(fn): TARGETS[fn.__name__] = (fn, n); return fn
    return deco

def _frames(tb) -> list:
    "(file, line) of every frame of a traceback (cheap: no source lines, so a 3,000-frame RecursionError costs nothing)."
    out = []
    while tb is not None: out.append((tb.tb_frame.f_code.co_filename, tb.tb_lineno)); tb = tb.tb_next
    return out

def _site(tb) -> str:
    "The innermost vlmssm frame of a traceback (where an escape crossed our code), else the innermost frame."
    fr = _frames(tb)
    f = ([x for x in fr if x[0].startswith(PKG)] or fr)[-1]
    return f"{Path(f[0]).name}:{f[1]}"

def attempt(fn, names, ok=None):
    "Run `fn()` on a bad input; classify what happened. `names`: strings of which the error must name one."
    names = [str(n) for n in (names if isinstance(names, (list, tuple)) else [names])]
    try: r = fn()
    except RecursionError as e: return "escaped", f"RecursionError at {_site(e.__traceback__)}"
    except Exception as e:
        msg, site = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e), _site(e.__traceback__)
        inner = _frames(e.__traceback__)[-1][0]
        if not isinstance(e, USER_ERRORS): return "escaped", f"{type(e).__name__} at {site}: {msg[:120]!r}"
        if not inner.startswith(PKG): return "escaped", f"{type(e).__name__} from a library ({Path(inner).name}) at {site}: {msg[:120]!r}"
        if "\n" in msg: return "escaped", f"multi-line {type(e).__name__} at {site}: {msg[:120]!r}"
        if not any(n in msg for n in names): return "escaped", f"{type(e).__name__} at {site} does not name {names[0][:60]!r}: {msg[:120]!r}"
        return "rejected", None
    v = ok(r) if ok is not None else None
    return (v, None) if v else ("silent", f"accepted: {repr(r)[:120]}")

def _say(request, line: str):
    "Print past pytest's output capture (the counts belong in the CI log whether the test passes or fails)."
    tr, cm = (request.config.pluginmanager.get_plugin(k) for k in ("terminalreporter", "capturemanager"))
    if tr is None: return
    with cm.global_and_fixture_disabled() if cm is not None else __import__("contextlib").nullcontext(): tr.write_line("\n" + line)

@pytest.fixture(scope="module")
def report(request):
    yield REPORT
    if not REPORT: return
    tot = Counter()
    for c in REPORT.values(): tot.update(c)
    _say(request, f"fuzz counts   {'total':<16} inputs {sum(tot.values()):>5}  rejected {tot['rejected']:>5}  skipped {tot['skipped']:>3}  "
                  f"escaped {tot['escaped']:>4}  silent {tot['silent']:>4}")

# ---------------------------------------------------------------------------------------------------------------------
# Generic bad values
NASTY_TEXT = st.one_of(st.text(max_size=40), st.sampled_from(["", " ", "\x00", "a\x00b", "../", "..", "/", "~", "\n", "\u202e", "💥" * 3,
                                                            "x" * 5000, "${HOME}", "{0}", "%s%n", "NaN", "inf", "-1"]))
JSONISH = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True), NASTY_TEXT),
                       lambda ch: st.one_of(st.lists(ch, max_size=3), st.dictionaries(st.text(max_size=5), ch, max_size=3)), max_leaves=6)

def wrong_type(data, types):
    "A JSON-able value whose type is none of `types` (bool counts apart from int)."
    types = types if isinstance(types, tuple) else (types,)
    def fits(v): return isinstance(v, types) and (not isinstance(v, bool) or bool in types) and not (isinstance(v, int) and float in types and int not in types and False)
    return data.draw(JSONISH.filter(lambda v: not fits(v) and not (float in types and isinstance(v, int) and not isinstance(v, bool))))

def get_at(doc, path):
    for k in path: doc = doc[k]
    return doc

def set_at(doc, path, v):
    get_at(doc, path[:-1])[path[-1]] = v

def del_at(doc, path):
    del get_at(doc, path[:-1])[path[-1]]

def dumps(doc) -> bytes: return json.dumps(doc, allow_nan=True).encode()

def byte_mutation(data, raw: bytes) -> bytes:
    "Bytes that are not a valid document: truncated, binary garbage, not UTF-8, deeply nested, a huge number, empty."
    kind = data.draw(st.sampled_from(["truncate", "garbage", "latin1", "deep", "bignum", "empty", "nul"]))
    if kind == "truncate": return raw[:data.draw(st.integers(1, len(raw) - 1))]
    if kind == "garbage": return data.draw(st.binary(min_size=1, max_size=200)).replace(b"[", b"").replace(b"{", b"") + b"\xff"
    if kind == "latin1": return raw[:-2] + "é".encode("latin1") + raw[-2:]
    if kind == "deep": d = data.draw(st.integers(2000, 200000)); return b"[" * d + b"]" * d
    if kind == "bignum": return b'{"x": ' + b"9" * data.draw(st.integers(4400, 100000)) + b"}"
    if kind == "nul": return raw[:len(raw) // 2] + b"\x00" + raw[len(raw) // 2:]
    return b""

ESCAPES = ["../outside.png", "../../etc/passwd", "/etc/passwd", "img/../../outside.png", "img/\x00.png", "", "img/link_out.png",
           "img/loop.png", "..", "/"]

def data_root(tmp: Path) -> Path:
    "A dataset root with one image, a symlink leaving the root and a symlink loop."
    root = tmp / "data"
    if not (root / "img/a.png").exists():
        (root / "img").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 6), (200, 10, 10)).save(root / "img/a.png")
        Image.new("RGB", (8, 6)).save(tmp / "outside.png")
        os.symlink(tmp / "outside.png", root / "img/link_out.png")
        os.symlink(root / "img/loop.png", root / "img/loop.png")
    return root

def bad_box(data, w=64, h=48, fmt="xywh"):
    "A box no image can have: non-finite, negative, zero-size, outside the image, wrong arity or types."
    kind = data.draw(st.sampled_from(["nan", "inf", "negsize", "zero", "outside", "arity", "types", "negpos"]))
    b = [1.0, 2.0, 10.0, 20.0] if fmt == "xywh" else [1.0, 2.0, 11.0, 22.0]
    i, j = data.draw(st.integers(0, 3)), data.draw(st.integers(0, 1))
    if kind == "nan": b[i] = float("nan")
    elif kind == "inf": b[i] = data.draw(st.sampled_from([float("inf"), float("-inf")]))
    elif kind == "negsize": b[2 + j] = -5.0 if fmt == "xywh" else b[j] - 5
    elif kind == "zero": b[2 + j] = 0.0 if fmt == "xywh" else b[j]
    elif kind == "outside":
        lim = (w, h)[j]
        if fmt == "xywh": b[j], b[2 + j] = data.draw(st.sampled_from([(lim + 1.0, 2.0), (1.0, lim * 3.0), (1e12, 1e12)]))
        else: b[2 + j] = lim + data.draw(st.floats(1, 1e9))
    elif kind == "negpos": b[j] = -data.draw(st.floats(1, 1e6)); b[2 + j] = b[2 + j] if fmt == "xywh" else b[j] + 5
    elif kind == "arity": b = data.draw(st.sampled_from([b[:0], b[:1], b[:2], b[:3], b + [5.0]]))
    elif kind == "types": b[i] = data.draw(st.sampled_from(["1", None, True, [1], {"x": 1}]))
    return b

# --- data readers: LLaVA / VQA / COCO / RefCOCO JSON, the classification CSV -------------------------------------------
def _conv(): return [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "red"}]
def _coco(): return {"images": [{"id": 1, "file_name": "img/a.png", "width": 64, "height": 48}],
                     "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 20], "area": 200, "iscrowd": 0}],
                     "categories": [{"id": 1, "name": "circle"}]}
FORMATS = {  # name → (valid document, [(path, allowed types, required)], reader(path, root), box path, image path, size paths)
    "llava": (lambda: [{"id": "r1", "image": "img/a.png", "conversations": _conv()}, {"id": 2, "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}],
              [((0, "id"), (str, int), True), ((0, "conversations"), list, True), ((0, "conversations", 0, "from"), str, True),
               ((0, "conversations", 1, "value"), str, True), ((0, "image"), str, False), ((1, "conversations", 0), dict, True)],
              lambda p, root: __import__("vlmssm.data.formats", fromlist=["x"]).read_llava(p, root), None, (0, "image"), ()),
    "vqa": (lambda: {"data_subtype": "s", "images": [{"id": 1, "file_name": "img/a.png"}], "questions": [{"image_id": 1, "question": "Q?", "question_id": 11}]},
            [(("questions",), list, True), (("questions", 0, "question_id"), int, True), (("questions", 0, "image_id"), int, True),
             (("questions", 0, "question"), str, True), (("images", 0, "id"), int, True), (("images", 0, "file_name"), str, True), (("images",), list, False)],
            None, None, ("images", 0, "file_name"), ()),
    "coco": (_coco, [(("images",), list, True), (("annotations",), list, True), (("categories",), list, True), (("images", 0, "id"), int, True),
                     (("images", 0, "file_name"), str, True), (("images", 0, "width"), int, True), (("images", 0, "height"), int, True),
                     (("annotations", 0, "image_id"), int, True), (("annotations", 0, "category_id"), int, True), (("annotations", 0, "bbox"), list, True),
                     (("categories", 0, "id"), int, True)],
             lambda p, root: __import__("vlmssm.data.formats", fromlist=["x"]).read_coco(p, root), ("annotations", 0, "bbox"), ("images", 0, "file_name"),
             (("images", 0, "width"), ("images", 0, "height"))),
    "refcoco": (lambda: {**_coco(), "refs": [{"ref_id": 1, "ann_id": 5, "image_id": 1, "split": "test", "category_id": 1, "sentences": [{"sent_id": 1, "sent": "the red one"}]}]},
                [(("refs",), list, True), (("refs", 0, "ann_id"), int, True), (("refs", 0, "image_id"), int, True), (("refs", 0, "split"), str, True),
                 (("refs", 0, "ref_id"), int, True), (("refs", 0, "sentences"), list, True), (("refs", 0, "sentences", 0, "sent"), str, True),
                 (("refs", 0, "sentences", 0, "sent_id"), int, True), (("annotations", 0, "bbox"), list, True), (("annotations", 0, "id"), int, True),
                 (("images", 0, "width"), int, True), (("refs", 0, "category_id"), int, False)],
                lambda p, root: __import__("vlmssm.data.formats", fromlist=["x"]).read_refcoco(p, root), ("annotations", 0, "bbox"), ("images", 0, "file_name"),
                (("images", 0, "width"), ("images", 0, "height"))),
}
VQA_ANN = {"annotations": [{"question_id": 11, "image_id": 1, "question_type": "what", "answer_type": "other", "multiple_choice_answer": "red", "answers": [{"answer": "red"}]}]}

def _read_vqa(p, root):
    from vlmssm.data.formats import read_vqa
    return read_vqa(p, p.with_name("ann.json"), root)

def mutate_doc(data, doc, fields, box, img, sizes, w=64, h=48):
    "One known-invalid change to a valid document: (new document or raw bytes, what changed)."
    kinds = ["drop", "retype", "escape", "toplevel", "bytes"] + (["box"] * 2 if box else []) + (["size"] if sizes else [])
    kind = data.draw(st.sampled_from(kinds))
    if kind == "drop":
        path = data.draw(st.sampled_from([f for f, _, req in fields if req]))
        del_at(doc, path); return doc, kind
    if kind == "retype":
        path, types, _ = data.draw(st.sampled_from(fields)); set_at(doc, path, wrong_type(data, types)); return doc, kind
    if kind == "escape" and img: set_at(doc, img, data.draw(st.sampled_from(ESCAPES))); return doc, kind
    if kind == "box": set_at(doc, box, bad_box(data, w, h)); return doc, kind
    if kind == "size": set_at(doc, data.draw(st.sampled_from(sizes)), data.draw(st.sampled_from([0, -1, -64, float("nan"), 1.5, True]))); return doc, kind
    if kind == "toplevel": return wrong_type(data, type(doc)), kind
    return byte_mutation(data, dumps(doc)), "bytes"

@target(250)
def data_readers(data, tmp):
    from vlmssm.data.formats import read_cls_index
    root = data_root(tmp)
    name = data.draw(st.sampled_from(list(FORMATS) + ["vqa_annotations", "classification"]))
    p = tmp / f"{name}.json"
    if name == "classification":
        p = p.with_suffix(".csv")
        rows = [["file", "label", "label_name", "split", "objects"], ["img/a.png", "3", "circle", "train", "1 2"]]
        kind = data.draw(st.sampled_from(["label", "objects", "escape", "nocol", "bytes"]))
        if kind == "label": rows[1][1] = data.draw(st.sampled_from(["", "x", "1.5", "-1", "nan", "3 4", "0x10", "1e3"]))
        elif kind == "objects": rows[1][4] = data.draw(st.sampled_from(["1 x", "1.5", "--", "nan", "[1, 2]"]))
        elif kind == "escape": rows[1][0] = data.draw(st.sampled_from(ESCAPES))
        elif kind == "nocol": i = data.draw(st.sampled_from([0, 1])); rows = [[c for k, c in enumerate(r) if k != i] for r in rows]
        raw = "".join(",".join(r) + "\n" for r in rows).encode()
        if kind == "bytes": raw = data.draw(st.sampled_from([b"file,label\nimg/a.png,1\n\xff\xfe", b"\x00" * 40, b"", b"file,label\n\"img/a.png,1\n"]))
        p.write_bytes(raw)
        return attempt(lambda: read_cls_index(p, root), [p])
    if name == "vqa_annotations":
        doc, kind = mutate_doc(data, json.loads(json.dumps(VQA_ANN)), [(("annotations",), list, True), (("annotations", 0, "question_id"), int, True),
                               (("annotations", 0, "answers"), list, True), (("annotations", 0, "answers", 0, "answer"), str, True)], None, None, ())
        p = tmp / "ann.json"; (tmp / "vqa.json").write_bytes(dumps(FORMATS["vqa"][0]()))
        p.write_bytes(doc if isinstance(doc, bytes) else dumps(doc))
        return attempt(lambda: _read_vqa(tmp / "vqa.json", root), [p])
    make, fields, read, box, img, sizes = FORMATS[name]
    doc, kind = mutate_doc(data, make(), fields, box, img, sizes)
    p.write_bytes(doc if isinstance(doc, bytes) else dumps(doc))
    if name == "vqa": (tmp / "ann.json").write_bytes(dumps(VQA_ANN))
    return _tag(attempt(lambda: (read or _read_vqa)(p, root), [p]), f"{name}/{kind}")

def _tag(out, what):
    "Say which generator made an input that escaped or was accepted."
    return (out[0], f"{what}: {out[1]}") if out[1] else out

# --- the benchmark index (benchmark.json) and the files it names --------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory):
    from vlmssm.config import DataConfig
    from vlmssm.data.benchmark import write_benchmark
    root = tmp_path_factory.mktemp("bench") / "scenes"
    write_benchmark(DataConfig(n_train=2, n_val=1, n_test=2), root, progress=False)
    return root

BENCH: dict = {}

def _read_all(root):
    from vlmssm.data.benchmark import load_benchmark
    b = load_benchmark(root)
    return [len(b.llava("train")), len(b.vqa("test")), len(b.coco("val")), len(b.refs("test")), len(b.cls("train")), len(b.seg("test")),
            b.count("test", "refs"), len(b.classes)]

@target(120)
def benchmark_index(data, tmp):
    root = BENCH["root"]
    meta_p = root / "benchmark.json"
    orig = BENCH.setdefault("meta", meta_p.read_bytes())
    meta = json.loads(orig)
    files = meta["files"]["splits"]
    kind = data.draw(st.sampled_from(["escape", "escape", "retype", "drop", "bytes", "toplevel", "counts"]))
    split, fkind = data.draw(st.sampled_from(["train", "val", "test"])), data.draw(st.sampled_from(["llava", "vqa_questions", "vqa_annotations", "coco", "images", "masks"]))
    if kind == "escape":
        tgt = data.draw(st.sampled_from([(("files", "splits", split, fkind),), (("files", "refcoco"),), (("files", "classification"),)]))[0]
        set_at(meta, tgt, data.draw(st.sampled_from(["../outside.json", "/etc/passwd", "../../x", "a/../../b", "\x00", "..", str(tmp / "elsewhere.json")])))
    elif kind == "retype":
        tgt, types = data.draw(st.sampled_from([(("files",), dict), (("files", "splits"), dict), (("files", "splits", split), dict),
                                                 (("files", "splits", split, fkind), str), (("counts",), dict), (("classes",), list), (("files", "refcoco"), str)]))
        set_at(meta, tgt, wrong_type(data, types))
    elif kind == "drop":
        del_at(meta, data.draw(st.sampled_from([("files",), ("files", "splits"), ("files", "splits", split), ("files", "splits", split, fkind),
                                                 ("counts",), ("classes",), ("format",), ("version",), ("files", "refcoco")])))
    elif kind == "counts": set_at(meta, ("counts", split, "refs"), wrong_type(data, int))
    try:
        meta_p.write_bytes(byte_mutation(data, orig) if kind == "bytes" else (dumps(wrong_type(data, dict)) if kind == "toplevel" else dumps(meta)))
        return attempt(lambda: _read_all(root), [meta_p, root])
    finally: meta_p.write_bytes(orig)

# --- images and masks -------------------------------------------------------------------------------------------------
def _png(mode="L", size=(12, 10)):
    buf = io.BytesIO(); Image.new(mode, size, (1, 2, 3) if mode in ("RGB", "RGBA") else 1).save(buf, format="PNG"); return buf.getvalue()

def _jpeg():
    buf = io.BytesIO(); Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(buf, format="JPEG"); return buf.getvalue()

def _idat_end(raw: bytes) -> int:
    "Offset of the end of the last IDAT chunk's data (cutting before it truncates the pixels)."
    i, end = 8, 0
    while i + 8 <= len(raw):
        n, typ = struct.unpack(">I4s", raw[i:i + 8])
        if typ == b"IDAT": end = i + 8 + n
        i += 12 + n
    return end

def _huge_png(w, h):
    "A PNG header claiming a w×h image (a decompression bomb's first bytes)."
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")

@target(120)
def images_masks(data, tmp):
    from vlmssm.data import formats
    kind = data.draw(st.sampled_from(["trunc_png", "trunc_jpeg", "garbage", "empty", "text", "rgb_mask", "bomb", "zero_dim", "dir", "missing", "loop"]))
    p = tmp / f"img_{kind}.png"
    if p.is_symlink() or p.is_file(): p.unlink()
    if kind == "trunc_png": raw = _png(); p.write_bytes(raw[:data.draw(st.integers(1, _idat_end(raw) - 1))])
    elif kind == "trunc_jpeg": raw = _jpeg(); p.write_bytes(raw[:data.draw(st.integers(1, len(raw) - 40))])
    elif kind == "garbage": p.write_bytes(b"\x89PNG\r\n\x1a\n" * data.draw(st.booleans()) + data.draw(st.binary(min_size=1, max_size=300)))
    elif kind == "empty": p.write_bytes(b"")
    elif kind == "text": p.write_text("<html>not an image</html>\n" * data.draw(st.integers(1, 50)))
    elif kind == "rgb_mask": p.write_bytes(_png(data.draw(st.sampled_from(["RGB", "RGBA", "I;16", "1", "LA"]))))
    elif kind == "bomb": p.write_bytes(_huge_png(data.draw(st.integers(20000, 2**31 - 1)), data.draw(st.integers(20000, 2**31 - 1))))
    elif kind == "zero_dim": p.write_bytes(_huge_png(*data.draw(st.sampled_from([(0, 5), (5, 0), (0, 0)]))))
    elif kind == "dir": p.mkdir(exist_ok=True)
    elif kind == "loop": os.symlink(p, p)
    reader = data.draw(st.sampled_from(["read_mask", "read_image"] if kind != "rgb_mask" else ["read_mask"]))
    fn = getattr(formats, reader, None)
    if fn is None: return "escaped", f"no vlmssm.data.formats.{reader}: images are opened with PIL directly"
    return attempt(lambda: fn(p), [p])

# --- evaluation adapters (official files of the real benchmarks) -------------------------------------------------------
ANS = [{"answer": "red", "answer_confidence": "yes", "answer_id": 1}]
ADAPTERS = {  # task → (file, valid document, [(path, types, required)], image path, box path, json-lines)
    "vqav2": ("v2_OpenEnded_mscoco_val2014_questions.json", lambda: {"data_subtype": "val2014", "questions": [{"image_id": 1, "question": "Q?", "question_id": 11}]},
              [(("questions",), list, True), (("questions", 0, "image_id"), int, True), (("questions", 0, "question"), str, True)], None, None, False),
    "vqav2_ann": ("v2_mscoco_val2014_annotations.json", lambda: {"annotations": [{"question_id": 11, "image_id": 1, "question_type": "what", "answer_type": "other",
                                                                                  "multiple_choice_answer": "red", "answers": ANS}]},
                  [(("annotations",), list, True), (("annotations", 0, "answers"), list, True), (("annotations", 0, "question_id"), int, True),
                   (("annotations", 0, "answers", 0, "answer"), str, True)], None, None, False),
    "gqa": ("testdev_balanced_questions.json", lambda: {"1": {"imageId": "n1", "question": "Which side?", "answer": "left", "isBalanced": True, "types": {"structural": "query"}}},
            [(("1", "imageId"), str, True), (("1", "question"), str, True), (("1", "answer"), str, True), (("1", "types"), dict, False), (("1",), dict, False)],
            ("1", "imageId"), None, False),
    "vizwiz": ("val.json", lambda: [{"image": "V_1.jpg", "question": "What?", "answerable": 1, "answer_type": "other", "answers": [{"answer": "soda"}] * 3}],
               [((0, "image"), str, True), ((0, "question"), str, True), ((0, "answers"), list, True), ((0, "answers", 0, "answer"), str, True),
                ((0, "answerable"), (int, bool), False)], (0, "image"), None, False),
    "textvqa": ("TextVQA_0.5.1_val.json", lambda: {"data": [{"question_id": 5, "image_id": "abc", "question": "what time?", "answers": ["two"] * 10}]},
                [(("data",), list, True), (("data", 0, "question_id"), int, True), (("data", 0, "image_id"), str, True), (("data", 0, "answers"), list, True),
                 (("data", 0, "answers", 0), str, False)], ("data", 0, "image_id"), None, False),
    "pope": ("coco_pope_random.json", lambda: [{"question_id": 3, "image": "COCO_1.jpg", "text": "Is there a dog?", "label": "no"}],
             [((0, "question_id"), int, True), ((0, "image"), str, True), ((0, "text"), str, True), ((0, "label"), str, True)], (0, "image"), None, True),
    "vsr": ("test.jsonl", lambda: [{"image": "a.jpg", "caption": "The cat is left of the dog.", "label": 1}],
            [((0, "image"), str, True), ((0, "caption"), str, True), ((0, "label"), (int, bool), True)], (0, "image"), None, True),
    "tallyqa": ("test.json", lambda: [{"image": "VG_100K/9.jpg", "question": "How many?", "answer": 12, "issimple": False, "question_id": 1}],
                [((0, "image"), str, True), ((0, "question"), str, True), ((0, "answer"), int, True), ((0, "issimple"), bool, True), ((0, "question_id"), int, True)],
                (0, "image"), None, False),
    "ocid-ref": ("val_expressions.json", lambda: {"7": {"scene_path": "ARID20/table/top/seq01/rgb/result.png", "sentence": "the red bowl", "take_id": 3, "bbox": "[10, 20, 110, 220]"}},
                 [(("7", "scene_path"), str, True), (("7", "sentence"), str, True), (("7", "take_id"), (int, str), True), (("7", "bbox"), (str, list), True)],
                 ("7", "scene_path"), ("7", "bbox"), False),
    "refcoco": ("refcoco/instances.json", _coco, [(("images",), list, True), (("annotations",), list, True), (("annotations", 0, "bbox"), list, True),
                                                  (("images", 0, "width"), int, True), (("images", 0, "file_name"), str, True)],
                ("images", 0, "file_name"), ("annotations", 0, "bbox"), False),
}
REFS = [{"ref_id": 1, "ann_id": 5, "image_id": 1, "split": "val", "category_id": 1, "sentences": [{"sent_id": 1, "sent": "the red one"}]}]

@target(150)
def eval_adapters(data, tmp):
    from vlmssm.evals.adapters import get_task
    name = data.draw(st.sampled_from(list(ADAPTERS)))
    task = {"vqav2_ann": "vqav2"}.get(name, name)
    root = tmp / f"t_{task}"
    if root.exists(): shutil.rmtree(root)
    root.mkdir()
    for k, (f, make, *_r, lines) in ADAPTERS.items():  # the task's other files, valid
        if {"vqav2_ann": "vqav2"}.get(k, k) == task and k != name:
            (root / f).parent.mkdir(parents=True, exist_ok=True); (root / f).write_bytes(dumps(make()))
    if task == "refcoco": (root / "refcoco/refs(unc).p").parent.mkdir(parents=True, exist_ok=True); (root / "refcoco/refs(unc).p").write_bytes(pickle.dumps(REFS))
    f, make, fields, img, box, lines = ADAPTERS[name]
    p = root / f; p.parent.mkdir(parents=True, exist_ok=True)
    if task == "refcoco" and data.draw(st.booleans()):   # the refs pickle itself: garbage, hostile, wrong structure
        (root / f).write_bytes(dumps(make()))
        p = root / "refcoco/refs(unc).p"
        kind = data.draw(st.sampled_from(["hostile", "garbage", "trunc", "structure"]))
        if kind == "hostile": p.write_bytes(pickle.dumps({"refs": REFS, "x": CodeRunnerLike(tmp / "pwned")}))
        elif kind == "garbage": p.write_bytes(data.draw(st.binary(min_size=1, max_size=100)))
        elif kind == "trunc": raw = pickle.dumps(REFS); p.write_bytes(raw[:data.draw(st.integers(1, len(raw) - 1))])
        else: p.write_bytes(pickle.dumps(wrong_type(data, list)))
        out = attempt(lambda: get_task(task).load(root), [root])
        return ("escaped", "a hostile refs pickle ran code") if (tmp / "pwned").exists() else out
    doc, kind = mutate_doc(data, make(), fields, box, img, (), w=640, h=480)
    if kind == "escape":   # adapters prefix image paths with a folder: traversal and NUL bytes are what can escape
        set_at(doc, img, data.draw(st.sampled_from(["../../../etc/passwd", "../../x", "a/../../../b", "\x00", "x\x00y", "../" * 40 + "x"])))
    if kind == "box" and name == "ocid-ref": set_at(doc, box, json.dumps(bad_box(data, 640, 480, "xyxy")) if data.draw(st.booleans()) else bad_box(data, 640, 480, "xyxy"))
    raw = doc if isinstance(doc, bytes) else (b"".join(dumps(r) + b"\n" for r in doc) if lines and isinstance(doc, list) else dumps(doc))
    p.write_bytes(raw)
    return _tag(attempt(lambda: get_task(task).load(root), [root, f"task {task!r}"]), f"{name}/{kind}")  # any of the task's files, or the task

class CodeRunnerLike:
    "Unpickling this creates `marker` (what a hostile pickle would do, harmlessly)."
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (Path.touch, (Path(self.marker),))

# --- answer and box parsers, scorers (garbage model outputs) ------------------------------------------------------------
def _bad_box_text(data) -> str:
    "Text holding no valid normalised box: out of [0, 1], non-finite, empty, wrong arity, long digit runs, nesting."
    kind = data.draw(st.sampled_from(["box", "digits", "nest", "junk", "words"]))
    if kind == "box":
        b = [0.1, 0.2, 0.5, 0.6]; i = data.draw(st.integers(0, 3))
        v = data.draw(st.sampled_from(["nan", "inf", "-inf", "1e999", "-0.5", "1.5", "2", "1e3", "0x1", "1_0"]))
        b = [str(x) for x in b]; b[i] = v
        if data.draw(st.booleans()): b[2], b[0] = b[0], b[2]  # x2 <= x1
        b = data.draw(st.sampled_from([b, b[:3], b + ["0.9"], b[:2]]))
        o, c = data.draw(st.sampled_from([("[", "]"), ("(", ")"), ("[", ")"), ("{", "}")]))
        return data.draw(st.text(max_size=10)) + o + data.draw(st.sampled_from([", ", ",", " , "])).join(b) + c + data.draw(st.text(max_size=10))
    if kind == "digits": return "[" + "1" * data.draw(st.integers(1000, 20000)) + data.draw(st.sampled_from(["", ",", ".", "]"]))
    if kind == "nest": d = data.draw(st.integers(50, 20000)); return "[" * d + data.draw(st.sampled_from(["0.1, 0.2, 0.3", "0.4, 0.2, 0.3, 0.1", "x, y, z, w"])) + "]" * d
    if kind == "junk": return data.draw(st.text(alphabet=st.characters(blacklist_categories=("Nd",)), max_size=200))
    return data.draw(st.sampled_from(["", "none", "I cannot tell.", "[x1, y1, x2, y2]", "[0.1 0.2 0.3 0.4]", "[[0.1, 0.2, 0.3, 0.4]]",
                                      "(0.1, 0.2, 0.3)", "[0.5, 0.5, 0.5, 0.5]", "[0.1, 0.2, 0.1, 0.6]", "[-0.1, 0.2, 0.3, 0.4]"]))

GARBAGE = st.one_of(st.none(), st.integers(), st.floats(allow_nan=True), st.binary(max_size=30), st.text(max_size=300), st.lists(st.integers(), max_size=4),
                    st.just("\x00" * 100), st.just("yes" * 10000), st.just(" " * 50000))

def _items():
    from vlmssm.evals.core import EvalItem
    R = "zq9xv"  # an answer no garbage below contains
    return [EvalItem("vqa", 1, "f", "Q?", "a.png", R, [R] * 10), EvalItem("vqa", 2, "f", "Q?", "a.png", R, [R] * 10, metric="vizwiz"),
            EvalItem("vqa", 3, "f", "Q?", "a.png", R, [R] * 10, metric="textvqa"), EvalItem("vqa", 4, "f", "Q?", "a.png", R, [R], metric="gqa"),
            EvalItem("choice", 5, "f", "Q?", "a.png", "Yes", options=["Yes", "No"], metric="yes_no"),
            EvalItem("choice", 6, "f", "Q?", "a.png", "True", options=["True", "False"], metric="true_false"),
            EvalItem("choice", 7, "f", "Q?", "a.png", "13", options=[str(i) for i in range(16)], metric="count"),
            EvalItem("choice", 8, "f", "Q?", "a.png", R, options=["egg", R]), EvalItem("ref", 9, "g", "Box?", "a.png", "[0.10, 0.10, 0.60, 0.70]", box=[0.1, 0.1, 0.6, 0.7])]

@target(250)
def parsers(data, tmp):
    from vlmssm.evals.core import EvalItem, score_item
    from vlmssm.metrics import grounding_hit, parse_box, parse_yes_no, choice_index, iou
    kind = data.draw(st.sampled_from(["parse", "parse", "score", "score", "hit", "item"]))
    if kind == "parse":
        t, strict = _bad_box_text(data), data.draw(st.booleans())
        return attempt(lambda: parse_box(t, strict=strict), ["text"], ok=lambda r: "rejected" if r is None else None)
    if kind == "score":
        it = data.draw(st.sampled_from(_items()))
        pred = data.draw(st.one_of(GARBAGE, st.builds(lambda d: d, st.just(None)))) if it.kind != "ref" else data.draw(st.one_of(GARBAGE, st.builds(_bad_box_text, st.data())))
        if it.metric == "choice" and isinstance(pred, str) and re.fullmatch(r"\(?[Bb][\.\)]?", pred.strip()): return "rejected", None
        def ok(r):
            s = r.get("score")
            return "rejected" if isinstance(s, float) and s == 0.0 and r.get("iou_strict", 0.0) == 0.0 else None
        return attempt(lambda: score_item(it, pred), [it.id], ok=ok)
    if kind == "hit":  # thresholds outside (0, 1]: an unparseable answer must never count as a hit
        tau = data.draw(st.sampled_from([-1.0, -0.01, 0.0, float("nan"), 1.5, float("-inf")]))
        t = data.draw(st.builds(_bad_box_text, st.data()))
        return attempt(lambda: grounding_hit(t, [0.1, 0.1, 0.6, 0.7], iou=tau), ["iou", "tau", str(tau)])
    # items with impossible values: a grounding box that is not a box, a threshold outside (0, 1], no answers
    bad = data.draw(st.sampled_from(["box", "tau", "answers", "size"]))
    if bad == "box": kw = dict(kind="ref", box=bad_box(data, 1, 1, "xyxy"))
    elif bad == "tau": kw = dict(kind="ref", box=[0.1, 0.1, 0.6, 0.7], tau=data.draw(st.sampled_from([-1.0, 0.0, float("nan"), 2.0, float("inf")])))
    elif bad == "answers": kw = dict(kind="vqa", answers=data.draw(st.sampled_from([[None], [1, 2], [["a"]], "x" and [{"a": 1}]])))
    else: kw = dict(kind="ref", box=[0.1, 0.1, 0.6, 0.7], image_size=data.draw(st.sampled_from([(0, 10), (-5, 5), (10, float("nan")), (1.5, "x")])), resize="letterbox")
    return attempt(lambda: score_item(EvalItem(id="it7", family="f", prompt="p", image="a.png", answer="a", **kw), "[0.1, 0.1, 0.6, 0.7]"), ["it7"])

# --- the config loader --------------------------------------------------------------------------------------------------
@__import__("functools").lru_cache(maxsize=None)
def _leaf_fields():
    "(dotted key, type) of every scalar/list field of `StudyConfig` (sections expanded, lists of dataclasses skipped)."
    import dataclasses, typing
    from vlmssm.config import StudyConfig
    out = []
    def walk(cls, pre):
        for f in dataclasses.fields(cls):
            tp = typing.get_type_hints(cls)[f.name]
            if dataclasses.is_dataclass(tp): walk(tp, pre + f.name + ".")
            elif not (typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0])): out.append((pre + f.name, tp))
    walk(StudyConfig, "")
    return out

DOMAIN = {  # dotted key → values outside its domain (types right)
    "eval.iou": [7.0, -0.5, 0.0, 1.5], "eval.taus": [[0.5, 2.0], [-0.1], [0.0]], "train.lr": [-1.0, 0.0], "pretrain.lr": [-1e-3, 0.0],
    "dense.lr": [-1.0], "vlm.embedded.pretrain_lr": [-1.0], "train.weight_decay": [-0.1], "train.warmup_ratio": [-0.1, 1.5],
    "pretrain.warmup_ratio": [2.0], "train.max_grad_norm": [-1.0], "pretrain.grad_clip": [-1.0], "pretrain.label_smoothing": [-0.1, 1.0, 3.0],
    "pretrain.eval_every": [0, -5], "train.eval_every": [-1], "train.save_every": [-1], "train.log_every": [0, -1], "pretrain.save_every": [-3],
    "vlm.resize": ["bogus", "letterbox-square-0", ""], "pretrain.resize": ["nope"], "runtime.device": ["banana", "cuda:x", "gpu", ""],
    "runtime.stage_timeout": [-1], "eval.val_items": [-1], "data.n_val": [-1], "data.n_test": [-2], "seeds": [[-1], [7, -3]], "seed": [-7],
    "train.epochs": [0.0, -1.0], "vlm.max_length": [0, -1], "vlm.embedded.hidden_size": [0, -4], "vlm.embedded.num_heads": [0, 3],
    "vlm.embedded.vocab_size": [0], "pretrain.image_size": [0, -64], "pretrain.probe_scenes": [-1], "data.max_objects": [0, -1],
    "data.image_sizes": [[[0, 64]], [[-5, 5]], [[64]]], "pretrain.encoder_steps": [{"vit-pico": -5}, {"vit-pico": "many"}, {"vit-pico": 1.5}],
    "eval.max_new_tokens": [0], "data.noise": [-0.5], "data.max_overlap": [-0.1, 1.5], "data.box_decimals": [-1],
}

def _wrong_for(data, tp):
    "A YAML-able value of another type than `tp`."
    import typing
    from vlmssm.config import _convert, ConfigError
    def fails(v):
        try: _convert(v, tp, "k"); return False
        except ConfigError: return True
        except Exception: return True
    vals = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
                     st.lists(st.integers(0, 3), max_size=2), st.dictionaries(st.sampled_from(["a", "b"]), st.integers(), max_size=2))
    return data.draw(vals.filter(fails))

HOSTILE = ["!!python/object/apply:os.system ['touch {m}']", "!!python/object/apply:subprocess.check_output [['touch', '{m}']]",
           "!!python/name:os.system", "!!python/module:os", "!!python/object/new:pathlib.Path ['{m}']", "!include /etc/passwd", "!!binary aGk=",
           "!!python/object/apply:builtins.eval ['open(\"{m}\", \"w\")']", "!!set {{a, b}}", "!!timestamp 2020-01-01"]

def _known_ids():
    from vlmssm.backbones import list_encoders
    return set(list_encoders())

def _nest(keys, v):
    for k in reversed(keys): v = {k: v}
    return v

@target(180)
def config(data, tmp):
    import yaml
    from vlmssm.config import check_names, load_config
    p, m = tmp / "study.yaml", tmp / "pwned"
    kind = data.draw(st.sampled_from(["wrong_type", "wrong_type", "domain", "domain", "unknown", "hostile", "laughs", "deep", "syntax", "override", "toplevel", "encoder"]))
    body, names = None, [p]
    if kind == "wrong_type":
        key, tp = data.draw(st.sampled_from(_leaf_fields())); body = yaml.safe_dump(_nest(key.split("."), _wrong_for(data, tp))); names = [key]
    elif kind == "domain":
        key = data.draw(st.sampled_from(sorted(DOMAIN))); body = yaml.safe_dump(_nest(key.split("."), data.draw(st.sampled_from(DOMAIN[key])))); names = [key, key.split(".")[-1] + " ("]
    elif kind == "unknown":
        sec = data.draw(st.sampled_from(["", "train.", "data.", "vlm.embedded.", "eval.", "runtime."]))
        k = data.draw(st.from_regex(r"[a-z_]{1,12}", fullmatch=True).filter(lambda k: k not in {f.split(".")[-1] for f, _ in _leaf_fields()} | {"inherit", "encoders", "checkpoints", "data", "train", "vlm", "eval", "runtime", "pretrain", "dense", "paths", "embedded"}))
        body = yaml.safe_dump(_nest((sec + k).split("."), 1)); names = [sec + k]
    elif kind == "hostile":
        key = data.draw(st.sampled_from(["description", "train.lr", "data.root", "seeds"]))
        tag = data.draw(st.sampled_from(HOSTILE)).format(m=m)
        names = [key, p]
        body = "\n".join(f"{'  ' * i}{k}:" for i, k in enumerate(key.split(".")[:-1])) + ("\n" if "." in key else "") + f"{'  ' * key.count('.')}{key.split('.')[-1]}: {tag}\n"
    elif kind == "laughs":
        n = data.draw(st.integers(4, 7)); names = ["alias"]  # small: the loader must refuse aliases, not survive their expansion
        body = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i-1}'] * 9)}]\n" for i in range(1, n)) + f"description: *a{n-1}\n"
    elif kind == "deep": d = data.draw(st.integers(1100, 3000)); body = "description: " + "[" * d + "]" * d + "\n"; names = [p, "description"]
    elif kind == "syntax": body = data.draw(st.sampled_from(["a: [1, 2\n", "train: {lr: 1\n", "\tseed: 1\n", "a: b: c\n", "seed: 1\nseed: 2\n: x\n", "key: 'unterminated\n", "- a\nb: 1\n"]))
    elif kind == "toplevel": body = data.draw(st.sampled_from(["- 1\n- 2\n", "just text\n", "42\n", "[]\n", "- {seed: 1}\n"]))
    elif kind == "encoder":
        eid = data.draw(st.one_of(st.text(max_size=20), st.sampled_from(["vit-pic", "VMAMBA-PICO", "vmamba_pico", "vit-pico ", "../vit-pico", "vit-pico\x00"])))
        if eid in _known_ids(): eid += "?"
        body = yaml.safe_dump({"encoders": [{"id": eid}]}); names = [repr(eid), "encoders[0]"]
    if kind == "override":
        o = data.draw(st.sampled_from(["seed.x=1", "seeds=[7,8", "train.lr=[1", "=3", "train..lr=1", "train.lr=!!python/name:os.system", "train=5", "train.lr",
                                       "data.n_train={a: 1", "x" * 300 + "=1", "train.lr=1e", "eval.iou=7", "train.lr=-1", "runtime.device=banana", "seed=\x00"]))
        def go(): return check_names(load_config("smoke", [o]))
        return attempt(go, [o, o.split("=")[0] or "override key ''"])
    if m.exists(): m.unlink()
    p.write_text("inherit: smoke\n" + body if kind not in ("toplevel", "syntax") else body)
    import signal
    def alarm(*a): raise TimeoutError(f"config loading of {kind} did not finish in 20 s (a hang: aliases or nesting expanding)")
    def go():
        old = signal.signal(signal.SIGALRM, alarm); signal.alarm(20)
        try: return check_names(load_config(str(p)))
        finally: signal.alarm(0); signal.signal(signal.SIGALRM, old)
    out = _tag(attempt(go, names + [p]), kind)
    return ("escaped", "a hostile YAML tag ran code") if m.exists() else out

# --- encoder ids -------------------------------------------------------------------------------------------------------
@target(60)
def encoder_ids(data, tmp):
    from vlmssm.backbones import create_encoder, list_encoders
    known = set(list_encoders())
    kind = data.draw(st.sampled_from(["id", "id", "id", "tap", "resize", "resolution"]))
    if kind == "id":
        eid = data.draw(st.one_of(st.text(max_size=30), st.sampled_from(["vit-pic", "VIT-PICO", "vit_pico", " vit-pico", "vit-pico\x00", "../vit-pico", "",
                                                                        "x" * 10000, "vmamba-pico/../vit-pico"]),
                                  st.none(), st.integers(), st.lists(st.text(max_size=3), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1)))
        if isinstance(eid, str) and eid in known: eid = eid + "?"
        return attempt(lambda: create_encoder(eid), [repr(eid) if not isinstance(eid, str) else repr(eid)[:60], str(eid)[:60]])
    eid = data.draw(st.sampled_from(["vit-pico", "vmamba-pico", "mambavision-pico"]))
    if kind == "tap": v = data.draw(st.sampled_from(["stage 9", "block 99", "block -99", "garbage", "stage -7", "stage 3 layer 99", "block x", "stage"])); kw = dict(tap=v)
    elif kind == "resize": v = data.draw(st.sampled_from(["bogus", "letterbox-square-0", "letterbox-square--5", "resize", "LETTERBOX", " letterbox"])); kw = dict(resize=v)
    else: v = data.draw(st.sampled_from([0, -64, (0, 64), (64, -1), (64,), "64", 1.5, (64, 64, 3), 10**7])); kw = dict(resolution=v)
    return attempt(lambda: create_encoder(eid, **kw), [repr(v), str(v), kind])

# --- checkpoints --------------------------------------------------------------------------------------------------------
CKPT: dict = {}

def _ckpt_base(tmp):
    if not CKPT:
        from vlmssm.backbones import create_encoder
        from vlmssm.backbones.core import save_encoder
        enc = create_encoder("vit-pico")
        d = tmp / "ck_base"; d.mkdir(exist_ok=True)
        save_encoder(enc, d / "good.safetensors", resolution=list(enc.default_resolution))
        torch.save({"model": enc.model.state_dict()}, d / "good.pth")
        save_encoder(create_encoder("mambavision-pico"), d / "other.safetensors", resolution=[64, 64])
        CKPT.update(enc=enc, sd=enc.model.state_dict(), st=(d / "good.safetensors").read_bytes(), pth=(d / "good.pth").read_bytes(),
                    other=(d / "other.safetensors").read_bytes())
    return CKPT

def _hostile(kind, marker) -> bytes:
    "A pickle that would run code when unpickled (harmless here: it creates `marker`)."
    import os as _os
    class Run:
        def __reduce__(self): return {"system": (_os.system, (f"touch {marker}",)), "touch": (Path.touch, (Path(marker),)),
                                      "eval": (eval, (f"open({str(marker)!r}, 'w')",)), "exec": (exec, (f"open({str(marker)!r}, 'w')",))}[kind]
    return pickle.dumps({"model": {"w": Run()}})

@target(80)
def checkpoints(data, tmp):
    from safetensors.torch import save_file
    from vlmssm.backbones import create_encoder
    from vlmssm.backbones.core import load_weights
    b = _ckpt_base(tmp)
    kind = data.draw(st.sampled_from(["trunc_st", "trunc_pth", "header", "garbage", "empty", "hostile", "hostile_pt", "other", "reshaped", "missing_keys",
                                      "extra_keys", "not_tensors", "not_dict", "dir", "loop", "nofile", "vlm", "vlm", "resume"]))
    if kind == "vlm": return _vlm_dir(data, tmp)
    if kind == "resume": return _resume_dir(data, tmp)
    ext = {"trunc_st": ".safetensors", "header": ".safetensors", "other": ".safetensors"}.get(kind, data.draw(st.sampled_from([".pth", ".pt", ".bin", ".safetensors", ".pkl"])))
    p = tmp / f"ck_{kind}{ext}"
    if p.is_symlink() or p.is_file(): p.unlink()
    elif p.is_dir(): p.rmdir()
    m = tmp / "pwned"
    if m.exists(): m.unlink()
    sd = {k: v.clone() for k, v in b["sd"].items()}
    if kind == "trunc_st": p.write_bytes(b["st"][:data.draw(st.integers(1, len(b["st"]) - 1))])
    elif kind == "trunc_pth": p.write_bytes(b["pth"][:data.draw(st.integers(1, len(b["pth"]) - 1))])
    elif kind == "header":
        raw = bytearray(b["st"]); which = data.draw(st.sampled_from(["len", "json", "offsets"]))
        if which == "len": raw[:8] = struct.pack("<Q", data.draw(st.sampled_from([0, 1, 2**40, 2**63, len(raw) + 1])))
        elif which == "json": i = data.draw(st.integers(8, 8 + struct.unpack("<Q", raw[:8])[0] - 1)); raw[i] = data.draw(st.sampled_from(b"{}[]\"\\\x00\xff"))
        else: raw = raw[:8] + raw[8:].replace(b'"data_offsets":[0,', b'"data_offsets":[9999999999,', 1)
        p.write_bytes(bytes(raw))
    elif kind == "garbage": p.write_bytes(data.draw(st.binary(min_size=1, max_size=400)))
    elif kind == "empty": p.write_bytes(b"")
    elif kind == "hostile": p.write_bytes(_hostile(data.draw(st.sampled_from(["system", "touch", "eval", "exec"])), m))
    elif kind == "hostile_pt":
        class R:
            def __reduce__(self): return (Path.touch, (m,))
        torch.save({"model": sd, "hook": R()}, p)
    elif kind == "other": p.write_bytes(b["other"])
    else:
        k = data.draw(st.sampled_from(sorted(k for k in sd if not k.startswith("head"))))  # a classifier may legitimately differ
        if kind == "reshaped": sd[k] = torch.zeros(tuple(s + 1 for s in sd[k].shape) or (2,))
        elif kind == "missing_keys": del sd[k]
        elif kind == "extra_keys": sd["blocks.99.extra.weight"] = torch.zeros(3)
        elif kind == "not_tensors": sd = {k: data.draw(st.sampled_from([1, "w", [1.0], None]))}
        if kind == "not_dict": obj = data.draw(st.sampled_from([[1, 2], "weights", 3, torch.zeros(3)]))
        else: obj = sd
        if ext == ".safetensors":
            if kind in ("not_tensors", "not_dict"): p.write_bytes(b'{"__metadata__": {}, "w": "x"}'[:0] + struct.pack("<Q", 9) + b'{"w": 1} ')
            else: save_file({kk: v.contiguous() for kk, v in obj.items()}, str(p))
        elif ext == ".pkl": p.write_bytes(pickle.dumps(obj if not isinstance(obj, dict) else {kk: (v.numpy() if isinstance(v, torch.Tensor) else v) for kk, v in obj.items()}))
        else: torch.save({"model": obj} if data.draw(st.booleans()) else obj, p)
        if kind == "dir": p.unlink(); p.mkdir()
        elif kind == "loop": p.unlink(); os.symlink(p, p)
        elif kind == "nofile": p.unlink()
    how = data.draw(st.sampled_from(["create", "load"]))
    fn = (lambda: create_encoder("vit-pico", pretrained=str(p))) if how == "create" else (lambda: load_weights(b["enc"], p))
    out = attempt(fn, [p.name])
    return ("escaped", f"a hostile checkpoint ran code ({kind})") if m.exists() else out

def _vlm_base(tmp):
    if "vlm" not in CKPT:
        from vlmssm.test_utils import fixture_tokenizer, tiny_vlm
        d = tmp / "vlm_base"
        tiny_vlm(fixture_tokenizer(), blind=True).save_pretrained(d)
        CKPT["vlm"] = d
    return CKPT["vlm"]

def _vlm_dir(data, tmp):
    from vlmssm.vlm import VLM
    base = _vlm_base(tmp)
    d = tmp / "vlm_bad"
    if d.exists(): shutil.rmtree(d)
    shutil.copytree(base, d)
    kind = data.draw(st.sampled_from(["config_bytes", "config_type", "config_drop", "weights_trunc", "weights_garbage", "weights_other", "tokenizer", "no_weights"]))
    cfg = json.loads((d / "config.json").read_text())
    if kind == "config_bytes": (d / "config.json").write_bytes(byte_mutation(data, (d / "config.json").read_bytes()))
    elif kind == "config_type":
        k = data.draw(st.sampled_from(["parts", "lm_config", "prompt_format", "image_position", "connector", "format"]))
        cfg[k] = wrong_type(data, {"parts": list, "lm_config": dict, "prompt_format": str, "image_position": str, "connector": (dict, type(None)), "format": str}[k])
        if k == "format": cfg[k] = "vlmssm-vlm-x"
        (d / "config.json").write_text(json.dumps(cfg))
    elif kind == "config_drop":
        del cfg[data.draw(st.sampled_from(["parts", "lm_config", "prompt_format", "image_position", "connector", "format"]))]
        (d / "config.json").write_text(json.dumps(cfg))
    elif kind == "weights_trunc": raw = (d / "model.safetensors").read_bytes(); (d / "model.safetensors").write_bytes(raw[:data.draw(st.integers(0, len(raw) - 1))])
    elif kind == "weights_garbage": (d / "model.safetensors").write_bytes(data.draw(st.binary(min_size=1, max_size=100)))
    elif kind == "weights_other": (d / "model.safetensors").write_bytes(_ckpt_base(tmp)["st"])
    elif kind == "no_weights": (d / "model.safetensors").unlink()
    else:
        t = d / "tokenizer" / data.draw(st.sampled_from(sorted(x.name for x in (d / "tokenizer").iterdir())))
        t.write_bytes(byte_mutation(data, t.read_bytes()) if data.draw(st.booleans()) else b"")
        if t.name == "special_tokens_map.json": t.write_bytes(b"[")
    return attempt(lambda: VLM.from_pretrained(d, load_encoder=False), [str(d), d.name])

def _resume_dir(data, tmp):
    "A training checkpoint folder (`vlmssm.train.save_checkpoint` layout) with one broken part."
    from vlmssm.train import load_checkpoint, save_checkpoint
    if "resume" not in CKPT:
        model = torch.nn.Linear(3, 2); opt = torch.optim.AdamW(model.parameters()); sch = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        d = tmp / "resume_base"; save_checkpoint(d, model, opt, sch, {"step": 1})
        CKPT["resume"] = (d, model, opt, sch)
    base, model, opt, sch = CKPT["resume"]
    d = tmp / "resume_bad"
    if d.exists(): shutil.rmtree(d)
    shutil.copytree(base, d)
    step = next(p for p in d.iterdir() if p.is_dir())
    kind = data.draw(st.sampled_from(["latest_escape", "latest_garbage", "part_trunc", "part_hostile", "part_missing", "state"]))
    m = tmp / "pwned"
    if m.exists(): m.unlink()
    if kind == "latest_escape": (d / "latest").write_text(data.draw(st.sampled_from(["../../etc", "/tmp", "..", "../resume_base/" + step.name, "\x00"])))
    elif kind == "latest_garbage": (d / "latest").write_bytes(data.draw(st.sampled_from([b"", b"\xff\xfe", b"step-x", b"a/b/c", b" "])))
    else:
        f = step / data.draw(st.sampled_from(["model.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json"]))
        if kind == "part_trunc": raw = f.read_bytes(); f.write_bytes(raw[:data.draw(st.integers(0, len(raw) - 1))])
        elif kind == "part_hostile": f.write_bytes(_hostile("touch", m))
        elif kind == "part_missing": f.unlink()
        else: (step / "state.json").write_text(data.draw(st.sampled_from(["[]", "{", '"x"', "null", "1"])))
    out = attempt(lambda: load_checkpoint(d, model, opt, sch), [str(d), d.name])
    return ("escaped", "a hostile checkpoint ran code (resume)") if m.exists() else out

# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(TARGETS) if TARGETS else ["none"])
def test_fuzz(name, tmp_path, report, request):
    fn, n = TARGETS[name]
    if name == "benchmark_index": BENCH["root"] = request.getfixturevalue("tiny_bench")
    counts, examples = Counter(), defaultdict(Counter)
    @settings(max_examples=n, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(st.data())
    def run(data):
        out, detail = fn(data, tmp_path)
        counts[out] += 1
        if detail: examples[out][detail] += 1
    run()
    report[name] = counts
    _say(request, f"fuzz counts   {name:<16} inputs {sum(counts.values()):>5}  rejected {counts['rejected']:>5}  skipped {counts['skipped']:>3}  "
                  f"escaped {counts['escaped']:>4}  silent {counts['silent']:>4}")
    bad = {o: examples[o].most_common(12) for o in ("escaped", "silent") if counts[o]}
    lines = [f"{name}: {dict(counts)}"] + [f"  {o} x{k}: {d}" for o, ex in bad.items() for d, k in ex]
    print("\n".join(lines))
    assert sum(counts.values()) >= n // 2, f"{name}: only {sum(counts.values())} inputs generated"
    assert not bad, "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# Faults of the machine, not of the input: the CLI says one line, never a traceback.
def _cli(*argv):
    import contextlib
    from vlmssm.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): rc = main(list(argv))
    return rc, err.getvalue()

def test_unwritable_run_dir_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("a file where the run directory should go")
    for rd in (tmp_path / "afile" / "run", tmp_path / "afile"):
        rc, err = _cli("study", "--preset", "smoke", "--only", "00_data", "--run_dir", str(rd), "--quiet")
        assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err and "afile" in err, err

def test_full_disk_is_one_line(tmp_path, monkeypatch):
    import errno, tempfile
    def full(*a, **k): raise OSError(errno.ENOSPC, "No space left on device", str(k.get("dir") or (a[2] if len(a) > 2 else "")))
    monkeypatch.setattr(tempfile, "mkstemp", full); monkeypatch.setattr(tempfile, "mkdtemp", full)
    rc, err = _cli("study", "--preset", "smoke", "--only", "00_data", "--run_dir", str(tmp_path / "run"), "--quiet")
    assert rc == 2 and err.count("\n") == 1 and "No space left on device" in err and str(tmp_path / "run") in err, err
