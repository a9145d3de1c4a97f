"""A folder of images as a data set: its layout, its image files, their headers and boxes.

  DIR/train/   PNG or JPEG images (names ending .png, .jpg or .jpeg, any case), any size,
               and optionally annotations.json (the boxes, COCO form: asr_tf/data/coco.py)
  DIR/test/    the same; without it, DIR/train is split by the data seed (asr_tf/data/files.py)

A split's images are the image files directly in its folder, in file-name order: image i of a
split is its i-th name (the split index the pipeline reads). Other files are ignored. Every
image of the data set has the same number of channels (1: grayscale, 3: RGB). Either both
splits have annotations.json or neither has.

Scanning reads the headers only (size, mode); the pixels are decoded later (asr_tf/data/files.py).
"""
from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from asr_tf.data import coco, images
from asr_tf.data.images import DataError

SPLIT_FOLDERS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class SplitFiles:
    """The image files of one split folder.

    Attributes:
      folder: the split folder.
      names: file names relative to it, sorted; image i is names[i].
      sizes: int64 [N, 2], (width, height) px of each image.
      channels: 1 or 3, the same for every image.
      boxes: None without annotations.json, else per image float64 [K_i, 4] (x, y, w, h) px
        of the image.
    """

    folder: str
    names: tuple
    sizes: np.ndarray
    channels: int
    boxes: tuple | None

    def path(self, i: int) -> str:
        return os.path.join(self.folder, self.names[i])

    def subset(self, indices) -> "SplitFiles":
        """The images ``indices`` (in that order) of this split."""
        indices = [int(i) for i in indices]
        return dataclasses.replace(
            self, names=tuple(self.names[i] for i in indices), sizes=self.sizes[indices],
            boxes=None if self.boxes is None else tuple(self.boxes[i] for i in indices))


def workers() -> int:
    """Threads that read image files (PIL releases the GIL while it decodes)."""
    return max(2, min(8, 2 * (os.cpu_count() or 1)))


def scan(root: str) -> dict:
    """{'train': SplitFiles, 'test': SplitFiles (if DIR/test exists)} of the folder ``root``.

    Raises DataError naming the file or folder: no such folder, no train/, a split without
    images, an unreadable image or one of an unsupported mode, mixed channel counts,
    annotations.json in one split only, any problem of an annotations.json (coco.read_boxes).
    """
    if not os.path.isdir(root):
        raise DataError(f"{root}: no such folder")
    present = [s for s in SPLIT_FOLDERS if os.path.isdir(os.path.join(root, s))]
    if "train" not in present:
        raise DataError(f"{root}: no train/ folder; a data set folder holds train/ and "
                        "optionally test/, each with PNG or JPEG images (docs/OWN_DATA.md)")
    annotated = {s: os.path.isfile(os.path.join(root, s, coco.ANNOTATIONS_FILE)) for s in present}
    if len(set(annotated.values())) > 1:
        with_file = next(s for s, a in annotated.items() if a)
        without = next(s for s, a in annotated.items() if not a)
        raise DataError(f"{os.path.join(root, with_file, coco.ANNOTATIONS_FILE)} exists but "
                        f"{os.path.join(root, without)} has none: annotate both splits or "
                        "neither")
    splits = {s: _scan_split(os.path.join(root, s), annotated[s]) for s in present}
    first = splits["train"]
    for split in splits.values():
        if split.channels != first.channels:
            raise images.mixed_channels(first.path(0), first.channels, split.path(0),
                                        split.channels)
    return splits


def _scan_split(folder: str, annotated: bool) -> SplitFiles:
    names = sorted(n for n in os.listdir(folder)
                   if n.lower().endswith(images.IMAGE_SUFFIXES)
                   and os.path.isfile(os.path.join(folder, n)))
    if not names:
        raise DataError(f"{folder}: no images (PNG or JPEG files, names ending "
                        f"{', '.join(images.IMAGE_SUFFIXES)})")
    with ThreadPoolExecutor(workers()) as pool:
        headers = list(pool.map(images.read_header, [os.path.join(folder, n) for n in names]))
    channels = np.array([c for _, _, c in headers])
    odd = np.flatnonzero(channels != channels[0])
    if odd.size:
        raise images.mixed_channels(os.path.join(folder, names[0]), channels[0],
                                    os.path.join(folder, names[odd[0]]), channels[odd[0]])
    sizes = np.array([(w, h) for w, h, _ in headers], np.int64).reshape(-1, 2)
    boxes = None
    if annotated:
        by_name = coco.read_boxes(folder, {n: tuple(s) for n, s in zip(names, sizes.tolist())})
        boxes = tuple(by_name[n] for n in names)
    return SplitFiles(folder, tuple(names), sizes, int(channels[0]), boxes)
