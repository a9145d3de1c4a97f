"""Data sets from files: a folder of images (asr_tf/data/folder.py) or a TensorFlow Datasets
data set (asr_tf/data/tfds_source.py), on the run's canvas, as the pipeline reads them.

``load_data(data, canvas_px, counts, size_range_px, data_seed)`` -> `FileDataSpec`: ``data``
is a folder or ``tfds:NAME[/CONFIG]``; the canvas side, the allowed counts and the size range
(px of the canvas) are the run's (its model and constraints), not the files'. A scene:

  image     [S, S, C] float32 in [0, 1]: the image under the canvas rule (asr_tf/data/images.py)
  boxes_px  [M, 4] float32 (x, y, w, h) px of the canvas, the image's boxes under the same rule,
            zero padded to M = the most boxes of any image of the data set
  box_mask  [M] bool; count: its number of boxes, -1 when the data set has no boxes

Splits: the data set's own train and test; with train alone (a folder without test/, a TFDS
data set without a test split), one image in TEST_FRACTION (at least one) is a test image,
chosen by the data seed's permutation (the same as the built-in sets', scenes.split_permutation):
its first num_test images are the test split, the rest, in that order, the training split.

Memory: a data set whose canvases (N * S * S * C * 4 bytes, both splits) fit in
CACHE_LIMIT_BYTES is decoded once, by ``load``, and read from memory; a larger folder is decoded
once by ``load`` to check every file, then streams: the files of each batch are decoded again
(the pipeline maps batches in parallel and prefetches). A TFDS data set is read into memory
when it is loaded, within the same bound.
"""
from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from asr_tf.data import folder, images, scenes, tfds_source
from asr_tf.data.images import DataError

CACHE_LIMIT_BYTES = 2**31  # 2 GiB of canvases: ~214,000 scenes of 50 x 50 x 1
TEST_FRACTION = 10


class SplitData:
    """One split of a data set from files: its boxes on the canvas, its images from the files
    (decoded on demand) or from memory."""

    def __init__(self, names, canvas_px, channels, count, boxes_px, box_mask, files=None,
                 canvases=None):
        self.names = tuple(names)  # [N] the file or example of each image, for messages
        self.canvas_px, self.channels = canvas_px, channels
        self.count = count  # [N] int32, -1 without boxes
        self.boxes_px, self.box_mask = boxes_px, box_mask  # [N, M, 4], [N, M]
        self.files = files  # folder.SplitFiles, or None
        self.canvases = canvases  # [N, S, S, C] float32 once in memory, else None

    def __len__(self):
        return len(self.names)

    @property
    def nbytes(self) -> int:
        """Bytes of this split's canvases in memory."""
        return len(self) * self.canvas_px ** 2 * self.channels * 4

    def decode(self, i: int) -> np.ndarray:
        """Image i on the canvas, [S, S, C] float32."""
        if self.canvases is not None:
            return self.canvases[i]
        return images.to_canvas(images.decode(self.files.path(i)), self.canvas_px)

    def batch(self, indices) -> dict:
        """The scenes ``indices`` [B]: dict(image [B, S, S, C], count [B], boxes_px [B, M, 4],
        box_mask [B, M]) as numpy arrays."""
        indices = np.asarray(indices, np.int64).reshape(-1)
        if self.canvases is not None:
            image = self.canvases[indices]
        else:
            image = np.stack([self.decode(int(i)) for i in indices]) if indices.size else \
                np.zeros([0, self.canvas_px, self.canvas_px, self.channels], np.float32)
        return dict(image=image, count=self.count[indices], boxes_px=self.boxes_px[indices],
                    box_mask=self.box_mask[indices])

    def load(self, keep: bool) -> None:
        """Decodes every image (a corrupt file raises DataError naming it), keeping them in
        memory if ``keep``."""
        if self.canvases is not None:
            return
        with ThreadPoolExecutor(folder.workers()) as pool:
            decoded = pool.map(self.decode, range(len(self)))
            if keep:
                self.canvases = np.stack(list(decoded))
            else:
                for _ in decoded:  # checked, not kept
                    pass


@dataclasses.dataclass(frozen=True)
class FileDataSpec:
    """A data set from files on a canvas: what the run and the pipeline read of it (the fields
    a built-in scenes.DatasetSpec has too, and its splits).

    Attributes:
      data: the folder (an absolute path) or 'tfds:NAME[/CONFIG]'.
      canvas_px, counts, size_range_px, data_seed: the run's (see load_data).
      channels: C, 1 (grayscale) or 3 (RGB).
      has_boxes: whether the images come with boxes (annotations.json, objects/bbox).
      max_boxes: M, box slots per scene (the most boxes of any image; 1 without boxes).
      num_train, num_test: images per split.
    """

    data: str
    canvas_px: int
    counts: tuple
    size_range_px: tuple
    data_seed: int
    channels: int
    has_boxes: bool
    max_boxes: int
    num_train: int
    num_test: int
    splits: dict = dataclasses.field(compare=False, repr=False, default_factory=dict)

    @property
    def name(self) -> str:
        return self.data if tfds_source.is_tfds(self.data) else os.path.basename(self.data)

    def num_in_split(self, split: str) -> int:
        if split not in ("train", "test"):
            raise ValueError(f"{self.data}: split must be 'train' or 'test', got {split!r} "
                             "(fresh scenes are for synthetic data sets)")
        return self.num_train if split == "train" else self.num_test

    def split(self, split: str) -> SplitData:
        self.num_in_split(split)
        return self.splits[split]

    def load(self, limit_bytes: int = CACHE_LIMIT_BYTES) -> bool:
        """Decodes every image of both splits once (errors name the file), keeping them in
        memory if they fit ``limit_bytes``. Returns whether they are in memory."""
        keep = sum(s.nbytes for s in self.splits.values()) <= limit_bytes
        for split in self.splits.values():
            split.load(keep)
        return keep

    def most_boxes(self) -> tuple:
        """(count, image name) of the image with the most boxes (count -1 without boxes)."""
        return max(((int(s.count.max()), s.names[int(s.count.argmax())])
                    for s in self.splits.values()), key=lambda pair: pair[0])


def resolve(data: str) -> str:
    """The identity of ``data``: a folder's absolute path, or the 'tfds:...' name."""
    return data if tfds_source.is_tfds(data) else os.path.abspath(os.path.expanduser(data))


def load_data(data, canvas_px, counts, size_range_px, data_seed=0,
              limit_bytes=CACHE_LIMIT_BYTES) -> FileDataSpec:
    """A data set from files on an S x S canvas (its images are decoded later, by
    FileDataSpec.load or as the pipeline reads them; a TFDS data set is read here).

    Args:
      data: a folder (DIR/train, DIR/test; asr_tf/data/folder.py) or 'tfds:NAME[/CONFIG]'.
      canvas_px: S. counts: the allowed object counts of the run's model and constraints.
      size_range_px: (c_min, c_max) of the size constraints, px of the canvas.
      data_seed: splits a data set without a test split.
    Raises DataError naming the file, example or field (asr_tf/data/folder.py, coco.py,
    tfds_source.py), or a bad canvas_px, counts or size range.
    """
    if isinstance(canvas_px, bool) or not isinstance(canvas_px, (int, np.integer)) \
            or canvas_px <= 0:
        raise DataError(f"canvas_px must be a positive int, got {canvas_px!r}")
    counts = tuple(counts)
    if not counts or list(counts) != sorted(set(counts)) or not all(
            isinstance(c, (int, np.integer)) and c >= 1 for c in counts):
        raise DataError(f"counts must be sorted, unique ints >= 1, got {counts!r}")
    try:
        c_min, c_max = (float(v) for v in size_range_px)
    except (TypeError, ValueError):
        c_min = c_max = float("nan")
    if not 0 < c_min <= c_max:
        raise DataError(f"size_range_px must be (c_min, c_max) px with 0 < c_min <= c_max, "
                         f"got {size_range_px!r}")
    data = resolve(data)
    raw = _tfds_splits(data, canvas_px, limit_bytes) if tfds_source.is_tfds(data) else \
        _folder_splits(data, canvas_px)
    if "test" not in raw:
        raw = _split_by_seed(data, raw["train"], data_seed)
    has_boxes = raw["train"]["boxes"] is not None
    max_boxes = max([1] + [len(b) for r in raw.values() for b in (r["boxes"] or [])])
    channels = raw["train"]["channels"]
    splits = {name: _split_data(r, canvas_px, channels, max_boxes) for name, r in raw.items()}
    return FileDataSpec(data, int(canvas_px), tuple(int(c) for c in counts),
                        tuple(size_range_px), int(data_seed), channels, has_boxes, max_boxes,
                        len(splits["train"]), len(splits["test"]), splits)


# ------------------------------------------------------------------ the splits
# A raw split: dict(names, channels, boxes: None or per image [K, 4] px of the canvas,
# files: folder.SplitFiles or None, images: [N, S, S, C] or None).
def _folder_splits(root, canvas_px) -> dict:
    raw = {}
    for name, files in folder.scan(root).items():
        boxes = None if files.boxes is None else [
            images.boxes_to_canvas(b, w, h, canvas_px) for b, (w, h) in zip(files.boxes,
                                                                           files.sizes)]
        raw[name] = dict(names=[files.path(i) for i in range(len(files.names))],
                         channels=files.channels, boxes=boxes, files=files, images=None)
    return raw


def _tfds_splits(data, canvas_px, limit_bytes) -> dict:
    raw = {}
    for name in tfds_source.splits(data):
        split = tfds_source.read_split(data, name, canvas_px, limit_bytes)
        raw[name] = dict(split, files=None)
    if len(raw) > 1 and raw["test"]["channels"] != raw["train"]["channels"]:
        raise images.mixed_channels(raw["train"]["names"][0], raw["train"]["channels"],
                                    raw["test"]["names"][0], raw["test"]["channels"])
    return raw


def _split_by_seed(data, pool, data_seed) -> dict:
    """{'train', 'test'} of a data set that has only ``pool``: the data seed's permutation."""
    num = len(pool["names"])
    if num < 2:
        raise DataError(f"{data}: {num} image; without a test split it needs at least 2 (one "
                        "in ten, at least one, becomes the test split)")
    num_test = max(1, num // TEST_FRACTION)
    perm = scenes.split_permutation(num, data_seed)

    def subset(indices):
        return dict(pool, names=[pool["names"][i] for i in indices],
                    boxes=None if pool["boxes"] is None else [pool["boxes"][i] for i in indices],
                    files=None if pool["files"] is None else pool["files"].subset(indices),
                    images=None if pool["images"] is None else pool["images"][indices])

    return {"train": subset(perm[num_test:]), "test": subset(perm[:num_test])}


def _split_data(raw, canvas_px, channels, max_boxes) -> SplitData:
    num = len(raw["names"])
    boxes_px = np.zeros([num, max_boxes, 4], np.float32)
    box_mask = np.zeros([num, max_boxes], bool)
    count = np.full([num], -1, np.int32)
    if raw["boxes"] is not None:
        for i, b in enumerate(raw["boxes"]):
            boxes_px[i, :len(b)] = b
            box_mask[i, :len(b)] = True
            count[i] = len(b)
    return SplitData(raw["names"], canvas_px, channels, count, boxes_px, box_mask,
                     files=raw["files"], canvases=raw["images"])
