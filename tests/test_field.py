"""A sky field cut into a data set folder with the source extractor's boxes (asr_tf/data/field.py,
extractor.py, tools/cut_field.py; docs/OWN_DATA.md, "A real example")."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from asr_tf.data import coco, extractor, field, files, folder, images
from asr_tf.data.images import DataError
from conftest import REPO_ROOT

SEP = extractor.ExtractorParams()  # 5 sigma, 10 px, 32 levels, contrast 0.005, clean


def test_extractor_boxes_by_hand():
    """On a black image with known squares (rms 0.001, so the threshold is 0.005), SEP's 3 x 3
    matched filter spreads each square by one pixel all round, and nothing further (the next
    ring filters to exactly 0): a square's box is the square grown by 1 px on each side. A lone
    bright pixel spreads to 3 x 3 = 9 px, under minarea 10: no source. At the image's edge the
    footprint is cut."""
    image = np.zeros([20, 30], np.float32)
    image[5:9, 10:14] = 1.0  # x 10..13, y 5..8
    image[12:15, 20:26] = 1.0  # x 20..25, y 12..14
    image[2, 25] = 1.0  # a dot
    boxes = extractor.extract_boxes(image, 0.001, SEP)
    assert sorted(boxes.tolist()) == [[9, 4, 6, 6], [19, 11, 8, 5]]
    assert extractor.extract_boxes(image, 0.001, extractor.ExtractorParams(minarea_px=9)).shape == (3, 4)
    corner = np.zeros([20, 30], np.float32)
    corner[0:3, 0:3] = 1.0
    assert extractor.extract_boxes(corner, 0.001, SEP).tolist() == [[0, 0, 4, 4]]
    assert extractor.extract_boxes(np.zeros([20, 30], np.float32), 0.001, SEP).shape == (0, 4)


def test_regions_and_corners_by_hand():
    # 100 columns, the right 20 % the test region, 5 guard columns
    assert field.regions(100, 0.2, 5) == {"train": (0, 75), "test": (80, 100)}
    c = field.corners(30, (0, 75), 25, 10)  # tops 0 (only 0..5 fit); lefts 0, 10, ..., 50
    assert c.tolist() == [[0, 0], [0, 10], [0, 20], [0, 30], [0, 40], [0, 50]]
    assert field.corners(50, (80, 100), 20, 10).tolist() == [[0, 80], [10, 80], [20, 80],
                                                             [30, 80]]
    with pytest.raises(ValueError, match="no 25 px crop fits"):
        field.corners(30, (80, 100), 25, 10)
    with pytest.raises(ValueError, match="no room"):
        field.regions(10, 0.2, 8)


# The synthetic field: 64 x 160, RGB, background 0.1 with noise 0.002, 4 x 4 squares of 0.8
# (grey, red or blue) every 16 px; test region columns [120, 160), train [0, 112).
CUT = field.CutParams(crop_px=20, stride_px=10, test_stride_px=10, test_frac=0.25, gap_px=8,
                      min_count=1, max_count=2)


def _field():
    rng = np.random.default_rng(0)
    sky = np.full([64, 160, 3], 0.1, np.float32) + rng.normal(0, 0.002, [64, 160, 3])
    squares = []
    for k, (y, x) in enumerate((y, x) for y in range(3, 60, 16) for x in range(5, 156, 16)):
        if (y + x) % 3:  # leave some sky empty
            sky[y:y + 4, x:x + 4, k % 3] += 0.8
            squares.append((x, y))
    return np.clip(sky, 0, 1).astype(np.float32), squares


def _expected_boxes(squares, top, left, size, minarea):
    """Each square cut to the crop, grown by one pixel, cut again; kept from minarea px."""
    boxes = []
    for x, y in squares:
        x0, x1 = max(x, left), min(x + 4, left + size)
        y0, y1 = max(y, top), min(y + 4, top + size)
        if x0 >= x1 or y0 >= y1:
            continue
        gx0, gx1 = max(x0 - 1, left), min(x1 + 1, left + size)
        gy0, gy1 = max(y0 - 1, top), min(y1 + 1, top + size)
        if (gx1 - gx0) * (gy1 - gy0) >= minarea:
            boxes.append([gx0 - left, gy0 - top, gx1 - gx0, gy1 - gy0])
    return sorted(boxes)


def test_write_field_splits_without_leak_and_boxes_by_hand(tmp_path):
    sky, squares = _field()
    out = str(tmp_path / "sky")
    record = field.write_field(sky, out, CUT, SEP, source="synthetic")
    train, test = record["splits"]["train"], record["splits"]["test"]
    assert train["columns"] == [0, 112] and test["columns"] == [120, 160]
    s = CUT.crop_px
    # no sky in both splits: every crop lies inside its region's columns
    for split in (train, test):
        lefts = np.array(split["corners"])[:, 1]
        assert lefts.min() >= split["columns"][0] and lefts.max() + s <= split["columns"][1]
    assert train["crops"] == 5 * 10 and test["crops"] == 5 * 3  # tops 0..40, lefts every 10
    assert sum(train["count_hist_all"]) == train["crops"]
    assert sum(train["count_hist_written"]) == train["written"] == len(train["corners"])
    assert train["count_hist_all"][0] > 0 and len(train["count_hist_all"]) == 4  # 0..3 sources
    assert train["count_hist_written"] == [0] + train["count_hist_all"][1:3]
    assert json.load(open(os.path.join(out, field.FIELD_FILE))) == record
    scanned = folder.scan(out)
    for name, split in (("train", train), ("test", test)):
        files_ = scanned[name]
        assert files_.channels == 3 and len(files_.names) == split["written"]
        for i, (top, left) in enumerate(split["corners"]):
            want = _expected_boxes(squares, top, left, s, SEP.minarea_px)
            assert sorted(files_.boxes[i].tolist()) == want, (name, top, left)
            assert 1 <= len(want) <= 2
            # the crop is the field less its background (~0.1), clipped, 8 bits
            crop = images.decode(files_.path(i))
            np.testing.assert_allclose(crop, np.clip(sky[top:top + s, left:left + s] - 0.1, 0, 1),
                                       atol=0.012)
    # a crop with no source, or with more than max_count (2), is not written
    every = [(t, l) for t in range(0, 45, 10) for l in range(0, 93, 10)]
    kept = {tuple(c) for c in train["corners"]}
    for top, left in every:
        n = len(_expected_boxes(squares, top, left, s, SEP.minarea_px))
        assert ((top, left) in kept) == (1 <= n <= 2)
    # the folder trains as any other: the boxes on a 40 px canvas are twice the crop's
    first = files.load_data(out, 40, (1, 2), (4.0, 16.0)).split("train")
    np.testing.assert_array_equal(first.boxes_px[0, :first.count[0]],
                                  2 * scanned["train"].boxes[0].astype(np.float32))
    with pytest.raises(DataError, match="exists and is not empty"):
        field.write_field(sky, out, CUT, SEP)


def test_cut_field_tool(tmp_path):
    """tools/cut_field.py on an image file: the folder, field.json, the printed summary; a
    second run into the same folder is refused without touching it."""
    sky, _ = _field()
    path = str(tmp_path / "sky.png")
    images.write_png(path, sky)
    out = str(tmp_path / "data")
    cmd = [sys.executable, str(REPO_ROOT / "tools" / "cut_field.py"), "--field", path, "--out", out,
           "--crop_px", "20", "--stride_px", "10", "--test_stride_px", "10", "--test_frac", "0.25",
           "--gap_px", "8"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "train: columns [0, 112]" in done.stdout and "test: columns [120, 160]" in done.stdout
    record = json.load(open(os.path.join(out, field.FIELD_FILE)))
    assert record["cut"]["crop_px"] == 20 and record["extractor"] == {
        "thresh_sigma": 5.0, "minarea_px": 10, "deblend_nthresh": 32, "deblend_cont": 0.005,
        "clean": True}
    assert os.path.isfile(os.path.join(out, "test", coco.ANNOTATIONS_FILE))
    before = sorted(os.listdir(os.path.join(out, "train")))
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "exists and is not empty" in again.stderr
    assert sorted(os.listdir(os.path.join(out, "train"))) == before


@pytest.mark.slow
def test_the_example_end_to_end_on_a_synthetic_field(tmp_path):
    """tools/cut_field.py's folder trains the example's two configs (a few small steps), and
    tools/compare_reference.py compares them with the extractor: its counts agree with each
    run's own evaluation (ACC), its figures are written."""
    from asr_tf.lab import reference_compare
    from asr_tf.run import config, loop
    from conftest import SMALL_RUN

    sky, _ = _field()
    data = str(tmp_path / "sky")
    reference = field.write_field(sky, data, CUT, SEP)["splits"]["test"]
    num_test = reference["written"]
    runs = {}
    for name in ("air", "asr"):
        config.parse([str(REPO_ROOT / "docs" / "own_data" / f"hubble_{name}.gin")],
                     SMALL_RUN + [f"run_spec.data = '{data}'", "run_spec.counts = (1, 2)",
                                  f"train_eval.num_test = {num_test}",
                                  "train_eval.num_steps = 6"])
        runs[name] = str(tmp_path / name)
        loop.train_eval(runs[name])
    out = str(tmp_path / "compare")
    cmd = [sys.executable, str(REPO_ROOT / "tools" / "compare_reference.py"), "--out", out,
           "--num_figure", "8"] + [f"--run={k}={v}" for k, v in runs.items()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    comparison = json.load(open(os.path.join(out, "comparison.json")))
    assert comparison["reference"]["num_test"] == num_test
    assert comparison["reference"]["count_hist"] == reference["count_hist_written"]
    for name, workdir in runs.items():
        result = comparison["runs"][name]
        assert result["step"] == 6
        final = json.load(open(os.path.join(workdir, "summary.json")))["at_end"]
        for pass_name in ("deterministic", "stochastic"):
            assert result[pass_name]["acc"] == pytest.approx(final[pass_name]["acc"])
            assert result[pass_name]["miou"] == pytest.approx(final[pass_name]["miou"])
            assert sum(map(sum, result[pass_name]["confusion"])) == num_test
        for figure in ("reconstructions", "samples"):
            assert os.path.getsize(os.path.join(out, f"{name}_{figure}.png")) > 0
    assert "| extractor (SEP) | reference |" in done.stdout
