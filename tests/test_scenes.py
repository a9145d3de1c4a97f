"""Scene synthesis invariants, checked on real synthesised scenes (docs/ORIGINAL.md §2.2-2.5)."""
import itertools
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from asr_tf.data import patches, scenes

NUM_SCENES = 60  # scenes checked per dataset


def small(name, **overrides):
    """A registered spec with a small fixed dataset (fast split permutation)."""
    return scenes.get_spec(name, images_per_count=500, num_test=100, **overrides)


def objects_of(spec, index, split="train"):
    """(image [S, S], [(x, y, patch)]) of one scene."""
    return scenes._synthesize_objects(spec, index, split)


def ink_mask(spec, x, y, patch):
    """Canvas-sized bool mask [S, S] of one placed object's ink."""
    mask = np.zeros([spec.canvas_px, spec.canvas_px], bool)
    mask[y : y + patch.shape[0], x : x + patch.shape[1]] = patch != 0
    return mask


# --- registry and validation -------------------------------------------------------------------
def test_registry_holds_the_five_paper_datasets():
    assert set(scenes.DATASETS) == {
        "mnist_13", "mnist_14", "mnist_24", "mnist_bbox3", "dsprites_bbox3"
    }
    d13, bbox, dsp = (scenes.DATASETS[n] for n in ("mnist_13", "mnist_bbox3", "dsprites_bbox3"))
    assert (d13.source, d13.canvas_px, d13.counts, d13.rescale, d13.overlap) == (
        "mnist", 50, (1, 3), None, "pixel"
    )
    assert (bbox.counts, bbox.rescale, bbox.overlap, bbox.bbox_overlap_mode) == (
        (3,), (0.6, 0.6), "bbox", "x_only"
    )
    assert (dsp.source, dsp.canvas_px, dsp.size_range_px) == ("dsprites", 64, (12, 15))
    assert scenes.DATASETS["mnist_24"].counts == (2, 4)
    assert (d13.num_train, d13.num_test, bbox.num_train) == (39000, 1000, 19000)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(counts=()), "counts"),
        (dict(counts=(0, 1)), "counts"),
        (dict(counts=(5,)), "counts"),
        (dict(counts=(3, 1)), "sorted"),
        (dict(counts=(1, 1)), "sorted"),
        (dict(counts=("a",)), "counts"),
        (dict(source="cifar"), "source"),
        (dict(overlap="ink"), "overlap"),
        (dict(bbox_overlap_mode="y_only"), "bbox_overlap_mode"),
        (dict(rescale=(0.8, 0.6)), "rescale"),
        (dict(canvas_px=0), "canvas_px"),
        (dict(num_test=40000), "num_test"),
        (dict(colour="red"), "colour"),
    ],
)
def test_bad_specs_raise_clear_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        scenes.get_spec("mnist_13", **overrides)


def test_unknown_dataset_name_lists_the_allowed_names():
    with pytest.raises(ValueError) as info:
        scenes.get_spec("mnist_99")
    assert "mnist_99" in str(info.value)
    for name in scenes.DATASETS:
        assert name in str(info.value)


def test_bad_split_index_and_seed_raise():
    spec = small("mnist_13")
    with pytest.raises(ValueError, match="split"):
        scenes.synthesize_scene(spec, 0, "valid")
    with pytest.raises(ValueError, match="out of range"):
        scenes.synthesize_scene(spec, spec.num_train, "train")
    with pytest.raises(ValueError, match="out of range"):
        scenes.synthesize_scene(spec, -1, "test")
    with pytest.raises(ValueError, match="data_seed"):
        small("mnist_13", data_seed=-3)
    with pytest.raises(ValueError, match="data_seed"):
        small("mnist_13", data_seed=1.5)


def test_counts_that_cannot_fit_raise_instead_of_hanging():
    spec = small("mnist_13", counts=(4,), canvas_px=30)
    start = time.perf_counter()
    with pytest.raises(scenes.SceneSynthesisError) as info:
        scenes.synthesize_scene(spec, 0, "train")
    assert time.perf_counter() - start < 20
    message = str(info.value)
    assert "cannot fit" in message and "mnist_13" in message and "30x30" in message
    # A canvas smaller than any object: every attempt fails fast.
    with pytest.raises(scenes.SceneSynthesisError, match="cannot fit"):
        scenes.synthesize_scene(small("mnist_13", canvas_px=8), 0, "train")


# --- per-object preprocessing ------------------------------------------------------------------
def test_crop_non_empty_hand_checked():
    image = np.zeros([28, 28], np.float32)
    image[2:6, 10:20] = 1.0  # ink rows 2..5, cols 10..19
    # cx = 14.5, cy = 3.5, L = 4.5 -> cols int(10.0)..int(19.0), rows int(-1.0)..int(8.0),
    # the negative row start clamped to 0 (Q3: the original would wrap to an empty slice).
    patch = patches.crop_non_empty(image)
    assert patch.shape == (9, 10)
    assert patch.sum() == image.sum()
    image = np.zeros([28, 28], np.float32)
    image[10:13, 4:6] = 0.5  # ink rows 10..12, cols 4..5: L = 1, cx = 4.5 -> cols 3..5
    assert patches.crop_non_empty(image).shape == (3, 3)
    with pytest.raises(patches.EmptyPatch):
        patches.crop_non_empty(np.zeros([5, 5]))


def test_rescale_patch_follows_the_spec():
    digit = patches._source_crops("mnist")[0]  # ~20 px crop of the first MNIST digit
    patch = patches.rescale_patch(digit, 0.6, 28)
    assert max(patch.shape) <= int(28 * 0.6)  # resampled onto a 16x16 canvas, then cropped
    assert patch.min() == 0.0 and patch.max() <= 1.0
    assert patch[patch > 0].min() >= patches.INK_FLOOR
    assert patch.any(axis=0)[[0, -1]].any() and patch.any(axis=1)[[0, -1]].any()  # re-cropped


# --- scenes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mnist_13", "mnist_14", "mnist_24"])
def test_count_sets_never_overlap_ink(name):
    spec = small(name)
    for index in range(NUM_SCENES):
        image, placed = objects_of(spec, index)
        masks = [ink_mask(spec, x, y, patch) for x, y, patch in placed]
        for a, b in itertools.combinations(masks, 2):
            assert not (a & b).any(), f"{name} scene {index}: ink overlaps"
        # Additive composition of exactly these objects.
        total = np.zeros_like(image)
        for x, y, patch in placed:
            total[y : y + patch.shape[0], x : x + patch.shape[1]] += patch
        np.testing.assert_array_equal(image, total)


@pytest.mark.parametrize("name", ["mnist_bbox3", "dsprites_bbox3"])
def test_bbox_sets_have_disjoint_x_ranges_under_x_only(name):
    spec = small(name)
    batch = scenes.synthesize_batch(spec, np.arange(NUM_SCENES))
    y_overlaps = 0
    for boxes in batch["boxes_px"]:
        for (xa, ya, wa, ha), (xb, yb, wb, hb) in itertools.combinations(boxes[:3], 2):
            assert xa + wa <= xb or xb + wb <= xa  # x-ranges disjoint (Q1)
            y_overlaps += ya < yb + hb and yb < ya + ha
    assert y_overlaps > 0  # y is unconstrained: objects share rows


@pytest.mark.parametrize("name", ["mnist_bbox3", "dsprites_bbox3"])
def test_bbox_sets_have_disjoint_boxes_under_true_box(name):
    spec = small(name, bbox_overlap_mode="true_box")
    batch = scenes.synthesize_batch(spec, np.arange(NUM_SCENES))
    x_overlaps = 0
    for boxes in batch["boxes_px"]:
        for (xa, ya, wa, ha), (xb, yb, wb, hb) in itertools.combinations(boxes[:3], 2):
            x_hit, y_hit = xa < xb + wb and xb < xa + wa, ya < yb + hb and yb < ya + ha
            assert not (x_hit and y_hit)
            x_overlaps += x_hit
    assert x_overlaps > 0  # unlike x_only, columns may be shared


@pytest.mark.parametrize("name", sorted(scenes.DATASETS))
def test_images_and_boxes_are_consistent(name):
    spec = small(name)
    size = spec.canvas_px
    batch = scenes.synthesize_batch(spec, np.arange(NUM_SCENES))
    image, count, boxes, mask = (batch[k] for k in ("image", "count", "boxes_px", "box_mask"))
    assert image.shape == (NUM_SCENES, size, size) and image.dtype == np.float32
    assert boxes.shape == (NUM_SCENES, 4, 4) and mask.shape == (NUM_SCENES, 4)
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert set(count.tolist()) <= set(spec.counts)
    np.testing.assert_array_equal(mask.sum(axis=1), count)
    np.testing.assert_array_equal(mask, np.arange(4) < count[:, None])  # real boxes first
    assert (boxes[~mask] == 0).all()
    real = boxes[mask]  # [n, 4] (x, y, w, h)
    assert (real[:, :2] >= 0).all() and (real[:, 2:] >= 1).all()
    assert (real[:, 0] + real[:, 2] <= size).all() and (real[:, 1] + real[:, 3] <= size).all()
    if spec.rescale:  # ORIGINAL.md §2.5: ~12 px MNIST, ~12-16 px dSprites after the 0.6 rescale
        assert real[:, 2:].max() <= int(patches.SOURCE_SIDE_PX[spec.source] * 0.6)
    for b in range(NUM_SCENES):  # all ink lies inside the union of the GT boxes
        covered = np.zeros([size, size], bool)
        for x, y, w, h in boxes[b][mask[b]].astype(int):
            covered[y : y + h, x : x + w] = True
        assert not image[b][~covered].any()


def test_gt_boxes_are_the_placed_patches_and_contain_their_ink():
    spec = small("mnist_14")
    for index in range(20):
        scene = scenes.synthesize_scene(spec, index)
        _, placed = objects_of(spec, index)
        assert scene["count"] == len(placed)
        for box, (x, y, patch) in zip(scene["boxes_px"], placed):
            np.testing.assert_array_equal(box, [x, y, patch.shape[1], patch.shape[0]])
            ink = np.argwhere(ink_mask(spec, x, y, patch))  # [n, 2] (row, col)
            assert ink[:, 1].min() >= x and ink[:, 1].max() < x + box[2]
            assert ink[:, 0].min() >= y and ink[:, 0].max() < y + box[3]


def test_counts_are_balanced_and_match_the_synthesised_scenes():
    spec = scenes.get_spec("mnist_13")
    full = np.concatenate([scenes.scene_counts(spec, s) for s in ("train", "test")])
    np.testing.assert_array_equal(np.bincount(full)[[1, 3]], [20000, 20000])  # exact
    train = scenes.scene_counts(spec, "train")
    assert abs((train == 1).mean() - 0.5) < 0.03
    batch = scenes.synthesize_batch(spec, np.arange(40), "train")
    np.testing.assert_array_equal(batch["count"], train[:40])


def test_train_and_test_are_disjoint_and_cover_the_full_set():
    spec = small("mnist_24")
    train, test = scenes.scene_ids(spec, "train"), scenes.scene_ids(spec, "test")
    assert len(train) == spec.num_train == 900 and len(test) == spec.num_test == 100
    assert not set(train.tolist()) & set(test.tolist())
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(1000))
    # The same scene id gives the same scene, so disjoint ids mean no shared scenes.
    train_images = scenes.synthesize_batch(spec, np.arange(30), "train")["image"]
    test_images = scenes.synthesize_batch(spec, np.arange(30), "test")["image"]
    assert not any(np.array_equal(a, b) for a in train_images for b in test_images)


def test_synthesis_is_deterministic_and_random_access():
    spec = small("mnist_bbox3")
    seed5 = scenes.get_spec(spec, data_seed=5)
    first = scenes.synthesize_batch(seed5, [7, 3, 11], "train")
    again = scenes.synthesize_batch(seed5, [11, 7], "train")
    single = scenes.synthesize_scene(seed5, 3, "train")
    np.testing.assert_array_equal(first["image"][[2, 0]], again["image"])
    np.testing.assert_array_equal(first["boxes_px"][[2, 0]], again["boxes_px"])
    np.testing.assert_array_equal(first["image"][1], single["image"])
    other_data_set = scenes.synthesize_batch(scenes.get_spec(spec, data_seed=6), [7, 3, 11], "train")
    assert not np.array_equal(first["image"], other_data_set["image"])
    # data seed 0 is the default, and another data seed draws another split too
    np.testing.assert_array_equal(scenes.scene_ids(spec, "test"),
                                  scenes.scene_ids(scenes.get_spec(spec, data_seed=0), "test"))
    assert set(scenes.scene_ids(seed5, "test")) != set(scenes.scene_ids(spec, "test"))


def test_fresh_scenes_are_new_and_use_the_allowed_counts():
    spec = small("mnist_14")
    fresh = scenes.synthesize_batch(spec, np.arange(200), "fresh")
    counts = np.bincount(fresh["count"], minlength=5)
    assert counts[0] == counts[2] == counts[3] == 0 and counts[1] > 60 and counts[4] > 60
    train = scenes.synthesize_batch(spec, np.arange(20), "train")
    assert not any(np.array_equal(a, b) for a in fresh["image"][:20] for b in train["image"])
    np.testing.assert_array_equal(
        fresh["image"][150], scenes.synthesize_scene(spec, 150, "fresh")["image"]
    )


# --- files -------------------------------------------------------------------------------------
def test_export_scenes_writes_npz_and_preview(tmp_path):
    out, preview = tmp_path / "scenes.npz", tmp_path / "scenes.png"
    arrays = scenes.export_scenes("dsprites_bbox3", "test", 12, str(out), preview=str(preview))
    with np.load(out) as data:
        assert sorted(data.files) == ["box_mask", "boxes_px", "counts", "images"]
        assert data["images"].shape == (12, 64, 64) and data["boxes_px"].shape == (12, 4, 4)
        np.testing.assert_array_equal(data["images"], arrays["images"])
        expected = scenes.synthesize_batch("dsprites_bbox3", np.arange(12), "test")
        np.testing.assert_array_equal(data["images"], expected["image"])
    assert preview.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_make_dataset_tool_rejects_bad_input_and_writes_nothing(repo_root, tmp_path):
    tool = [sys.executable, str(repo_root / "tools" / "make_dataset.py")]
    out = tmp_path / "s.npz"
    for args in (["--dataset", "mnist_99"], ["--dataset", "mnist_13", "--num", "1001"],
                 ["--dataset", "mnist_13", "--split", "valid"]):
        result = subprocess.run(tool + args + ["--out", str(out)], capture_output=True,
                                text=True, env=dict(os.environ), timeout=120)
        assert result.returncode != 0
        assert "error:" in result.stderr
        assert not any(tmp_path.iterdir())
    result = subprocess.run(tool + ["--dataset", "dsprites_bbox3", "--num", "5",
                                    "--out", str(out)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    with np.load(out) as data:
        assert data["images"].shape == (5, 64, 64)
