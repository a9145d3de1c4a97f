"""A TensorFlow Datasets data set as a data set from files: ``--data tfds:NAME[/CONFIG]``.

It needs an ``image`` feature (uint8 or uint16 [H, W, C], one channel count) and may have
``objects/bbox`` (TFDS's BBoxFeature: [ymin, xmin, ymax, xmax] normalized by the image's height
and width), the boxes. It uses its own train and test splits; one without a test split has its
train split split by the data seed, as a folder without test/. TFDS prepares (downloads) it as
``tfds.load`` would. Examples are read in the stored order (``shuffle_files=False``): image i of
a split is its i-th example. Each image is put on the canvas as it is read (the canvas rule of
asr_tf/data/images.py) and kept in memory, within a bound in bytes.
"""
from __future__ import annotations

import numpy as np

from asr_tf.data import images
from asr_tf.data.images import DataError

PREFIX = "tfds:"


def is_tfds(data) -> bool:
    return isinstance(data, str) and data.startswith(PREFIX)


def _builder(data):
    import tensorflow_datasets as tfds

    name = data[len(PREFIX):]
    try:
        builder = tfds.builder(name)
    except Exception as err:  # noqa: BLE001 - TFDS raises several types for a bad name
        raise DataError(f"{data}: not a TensorFlow Datasets name[/config] "
                        f"({str(err).splitlines()[0]})") from err
    features = builder.info.features
    if "image" not in features or not isinstance(features["image"], tfds.features.Image):
        raise DataError(f"{data}: no 'image' feature (its features: "
                        f"{', '.join(sorted(features.keys()))}); a data set needs one")
    has_boxes = ("objects" in features and isinstance(features["objects"], tfds.features.Sequence)
                 and "bbox" in features["objects"].feature.keys())
    return builder, has_boxes


def splits(data) -> tuple:
    """('train', 'test') if the data set has a test split (or TFDS does not say), else
    ('train',). Prepares it (download) as tfds.load would."""
    builder, _ = _builder(data)
    try:
        builder.download_and_prepare()
    except Exception as err:  # noqa: BLE001 - network, disk: TFDS's own message says which
        raise DataError(f"{data}: TensorFlow Datasets could not prepare it ({err})") from err
    known = set(builder.info.splits.keys())
    if known and "train" not in known:
        raise DataError(f"{data}: no 'train' split (its splits: {', '.join(sorted(known))})")
    return ("train", "test") if not known or "test" in known else ("train",)


def read_split(data, split: str, canvas_px: int, limit_bytes: int) -> dict:
    """One split on the canvas, in memory.

    Returns dict(images float32 [N, S, S, C], boxes: None or per image float32 [K, 4]
    (x, y, w, h) px of the canvas, names: per image '<data> <split>[i]', channels).
    Raises DataError naming the example: mixed channel counts, a bbox outside [0, 1] or with
    ymax <= ymin or xmax <= xmin, pixels that are not uint8/uint16, more than ``limit_bytes``.
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds

    builder, has_boxes = _builder(data)
    ds = builder.as_dataset(split=split, shuffle_files=False)
    keep = (lambda ex: {"image": ex["image"], "bbox": ex["objects"]["bbox"]}) if has_boxes \
        else (lambda ex: {"image": ex["image"]})
    ds = ds.map(keep, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    canvases, boxes, names = [], [], []
    for i, example in enumerate(tfds.as_numpy(ds)):
        name = f"{data} {split}[{i}]"
        pixels = np.asarray(example["image"])  # [H, W, C]
        try:
            canvas = images.to_canvas(images.from_uint(pixels), canvas_px)  # [S, S, C]
        except ValueError as err:
            raise DataError(f"{name}: image: {err}") from err
        if canvases and canvas.shape != canvases[0].shape:
            raise images.mixed_channels(names[0], canvases[0].shape[-1], name,
                                        canvas.shape[-1])
        if (len(canvases) + 1) * canvas.nbytes > limit_bytes:
            raise DataError(f"{data}: its {split} split takes more than {limit_bytes:,} bytes "
                            f"on the {canvas_px} px canvas, the in-memory bound of a TFDS data "
                            "set; use a smaller canvas or write it to a folder (it then streams)")
        canvases.append(canvas)
        names.append(name)
        if has_boxes:
            height, width = pixels.shape[:2]
            boxes.append(images.boxes_to_canvas(_bbox_px(name, example["bbox"], width, height),
                                                width, height, canvas_px))
    if not canvases:
        raise DataError(f"{data}: its {split} split holds no examples")
    return dict(images=np.stack(canvases), boxes=boxes if has_boxes else None, names=names,
                channels=int(canvases[0].shape[-1]))


def _bbox_px(name, bbox, width, height) -> np.ndarray:
    """TFDS boxes [K, 4] (ymin, xmin, ymax, xmax) normalized -> [K, 4] (x, y, w, h) px."""
    bbox = np.asarray(bbox, np.float64).reshape(-1, 4)
    for k, (ymin, xmin, ymax, xmax) in enumerate(bbox):
        if not (0.0 <= ymin < ymax <= 1.0 and 0.0 <= xmin < xmax <= 1.0):
            raise DataError(f"{name}: objects/bbox[{k}] = {bbox[k].tolist()}: expected "
                            "0 <= ymin < ymax <= 1 and 0 <= xmin < xmax <= 1 (normalized "
                            "[ymin, xmin, ymax, xmax])")
    ymin, xmin, ymax, xmax = bbox.T
    return np.stack([xmin * width, ymin * height, (xmax - xmin) * width,
                     (ymax - ymin) * height], axis=-1)
