"Resize strategies and the exact original ↔ input box geometry (vlmssm.geometry)."
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN as M, IMAGENET_DEFAULT_STD as S, create_transform
from torchvision.transforms import InterpolationMode, Resize

from vlmssm.geometry import build_preprocess, check_strategy, list_resize_strategies, painted_box_check, strategy_input_size

STRATEGIES = ["letterbox", "resize-naive", "resize-crop", "fit-pad", "letterbox-square-96"]
SIZES = [(301, 127), (97, 233), (640, 480), (480, 640), (1333, 800), (51, 50), (50, 51), (7, 300)]
TARGETS = [(128, 128), (80, 120), (120, 80)]


def _boxes(w, h, n=20, seed=0):
    r = np.random.default_rng(seed)
    x = np.sort(r.uniform(0, w, (n, 2)), 1); y = np.sort(r.uniform(0, h, (n, 2)), 1)
    return np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], 1)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("mode", ["short-crop", "exact"])
def test_round_trip_pixels_and_normalised(strategy, mode):
    for target in TARGETS:
        pre = build_preprocess(strategy, target, M, S, crop_pct=0.9 if strategy == "resize-crop" else 1.0, resize_mode=mode)
        for w, h in SIZES:
            g = pre.geometry(w, h)
            assert g.dst_size[::-1] == strategy_input_size(strategy, target)
            b = _boxes(w, h)
            back = g.to_original(g.to_input(b), clip=False)
            assert np.abs(back - b).max() < 0.5  # the contract: within half a pixel (it is exact up to float error)
            assert np.abs(back - b).max() < 1e-6
            bn = b / np.array([w, h, w, h])
            assert np.abs(g.to_original(g.to_input(bn, normalized=True), normalized=True, clip=False) - bn).max() < 1e-9


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_painted_box_lands_where_the_map_says(strategy):
    for target in TARGETS:
        for mode in ["short-crop", "exact"]:
            pre = build_preprocess(strategy, target, M, S, resize_mode=mode)
            for w, h in [(301, 127), (97, 233), (640, 480), (55, 201)]:
                box = (w // 5, h // 4, (3 * w) // 5 + 3, (2 * h) // 3)
                pred, meas = painted_box_check(pre, w, h, box)
                assert np.abs(pred - meas).max() <= 1.01, (strategy, target, mode, (w, h), pred, meas)


def test_tensor_output_shape_and_type():
    img = Image.new("RGB", (97, 41), (10, 200, 30))
    for s in STRATEGIES:
        for target in TARGETS:
            x = build_preprocess(s, target, M, S)(img)
            assert x.dtype == torch.float32 and x.shape == (3, *strategy_input_size(s, target))
    b = torch.tensor([[1., 2., 30., 40.]])
    g = build_preprocess("letterbox", 64, M, S).geometry(97, 41)
    assert isinstance(g.to_input(b), torch.Tensor) and isinstance(g.to_input([1, 2, 3, 4]), list)


def test_letterbox_matches_prismatic_and_timm():
    rng = np.random.default_rng(1)
    fill = tuple(int(m * 255) for m in M)
    for (w, h) in [(263, 181), (181, 264), (100, 100)]:
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        mx = max(w, h); hp, vp = int((mx - w) / 2), int((mx - h) / 2)           # Prismatic LetterboxPad, verbatim
        padded = TF.pad(img, (hp, vp, hp, vp), fill=fill)
        for crop in (1.0, 0.9):
            ref = create_transform(input_size=(3, 224, 224), interpolation="bicubic", mean=M, std=S, crop_pct=crop)
            assert torch.equal(build_preprocess("letterbox", 224, M, S, crop_pct=crop)(img), ref(padded))
        # the authors' MaxViT / MambaVision / VMamba wrappers: LetterboxPad then Resize((S, S))
        ref = TF.normalize(TF.to_tensor(Resize((224, 224), interpolation=InterpolationMode.BICUBIC)(padded)), M, S)
        assert torch.equal(build_preprocess("letterbox", 224, M, S, resize_mode="exact")(img), ref)


def test_resize_crop_matches_timm_eval_transform():
    img = Image.fromarray(np.random.default_rng(2).integers(0, 255, (181, 263, 3), dtype=np.uint8))
    for crop, size in [(0.9, (224, 224)), (0.875, (224, 224)), (1.0, (160, 224)), (0.95, (224, 160))]:
        ref = create_transform(input_size=(3, *size), interpolation="bicubic", mean=M, std=S, crop_pct=crop, crop_mode="center")
        assert torch.equal(build_preprocess("resize-crop", size, M, S, crop_pct=crop)(img), ref(img))


def test_letterbox_fill_and_symmetry():
    pre = build_preprocess("letterbox", 64, M, S, resize_mode="exact")
    g = pre.geometry(64, 32)
    assert g.content_box == (0.0, 16.0, 64.0, 48.0)                           # symmetric: 16 px above and below
    px = np.asarray(pre.pil(Image.new("RGB", (64, 32), (0, 0, 0))))
    assert tuple(px[0, 0]) == tuple(int(m * 255) for m in M) == tuple(px[-1, -1])


def test_fit_pad_never_upscales_and_pads_right_bottom():
    pre = build_preprocess("fit-pad", (800, 1333), M, S)
    g = pre.geometry(640, 480)
    assert (g.affine.sx, g.affine.sy, g.affine.tx, g.affine.ty) == (1.0, 1.0, 0.0, 0.0)
    assert g.content_box == (0.0, 0.0, 640.0, 480.0)
    g = pre.geometry(2000, 1000)                                              # too large: fit, keep ratio
    assert g.content_box[2] <= 1333 and g.content_box[3] <= 800 and g.content_box[:2] == (0.0, 0.0)
    assert abs(g.affine.sx - g.affine.sy) < 2e-3
    px = np.asarray(build_preprocess("fit-pad", 64, M, S).pil(Image.new("RGB", (32, 16), (0, 0, 0))))
    assert tuple(px[0, 0]) == (0, 0, 0) and tuple(px[-1, -1]) == tuple(int(m * 255) for m in M)


def test_letterbox_square_n_changes_the_input_size():
    assert strategy_input_size("letterbox-square-512", (800, 1333)) == (512, 512)
    g = build_preprocess("letterbox-square-512", (800, 1333), M, S).geometry(640, 480)
    assert g.dst_size == (512, 512) and np.allclose(g.content_box, (0, 0, 512, 384))


def test_grounding_both_ways():
    "A box predicted in the model's padded-square frame converts to the original-image frame RefCOCO scores in."
    g = build_preprocess("letterbox", 224, M, S).geometry(640, 480)
    pred_input_norm = [0.25, 0.25, 0.75, 0.75]
    orig_norm = g.to_original(pred_input_norm, normalized=True)
    assert np.allclose(orig_norm, [0.25, 1 / 6, 0.75, 5 / 6])
    assert np.allclose(g.to_input(orig_norm, normalized=True), pred_input_norm)


def test_strategy_errors_are_one_line():
    for bad in ["squash", "letterbox-square-", "letterbox-square-0", "Letterbox"]:
        with pytest.raises(ValueError) as e: check_strategy(bad)
        assert "\n" not in str(e.value) and "unknown resize strategy" in str(e.value)
    assert set(list_resize_strategies()) >= {"letterbox", "resize-naive", "resize-crop", "fit-pad"}
    with pytest.raises(ValueError, match="resize_mode"): build_preprocess("letterbox", 64, M, S, resize_mode="stretch")
