"""Training on data sets from files (docs/OWN_DATA.md): a folder trains exactly as the same
scenes on the fly, the tools need only the workdir, a data set without boxes says so instead of
scoring, another folder on resume is refused with nothing touched, and TFDS (mocked offline)."""
import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from asr_tf.data import DataError, coco, files, scenes
from asr_tf.run import config, loop, trained, workdir as workdir_lib
from conftest import SMALL_RUN

TINY = {"images_per_count": 20, "num_test": 16}  # mnist_13: 24 training, 16 test scenes
ON_THE_FLY = [f"run_spec.dataset_overrides = {TINY}"]


def _train(workdir, bindings, steps=3):
    config.parse(["air_asr_13"], SMALL_RUN + bindings)
    return loop.train_eval(str(workdir), max_steps=steps)


def _metrics(workdir):
    return [{k: v for k, v in r.items() if k != "wall_time"}
            for r in workdir_lib.read_metrics(str(workdir))]


def _digest(folder):
    return {name: hashlib.sha256(open(os.path.join(root, name), "rb").read()).hexdigest()
            for root, _, names in os.walk(folder) for name in names}


@pytest.mark.slow
def test_a_folder_trains_as_its_scenes_on_the_fly_and_the_tools_need_only_the_workdir(tmp_path):
    folder = str(tmp_path / "mnist")
    scenes.export_folder("mnist_13", folder, spec_overrides=TINY)
    _train(tmp_path / "fly", ON_THE_FLY, steps=6)
    summary = _train(tmp_path / "files", [f"run_spec.data = '{folder}'"], steps=6)
    assert _metrics(tmp_path / "files") == _metrics(tmp_path / "fly")  # every evaluation
    assert [r["step"] for r in _metrics(tmp_path / "files")] == [3, 6]
    assert "box_metrics" not in summary and 0.0 <= summary["final"]["acc"] <= 1.0
    # evaluate.py's path: the record alone rebuilds the data set and the logged evaluation
    again = trained.evaluate_workdir(str(tmp_path / "files"))
    logged = _metrics(tmp_path / "files")[-1]
    for key in ("acc", "se", "nelbo", "miou", "count_frac_3obj_1"):
        assert again[key] == pytest.approx(logged[key], rel=1e-6), key
    # another folder on resume: refused, nothing in the workdir touched
    before = _digest(tmp_path / "files")
    other = str(tmp_path / "other")
    scenes.export_folder("mnist_13", other, spec_overrides=TINY)
    with pytest.raises(workdir_lib.RecordMismatchError, match=r"data '.*mnist' -> '.*other'"):
        _train(tmp_path / "files", [f"run_spec.data = '{other}'"], steps=9)
    assert _digest(tmp_path / "files") == before


@pytest.mark.slow
def test_without_boxes_the_summary_says_box_metrics_are_not_available(tmp_path):
    folder = str(tmp_path / "plain")
    scenes.export_folder("mnist_13", folder, spec_overrides=TINY)
    for split in ("train", "test"):
        os.remove(os.path.join(folder, split, coco.ANNOTATIONS_FILE))
    workdir = tmp_path / "w"
    summary = _train(workdir, [f"run_spec.data = '{folder}'"])
    final = summary["final"]
    assert not {"acc", "miou", "se_1obj"} & set(final)  # absent, not 0 or NaN
    assert np.isfinite(final["nelbo"]) and np.isfinite(final["se"])
    histogram = [final[f"count_frac_any_{k}"] for k in range(7)]  # inferred counts 0..T
    assert sum(histogram) == pytest.approx(1.0)
    assert summary["box_metrics"].startswith(f"not available: {folder} has no boxes")
    assert json.load(open(workdir / "summary.json"))["box_metrics"] == summary["box_metrics"]
    assert "box metrics not available" in loop.summary_line(str(workdir), summary)
    assert trained.evaluate_workdir(str(workdir))["box_metrics"] == summary["box_metrics"]


ORANGE = (255, 128, 0)  # the squares' colour: in no box outline (viz.STEP_COLORS), not grey


def _colour_folder(root, num_train=24, num_test=16, side=12):
    """An RGB folder: 50 x 50 black images holding 1 or 3 orange side x side squares (the
    counts of air_asr_13), with their boxes."""
    rng = np.random.default_rng(0)
    for split, num in (("train", num_train), ("test", num_test)):
        os.makedirs(os.path.join(root, split))
        names, boxes = [], []
        for i in range(num):
            image, placed = np.zeros([50, 50, 3], np.uint8), []
            while len(placed) < (1 if i % 2 else 3):
                x, y = (int(v) for v in rng.integers(0, 50 - side, 2))
                if not image[y:y + side, x:x + side].any():
                    image[y:y + side, x:x + side] = ORANGE
                    placed.append([x, y, side, side])
            names.append(f"{i:03d}.png")
            Image.fromarray(image).save(os.path.join(root, split, names[-1]))
            boxes.append(placed)
        coco.write(os.path.join(root, split), names, [(50, 50)] * num, boxes)
    return root


def _has_orange(png_array):
    return bool(np.all(png_array[..., :3] == ORANGE, -1).any())


@pytest.mark.slow
def test_a_colour_folder_trains_evaluates_draws_and_serves(tmp_path):
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from asr_tf import export

    folder = _colour_folder(str(tmp_path / "rgb"))
    workdir = tmp_path / "w"
    summary = _train(workdir, [f"run_spec.data = '{folder}'"])
    assert np.isfinite(summary["final"]["nelbo"]) and 0.0 <= summary["final"]["acc"] <= 1.0
    run = trained.load_trained(str(workdir))
    assert run.model.channels == 3 and run.spec.channels == 3
    # TensorBoard's reconstructions: the test scenes in their colour
    acc = EventAccumulator(str(workdir / "eval"), size_guidance={"tensors": 0})
    acc.Reload()
    png = tf.make_ndarray(acc.Tensors("reconstructions")[-1].tensor_proto)[2]
    assert _has_orange(tf.io.decode_png(png).numpy())
    # generate.py's figures: reconstructions in colour, samples as RGB
    figure = trained.write_figure(str(workdir), str(tmp_path / "recon.png"), reconstruct=True)
    assert _has_orange(np.asarray(Image.open(figure)))
    samples = np.asarray(Image.open(trained.write_figure(str(workdir), str(tmp_path / "gen.png"))))
    assert samples.ndim == 3 and samples.shape[-1] == 3
    # export.py: the signatures take and return [N, 50, 50, 3]
    path = export.export_saved_model(run.model, str(tmp_path / "model"), max_generate=8)
    loaded = tf.saved_model.load(path)
    images = run.evaluator().test["image"][:2]  # [2, 50, 50, 3]
    out = loaded.signatures["serving_default"](images=images)
    assert out["reconstruction"].shape == (2, 50, 50, 3)
    gen = loaded.signatures["generate"](num_scenes=tf.constant(2), seed=tf.constant(0, tf.int64))
    assert gen["images"].shape == (2, 50, 50, 3)


def _voc_examples(num_train=5, num_test=3, bbox=((0.1, 0.2, 0.5, 0.6),)):
    """An as_dataset_fn for tfds.testing.mock_data: voc/2007-shaped examples, 40 x 60 RGB,
    image i of value 10 i, the given normalized boxes."""
    import tensorflow as tf

    def as_dataset(self, split, **unused):
        num = num_train if "train" in str(split) else num_test
        bboxes = np.asarray(bbox, np.float32).reshape(-1, 4)
        zeros = np.zeros([len(bboxes)], np.int64)

        def examples():
            for i in range(num):
                yield {"image": np.full([40, 60, 3], 10 * i, np.uint8),
                       "image/filename": f"{i}.jpg", "labels": zeros,
                       "labels_no_difficult": zeros,
                       "objects": {"bbox": bboxes, "is_difficult": zeros.astype(bool),
                                   "is_truncated": zeros.astype(bool), "label": zeros,
                                   "pose": zeros}}

        return tf.data.Dataset.from_generator(
            examples, output_signature=self.info.features.get_tensor_spec())

    return as_dataset


@pytest.mark.slow
def test_tfds_data_sets_offline_with_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(as_dataset_fn=_voc_examples()):
        spec = files.load_data("tfds:voc/2007", 50, (1,), (10, 20))
        assert (spec.channels, spec.has_boxes, spec.num_train, spec.num_test) == (3, True, 5, 3)
        batch = spec.split("train").batch([2])
        # 60 x 40 -> 50 x 33 at (0, 8); [ymin .1, xmin .2, ymax .5, xmax .6] = 12, 4, 24, 16 px
        # of the image -> x 12 * 50/60 = 10, y 8 + 4 * 33/40 = 11.3, w 20, h 16 * 33/40 = 13.2
        np.testing.assert_allclose(batch["boxes_px"][0], [[10, 11.3, 20, 13.2]], rtol=1e-6)
        np.testing.assert_allclose(batch["image"][0, 8:41], 20 / 255, rtol=1e-6)
        assert not batch["image"][0, :8].any() and not batch["image"][0, 41:].any()
    with tfds.testing.mock_data(as_dataset_fn=_voc_examples(bbox=((0.5, 0.2, 0.4, 0.6),))):
        with pytest.raises(DataError, match=r"tfds:voc/2007 train\[0\]: objects/bbox\[0\] = "
                                            r"\[0.5, 0.2.*expected 0 <= ymin < ymax <= 1"):
            files.load_data("tfds:voc/2007", 50, (1,), (10, 20))
    with tfds.testing.mock_data(num_examples=20):
        with pytest.raises(DataError, match=r"tfds:imdb_reviews: no 'image' feature \(its "
                                            r"features: label, text\)"):
            files.load_data("tfds:imdb_reviews", 50, (1,), (10, 20))
        with pytest.raises(DataError, match=r"tfds:no_such_set_xyz: not a TensorFlow Datasets"):
            files.load_data("tfds:no_such_set_xyz", 50, (1,), (10, 20))
        # a grayscale set without boxes trains, and says its box metrics are not available
        summary = _train(tmp_path / "w", ["run_spec.data = 'tfds:mnist'",
                                          "train_eval.num_test = 20"])
        assert "acc" not in summary["final"] and summary["box_metrics"].startswith(
            "not available: tfds:mnist has no boxes")
        assert workdir_lib.invocations(str(tmp_path / "w"))[0]["data"] == "tfds:mnist"
