"""Boxes of a split folder in COCO form (``annotations.json``), read with every check, written.

The fields used (the rest of COCO, categories included, is ignored):

  images       [{"id": int, "file_name": str, "width": int, "height": int}, ...]
               file_name relative to the split folder; width and height, if given, must be the
               file's
  annotations  [{"image_id": int, "bbox": [x, y, w, h]}, ...] in px of the image: top-left
               corner and size, w > 0 and h > 0, inside the image (0 <= x, x + w <= width,
               likewise y)

Every image file of the split folder is listed in ``images`` (an image without objects has no
annotation: its count is 0), so an unlisted file cannot pass for an empty scene. A scene's
boxes are its annotations in file order.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

from asr_tf.data.images import DataError

ANNOTATIONS_FILE = "annotations.json"


def _fail(path, where, problem):
    raise DataError(f"{path}: {where}: {problem}")


def _number(value):
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def read_boxes(split_dir, sizes: dict) -> dict:
    """The boxes of every image of a split folder from its annotations.json.

    Args:
      split_dir: the split folder (``DIR/train``), holding ``annotations.json``.
      sizes: {file name relative to split_dir: (width, height)} of its image files.
    Returns:
      {file name: float64 [K, 4] (x, y, w, h) px of the image}, one entry per file of ``sizes``.
    Raises:
      DataError naming the file and the field: unreadable JSON, a missing field, an image entry
      naming a file that does not exist (or another size than the file's), a file missing from
      ``images``, an annotation naming an image id that is not listed, a bbox outside its
      image or with w or h <= 0.
    """
    path = os.path.join(split_dir, ANNOTATIONS_FILE)
    try:
        with open(path) as f:
            coco = json.load(f)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not readable as JSON ({err})") from err
    if not isinstance(coco, dict):
        _fail(path, "top level", "expected an object with 'images' and 'annotations'")
    for field in ("images", "annotations"):
        if not isinstance(coco.get(field), list):
            _fail(path, field, "missing, or not a list")
    by_id = {}  # image id -> file name
    for i, entry in enumerate(coco["images"]):
        where = f"images[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str):
            _fail(path, where, "expected an object with a 'file_name' string and an 'id'")
        name, image_id = os.path.normpath(entry["file_name"]), entry.get("id")
        if not isinstance(image_id, int) or isinstance(image_id, bool):
            _fail(path, f"{where}.id", f"expected an int, got {image_id!r}")
        if image_id in by_id:
            _fail(path, f"{where}.id", f"id {image_id} is listed twice")
        if name not in sizes:
            _fail(path, f"{where}.file_name", f"{name!r}: no such image in {split_dir}")
        width, height = sizes[name]
        for key, actual in (("width", width), ("height", height)):
            if key in entry and entry[key] != actual:
                _fail(path, f"{where}.{key}",
                      f"{entry[key]!r}, but {name!r} is {width}x{height} px")
        by_id[image_id] = name
    unlisted = sorted(set(sizes) - set(by_id.values()))
    if unlisted:
        _fail(path, "images", f"{len(unlisted)} image file(s) of {split_dir} are not listed, "
              f"e.g. {unlisted[0]!r} (list every image; one without objects has no annotation)")
    boxes = {name: [] for name in sizes}
    for i, ann in enumerate(coco["annotations"]):
        where = f"annotations[{i}]"
        if not isinstance(ann, dict):
            _fail(path, where, "expected an object with 'image_id' and 'bbox'")
        image_id = ann.get("image_id")
        if not isinstance(image_id, int) or image_id not in by_id:
            _fail(path, f"{where}.image_id", f"{image_id!r} names no image listed in 'images'")
        name = by_id[image_id]
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_number, bbox))):
            _fail(path, f"{where}.bbox", f"expected [x, y, w, h] numbers, got {bbox!r}")
        x, y, w, h = bbox
        width, height = sizes[name]
        if w <= 0 or h <= 0:
            _fail(path, f"{where}.bbox", f"{bbox} of {name!r}: w and h must be > 0")
        if x < 0 or y < 0 or x + w > width or y + h > height:
            _fail(path, f"{where}.bbox", f"{bbox} lies outside {name!r} ({width}x{height} px: "
                  "0 <= x, x + w <= width, 0 <= y, y + h <= height)")
        boxes[name].append(bbox)
    return {name: np.asarray(b, np.float64).reshape(-1, 4) for name, b in boxes.items()}


def write(split_dir, file_names, sizes, boxes) -> str:
    """Writes ``split_dir/annotations.json``: image i is ``file_names[i]`` (id i), of
    ``sizes[i]`` = (width, height), with the boxes ``boxes[i]`` [K_i, 4] (x, y, w, h) px.
    Returns its path."""
    images, annotations = [], []
    for i, (name, (width, height), image_boxes) in enumerate(zip(file_names, sizes, boxes)):
        images.append({"id": i, "file_name": name, "width": int(width), "height": int(height)})
        for box in np.asarray(image_boxes, np.float64).reshape(-1, 4):
            annotations.append({"id": len(annotations), "image_id": i, "category_id": 1,
                                "bbox": [_plain(v) for v in box],
                                "area": _plain(box[2] * box[3]), "iscrowd": 0})
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "object"}]}
    path = os.path.join(split_dir, ANNOTATIONS_FILE)
    with open(path, "w") as f:
        json.dump(coco, f)
    return path


def _plain(value):
    """A JSON number: an int when the value is integral."""
    value = float(value)
    return int(value) if value.is_integer() else value
