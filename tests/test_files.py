"""Data sets from files (asr_tf/data/images.py, coco.py, folder.py, files.py): the formats, the
canvas rule by hand, the folder form of a built-in data set bit for bit, and one clear error per
kind of bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from asr_tf.data import coco, files, images, pipeline, scenes
from asr_tf.data.images import DataError

TINY = dict(images_per_count=10, num_test=4)  # mnist_13: 20 scenes, 16 train, 4 test


def write_image(path, array, mode=None):
    """Writes ``array`` (uint8 [H, W] or [H, W, C], or uint16 [H, W]) as an image file."""
    Image.fromarray(np.asarray(array), mode).save(path)
    return str(path)


def make_folder(root, splits=("train", "test"), num=3, size=(40, 20), channels=1, boxes=None):
    """A data set folder: ``num`` constant images of ``size`` (W, H) per split, image i of value
    10 * (i + 1); with ``boxes`` (a list of [x, y, w, h] per image) an annotations.json."""
    for split in splits:
        os.makedirs(root / split)
        names = []
        for i in range(num):
            shape = (size[1], size[0]) + ((channels,) if channels > 1 else ())
            names.append(f"{i:03d}.png")
            write_image(root / split / names[-1], np.full(shape, 10 * (i + 1), np.uint8))
        if boxes is not None:
            coco.write(str(root / split), names, [size] * num, boxes)
    return str(root)


# --- the canvas rule ----------------------------------------------------------------------------
def test_letterbox_by_hand():
    # 100 x 50 on 50 px: long side 100 -> 50, short 50 -> 25, centred: top = (50 - 25) // 2 = 12
    assert images.letterbox(100, 50, 50) == (50, 25, 0, 12)
    # 30 x 40 on 50 px (enlarged): w' = round(30 * 50 / 40) = round(37.5) = 38 (half up), left 6
    assert images.letterbox(30, 40, 50) == (38, 50, 6, 0)
    assert images.letterbox(50, 50, 50) == (50, 50, 0, 0)
    assert images.letterbox(1000, 1, 50) == (50, 1, 0, 24)  # at least 1 px


def test_boxes_follow_the_image_by_hand():
    # 100 x 50 image on 50 px: factors 0.5, 0.5, offset (0, 12). [10, 20, 30, 10] -> [5, 22, 15, 5]
    np.testing.assert_allclose(images.boxes_to_canvas([[10, 20, 30, 10]], 100, 50, 50),
                               [[5, 22, 15, 5]])
    # 30 x 40 -> 38 x 50 at (6, 0): x factor 38/30, y factor 50/40; [0, 0, 30, 40] fills it
    np.testing.assert_allclose(images.boxes_to_canvas([[0, 0, 30, 40]], 30, 40, 50),
                               [[6, 0, 38, 50]], rtol=1e-6)
    np.testing.assert_allclose(images.boxes_to_canvas([[3, 4, 15, 20]], 30, 40, 50),
                               [[6 + 3 * 38 / 30, 4 * 1.25, 15 * 38 / 30, 25]], rtol=1e-6)
    # back to px of the image (a served model's boxes on the user's image)
    np.testing.assert_allclose(images.boxes_from_canvas([[5, 22, 15, 5]], 100, 50, 50),
                               [[10, 20, 30, 10]], rtol=1e-6)


def test_canvas_places_the_resized_image_and_pads_with_zeros():
    canvas = images.to_canvas(np.full([50, 100, 3], 0.5, np.float32), 50)
    assert canvas.shape == (50, 50, 3) and canvas.dtype == np.float32
    np.testing.assert_allclose(canvas[12:37], 0.5, rtol=1e-6)  # rows 12..36: the image
    assert not canvas[:12].any() and not canvas[37:].any()  # the zero padding
    same = np.random.default_rng(0).random([50, 50, 1]).astype(np.float32)
    np.testing.assert_array_equal(images.to_canvas(same, 50), same)  # S x S: bit for bit


# --- decoding -----------------------------------------------------------------------------------
def test_decoding_8_and_16_bit_gray_rgb_and_alpha(tmp_path):
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    got = images.decode(write_image(tmp_path / "g.png", levels))
    assert got.shape == (16, 16, 1)
    np.testing.assert_array_equal(got[..., 0], levels.astype(np.float32) / np.float32(255))
    deep = (np.arange(256, dtype=np.uint16) * 257 + 1).reshape(16, 16)
    got = images.decode(write_image(tmp_path / "d.png", deep))
    np.testing.assert_array_equal(got[..., 0], deep.astype(np.float32) / np.float32(65535))
    rgba = np.zeros([4, 5, 4], np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 7
    got = images.decode(write_image(tmp_path / "c.png", rgba))
    assert got.shape == (4, 5, 3) and (got[..., 0] == 1).all() and not got[..., 1:].any()
    assert images.read_header(tmp_path / "c.png") == (5, 4, 3)
    write_image(tmp_path / "j.jpg", np.full([8, 6], 200, np.uint8))
    assert images.read_header(tmp_path / "j.jpg") == (6, 8, 1)


def test_png_depth_keeps_8_bit_scenes_exact_and_16_bit_within_a_level(tmp_path):
    exact = np.arange(256, dtype=np.float32).reshape(16, 16) / np.float32(255)
    assert images.png_bits(exact) == 8
    smooth = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16) ** 2
    assert images.png_bits(smooth) == 16
    images.write_png(tmp_path / "s.png", smooth, 16)
    back = images.decode(tmp_path / "s.png")[..., 0]
    assert np.abs(back - smooth).max() <= 0.5 / 65535 + 1e-7


# --- COCO ---------------------------------------------------------------------------------------
def test_written_annotations_read_back_here_and_with_pycocotools(tmp_path):
    from pycocotools.coco import COCO

    boxes = [[[1, 2, 3, 4]], [], [[0, 0, 40, 20], [5.5, 6, 7, 8]]]
    root = make_folder(tmp_path / "d", splits=("train",), boxes=boxes)
    split_dir = os.path.join(root, "train")
    read = coco.read_boxes(split_dir, {f"{i:03d}.png": (40, 20) for i in range(3)})
    for i, expected in enumerate(boxes):
        np.testing.assert_array_equal(read[f"{i:03d}.png"], np.reshape(expected, (-1, 4)))
    api = COCO(os.path.join(split_dir, coco.ANNOTATIONS_FILE))
    assert [a["bbox"] for a in api.loadAnns(api.getAnnIds(imgIds=[2]))] == boxes[2]
    assert api.loadImgs([1])[0]["file_name"] == "001.png"


def _annotate(tmp_path, coco_json):
    root = make_folder(tmp_path / "d", splits=("train",), num=2)
    with open(os.path.join(root, "train", coco.ANNOTATIONS_FILE), "w") as f:
        f.write(coco_json if isinstance(coco_json, str) else json.dumps(coco_json))
    return root


IMAGES = [{"id": 1, "file_name": "000.png"}, {"id": 2, "file_name": "001.png"}]


@pytest.mark.parametrize("coco_json, message", [
    ("{not json", r"annotations.json: not readable as JSON"),
    ({"images": IMAGES}, r"annotations: missing, or not a list"),
    ({"images": IMAGES + [{"id": 3, "file_name": "gone.png"}], "annotations": []},
     r"images\[2\].file_name: 'gone.png': no such image"),
    ({"images": IMAGES[:1], "annotations": []}, r"not listed, e.g. '001.png'"),
    ({"images": [dict(IMAGES[0], width=41), IMAGES[1]], "annotations": []},
     r"images\[0\].width: 41, but '000.png' is 40x20 px"),
    ({"images": IMAGES, "annotations": [{"image_id": 9, "bbox": [0, 0, 1, 1]}]},
     r"annotations\[0\].image_id: 9 names no image listed"),
    ({"images": IMAGES, "annotations": [{"image_id": 1, "bbox": [0, 0, 0, 5]}]},
     r"annotations\[0\].bbox: \[0, 0, 0, 5\] of '000.png': w and h must be > 0"),
    ({"images": IMAGES, "annotations": [{"image_id": 2, "bbox": [30, 0, 11, 5]}]},
     r"annotations\[0\].bbox: \[30, 0, 11, 5\] lies outside '001.png' \(40x20 px"),
    ({"images": IMAGES, "annotations": [{"image_id": 2, "bbox": [0, -1, 4, 5]}]},
     r"lies outside '001.png'"),
])
def test_bad_annotations_name_the_file_and_field(tmp_path, coco_json, message):
    root = _annotate(tmp_path, coco_json)
    with pytest.raises(DataError, match=message) as err:
        files.load_data(root, 50, (1,), (10, 20))
    assert os.path.join(root, "train", coco.ANNOTATIONS_FILE) in str(err.value)


# --- folders ------------------------------------------------------------------------------------
def test_bad_folders_name_the_file_and_problem(tmp_path):
    def fails(root, message):
        with pytest.raises(DataError, match=message):
            files.load_data(str(root), 50, (1,), (10, 20))

    fails(tmp_path / "none", r"none: no such folder")
    for bad, message in (((0, (1,), (1, 2)), "canvas_px must be a positive int"),
                         ((50, (3, 1), (1, 2)), "counts must be sorted, unique ints >= 1"),
                         ((50, (1,), (5, 2)), r"size_range_px must be \(c_min, c_max\)")):
        with pytest.raises(DataError, match=message):
            files.load_data(str(tmp_path / "none"), *bad)
    os.makedirs(tmp_path / "a" / "test")
    fails(tmp_path / "a", r"a: no train/ folder")
    os.makedirs(tmp_path / "a" / "train")
    (tmp_path / "a" / "train" / "notes.txt").write_text("no images here")
    fails(tmp_path / "a", r"a/train: no images")
    (tmp_path / "a" / "train" / "fake.png").write_text("not a png")
    fails(tmp_path / "a", r"a/train/fake.png: not a readable image")
    mixed = make_folder(tmp_path / "m", splits=("train",))
    write_image(os.path.join(mixed, "train", "rgb.png"), np.zeros([4, 4, 3], np.uint8))
    fails(mixed, r"mixed channel counts: .*000.png has 1 channel\(s\), .*rgb.png has 3")
    rgb_test = make_folder(tmp_path / "r", splits=("train",))
    os.makedirs(os.path.join(rgb_test, "test"))
    write_image(os.path.join(rgb_test, "test", "x.png"), np.zeros([4, 4, 3], np.uint8))
    fails(rgb_test, r"mixed channel counts: .*train/000.png has 1 .*test/x.png has 3")
    half = make_folder(tmp_path / "h", boxes=[[[0, 0, 1, 1]]] * 3)
    os.remove(os.path.join(half, "test", coco.ANNOTATIONS_FILE))
    fails(half, r"train/annotations.json exists but .*h/test has none")


def test_a_corrupt_image_fails_when_decoded_naming_the_file(tmp_path):
    root = make_folder(tmp_path / "d", size=(64, 64))
    path = os.path.join(root, "train", "001.png")
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])  # the header survives, the pixels do not
    spec = files.load_data(root, 50, (1,), (10, 20))  # headers only: fine
    with pytest.raises(DataError, match=r"train/001.png: cannot decode the image"):
        spec.load()


def test_folder_without_test_is_split_by_the_data_seed(tmp_path):
    root = make_folder(tmp_path / "d", splits=("train",), num=25, boxes=[[[0, 0, 2, 2]]] * 25)
    spec = files.load_data(root, 20, (1,), (2, 4), data_seed=0)
    other = files.load_data(root, 20, (1,), (2, 4), data_seed=1)
    assert (spec.num_train, spec.num_test) == (23, 2)  # one in ten, 25 // 10
    train, test = spec.split("train").names, spec.split("test").names
    assert not set(train) & set(test) and len(set(train) | set(test)) == 25
    perm = scenes.split_permutation(25, 0)  # the built-in sets' split of 25 scenes
    assert test == tuple(os.path.join(root, "train", f"{i:03d}.png") for i in perm[:2])
    assert other.split("test").names != test
    one = make_folder(tmp_path / "one", splits=("train",), num=1)
    with pytest.raises(DataError, match=r"one: 1 image; without a test split it needs at least 2"):
        files.load_data(one, 20, (1,), (2, 4))


def test_scenes_in_memory_and_streamed_are_the_same(tmp_path):
    root = make_folder(tmp_path / "d", num=6, size=(30, 60), boxes=[[[0, 0, 30, 60]]] * 6)
    streamed = files.load_data(root, 20, (1,), (2, 4))
    assert streamed.load(limit_bytes=0) is False and streamed.split("train").canvases is None
    cached = files.load_data(root, 20, (1,), (2, 4))
    assert cached.load() is True
    read = [next(iter(pipeline.make_dataset(spec, "train", batch_size=4, seed=3)))
            for spec in (streamed, cached)]
    for key in read[0]:
        np.testing.assert_array_equal(read[0][key].numpy(), read[1][key].numpy(), err_msg=key)
    assert read[0]["image"].shape == (4, 20, 20, 1)
    # 30 x 60 -> 10 x 20 at (5, 0); its one box covers it; image i holds 10 (i + 1) / 255
    np.testing.assert_allclose(read[0]["boxes_px"].numpy()[:, 0], [[5, 0, 10, 20]] * 4)
    assert (read[0]["count"].numpy() == 1).all()


def test_a_built_in_data_set_as_a_folder_reads_back_bit_for_bit(tmp_path):
    """make_dataset --format coco: the same scenes, boxes and counts in split-index order (the
    count sets' pixels are k / 255, so 8-bit PNGs hold them exactly)."""
    out = str(tmp_path / "mnist")
    written = scenes.export_folder("mnist_13", out, spec_overrides=TINY)
    assert written == {"train": 16, "test": 4, "bits": 8}
    spec = scenes.get_spec("mnist_13", **TINY)
    folder = files.load_data(out, 50, (1, 3), (17, 23))
    assert (folder.num_train, folder.num_test, folder.max_boxes) == (16, 4, 3)
    for split in ("train", "test"):
        n = spec.num_in_split(split)
        want = scenes.synthesize_batch(spec, np.arange(n), split)
        got = folder.split(split).batch(np.arange(n))
        np.testing.assert_array_equal(got["image"][..., 0], want["image"])
        np.testing.assert_array_equal(got["count"], want["count"])
        np.testing.assert_array_equal(got["box_mask"], want["box_mask"][:, :3])
        np.testing.assert_array_equal(got["boxes_px"], want["boxes_px"][:, :3])
    with pytest.raises(ValueError, match=r"exists; give a new folder"):
        scenes.export_folder("mnist_13", out, spec_overrides=TINY)
    with pytest.raises(ValueError, match=r"train scenes: 17; the train split of 'mnist_13' has 16"):
        scenes.export_folder("mnist_13", str(tmp_path / "x"), num=17, spec_overrides=TINY)
    assert sorted(os.listdir(tmp_path)) == ["mnist"]


# --- the run ------------------------------------------------------------------------------------
def test_the_run_takes_colour_and_refuses_too_many_boxes_and_other_data(tmp_path):
    from asr_tf import models
    from asr_tf.run import config, workdir as workdir_lib

    small = ["build_model.lstm_units = 8"]
    rgb = make_folder(tmp_path / "rgb", channels=3)
    config.parse(["air_asr_13"], small + [f"run_spec.data = '{rgb}'"])
    spec = workdir_lib.run_spec()
    assert (spec.channels, spec.canvas_px, spec.counts, spec.size_range_px) == \
        (3, 50, (1, 3), (17, 23))  # the config's data set lends canvas, counts and size range
    assert models.model_for(spec).channels == 3  # the model reads the data set's channels
    crowded = make_folder(tmp_path / "crowd", boxes=[[[0, 0, 1, 1]] * 3] * 3)
    config.parse(["air_asr_13"], small + [f"run_spec.data = '{crowded}'",
                                          "build_model.max_glimpses = 2", "run_spec.counts = (1,)",
                                          "run_spec.canvas_px = 20"])
    spec = workdir_lib.run_spec()
    assert (spec.canvas_px, spec.counts) == (20, (1,))
    with pytest.raises(DataError, match=r"crowd/train/000.png: 3 boxes, more than "
                                        r"build_model.max_glimpses = 2"):
        models.model_for(spec)
    # another folder on resume: refused before anything is written
    workdir = str(tmp_path / "w")
    os.makedirs(workdir)
    workdir_lib.write_record(workdir, 0, 0, data=crowded, argv=["train.py"])
    before = open(os.path.join(workdir, "invocations.jsonl")).read()
    with pytest.raises(workdir_lib.RecordMismatchError,
                       match=r"data '.*crowd' -> '.*rgb'"):
        workdir_lib.check_record(workdir, 0, 0, rgb)
    with pytest.raises(workdir_lib.RecordMismatchError, match=r"data '.*crowd' -> None"):
        workdir_lib.write_record(workdir, 0, 0)
    assert open(os.path.join(workdir, "invocations.jsonl")).read() == before


def test_train_tool_refuses_a_corrupt_image_before_writing_anything(tmp_path, repo_root):
    root = make_folder(tmp_path / "d", size=(64, 64))
    path = os.path.join(root, "test", "002.png")
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])
    workdir = tmp_path / "w"
    out = subprocess.run([sys.executable, str(repo_root / "tools" / "train.py"), "--config",
                          "air_asr_13", "--data", root, "--workdir", str(workdir)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert f"{path}: cannot decode the image" in out.stderr
    assert sorted(os.listdir(workdir)) == [".lock"]  # no record, no log, no checkpoint
