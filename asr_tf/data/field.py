"""A large sky image (a field) cut into small images, a data set folder with reference boxes
(docs/OWN_DATA.md, "A real example"; ``tools/cut_field.py``).

The split is by region of the field, so that no sky is in both splits: the test region is the
rightmost round(test_frac x W) columns, the training region the columns left of it less a guard
band of ``gap_px`` columns (a source straddling the border lands in neither split whole). Crops
are ``crop_px`` squares wholly inside their region, corners every ``stride_px`` (training) or
``test_stride_px`` (test) px from the region's top-left, overlapping when the stride is below
the crop.

Each crop of the background-subtracted field (asr_tf/data/extractor.py) is clipped to [0, 1]
and written as an 8-bit PNG; the source extractor runs on the same crop of the (unclipped)
detection image, and its boxes are the crop's annotations.json. Crops whose extractor count is
outside [min_count, max_count] are not written (empty sky; scenes more crowded than the model's
glimpse steps allow); ``field.json`` beside train/ and test/ records the parameters, the count
histograms of all crops and of the written ones, the source sizes, and each written crop's
corner in the field.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from asr_tf.data import coco, extractor, images
from asr_tf.data.images import DataError

FIELD_FILE = "field.json"
HUBBLE = "hubble"  # scikit-image's Hubble eXtreme Deep Field, RGB 872 x 1000


@dataclasses.dataclass(frozen=True)
class CutParams:
    """How a field becomes crops (px of the field).

    Attributes:
      crop_px: side of each crop.
      stride_px, test_stride_px: distance between neighbouring crop corners in the training and
        the test region.
      test_frac: fraction of the field's columns, at its right, that is the test region.
      gap_px: guard columns between the regions, in neither.
      min_count, max_count: the extractor counts of the crops that are written.
    """

    crop_px: int = 25
    stride_px: int = 6
    test_stride_px: int = 12
    test_frac: float = 0.2
    gap_px: int = 16
    min_count: int = 1
    max_count: int = 3


def load_field(source: str) -> np.ndarray:
    """A field as float32 [H, W, C] in [0, 1]: ``'hubble'`` (scikit-image's bundled Hubble Deep
    Field, offline) or an image file (PNG or JPEG)."""
    if source == HUBBLE:
        from skimage import data  # noqa: PLC0415 (needed for the example only)

        return images.from_uint(data.hubble_deep_field())
    return images.decode(source)


def regions(width: int, test_frac: float, gap_px: int) -> dict:
    """{'train': (x0, x1), 'test': (x0, x1)}: the columns [x0, x1) of each region."""
    test_w = int(round(width * test_frac))
    train_end = width - test_w - gap_px
    if test_w < 1 or train_end < 1:
        raise ValueError(f"a field {width} px wide has no room for a test region of "
                         f"{test_frac} of its columns and a gap of {gap_px} px")
    return {"train": (0, train_end), "test": (width - test_w, width)}


def corners(height: int, columns: tuple, crop_px: int, stride_px: int) -> np.ndarray:
    """int64 [N, 2] (top, left) of the crops wholly inside rows [0, height) and ``columns``
    [x0, x1), row by row, every ``stride_px``."""
    x0, x1 = columns
    tops = np.arange(0, height - crop_px + 1, stride_px)
    lefts = np.arange(x0, x1 - crop_px + 1, stride_px)
    if not (tops.size and lefts.size):
        raise ValueError(f"no {crop_px} px crop fits rows [0, {height}) x columns "
                         f"[{x0}, {x1})")
    return np.stack(np.meshgrid(tops, lefts, indexing="ij"), -1).reshape(-1, 2)


def write_field(field: np.ndarray, out: str, cut: CutParams = CutParams(),
                params: extractor.ExtractorParams = extractor.ExtractorParams(),
                source: str = "") -> dict:
    """Writes the folder ``out`` (train/, test/, each crops as 000000.png, ... with
    annotations.json; field.json) from ``field`` [H, W, C] in [0, 1]; returns field.json's
    content. Refuses an ``out`` that exists and is not empty (nothing is overwritten)."""
    if os.path.isdir(out) and os.listdir(out):
        raise DataError(f"{out}: exists and is not empty; the field is written to a new folder")
    if not 1 <= cut.min_count <= cut.max_count:
        raise ValueError(f"counts must satisfy 1 <= min_count <= max_count, got "
                         f"{cut.min_count}, {cut.max_count}")
    subtracted, detection, rms = extractor.subtract_background(field)
    canvas = np.clip(subtracted, 0.0, 1.0)  # [H, W, C]
    height, width = detection.shape
    columns = regions(width, cut.test_frac, cut.gap_px)
    strides = {"train": cut.stride_px, "test": cut.test_stride_px}
    record = {"source": source, "field_px": [int(width), int(height)], "rms": rms,
              "cut": dataclasses.asdict(cut), "extractor": dataclasses.asdict(params),
              "background_box_px": extractor.BACKGROUND_BOX_PX, "splits": {}}
    s = cut.crop_px
    for split, cols in columns.items():
        folder = os.path.join(out, split)
        os.makedirs(folder)
        kept, names, boxes, all_counts = [], [], [], []
        for top, left in corners(height, cols, s, strides[split]):
            crop_boxes = extractor.extract_boxes(detection[top:top + s, left:left + s], rms,
                                                 params)
            all_counts.append(len(crop_boxes))
            if not cut.min_count <= len(crop_boxes) <= cut.max_count:
                continue
            names.append(f"{len(names):06d}.png")
            images.write_png(os.path.join(folder, names[-1]), canvas[top:top + s, left:left + s])
            kept.append([int(top), int(left)])
            boxes.append(crop_boxes)
        coco.write(folder, names, [(s, s)] * len(names), boxes)
        record["splits"][split] = split_record(cols, all_counts, boxes, kept)
    with open(os.path.join(out, FIELD_FILE), "w") as f:
        json.dump(record, f, indent=1)
    return record


def split_record(columns, all_counts, boxes, kept) -> dict:
    """field.json's entry of a split: its columns, the count histograms of every crop and of
    the written ones, the written sources' sides (percentiles 5, 25, 50, 75, 95 of max(w, h),
    px of the field) and the written crops' corners [top, left]."""
    sides = np.concatenate([np.maximum(b[:, 2], b[:, 3]) for b in boxes]) if boxes else \
        np.zeros([0])
    return {"columns": [int(c) for c in columns], "crops": len(all_counts),
            "written": len(kept),
            "count_hist_all": np.bincount(np.asarray(all_counts, np.int64)).tolist(),
            "count_hist_written": np.bincount(np.asarray([len(b) for b in boxes], np.int64)).tolist(),
            "side_px_percentiles": (np.percentile(sides, [5, 25, 50, 75, 95]).tolist()
                                    if sides.size else []),
            "corners": kept}
