"""Files of synthesised scenes (tools/make_dataset.py via scenes.export_scenes and
scenes.export_folder): the .npz of arrays and a PNG preview grid with the ground-truth boxes,
each written atomically; or a data set folder (PNGs and annotations.json, docs/OWN_DATA.md).
"""
from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np

from asr_tf.data import coco, images as image_files


def check_output_paths(out: str, preview: str | None) -> None:
    """Raises ValueError unless `out` ends in .npz, `preview` (if given) in .png, and both
    folders exist (checked before anything is synthesised or written)."""
    for path, suffix in ((out, ".npz"), (preview, ".png")):
        if path is not None and not path.endswith(suffix):
            raise ValueError(f"output {path!r} must end in {suffix}")
        if path is not None and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise ValueError(f"output folder of {path!r} does not exist")


def write_scenes(arrays: dict, out: str, preview: str | None = None) -> None:
    """Writes `arrays` (images [N, S, S], counts [N], boxes_px [N, 4, 4], box_mask [N, 4]) to
    the .npz `out`, and the preview grid of the first scenes to `preview` if given."""
    atomic_write(out, lambda f: np.savez(f, **arrays))
    if preview is not None:
        atomic_write(
            preview,
            lambda f: save_preview_png(f, arrays["images"], arrays["boxes_px"], arrays["box_mask"]),
        )


def save_preview_png(path, images, boxes_px, box_mask, columns: int = 8, max_images=64):
    """Grid PNG of the first `max_images` scenes with their GT boxes drawn in red.

    path: a file name or a binary file object. images [N, S, S] in [0, 1];
    boxes_px [N, 4, 4] (x, y, w, h); box_mask [N, 4].
    """
    from PIL import Image, ImageDraw

    images = np.asarray(images)[:max_images]
    num, size = len(images), images.shape[1]
    rows = max(1, -(-num // columns))
    pad = 2
    grid = Image.new("RGB", (columns * (size + pad) + pad, rows * (size + pad) + pad), "gray")
    draw = ImageDraw.Draw(grid)
    for n in range(num):
        left = pad + (n % columns) * (size + pad)
        top = pad + (n // columns) * (size + pad)
        tile = (np.clip(images[n], 0.0, 1.0) * 255).astype(np.uint8)
        grid.paste(Image.fromarray(tile, "L").convert("RGB"), (left, top))
        for (x, y, w, h), real in zip(boxes_px[n], box_mask[n]):
            if real:  # box covers pixels x..x+w-1, y..y+h-1
                draw.rectangle(
                    [left + x, top + y, left + x + w - 1, top + y + h - 1], outline=(255, 0, 0)
                )
    grid.save(path, format="PNG")


def atomic_write(path: str, write_fn) -> None:
    """Write via a temporary file in the same folder, then rename (nothing left on failure).

    write_fn(f) writes to the binary file object f.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"output folder does not exist: {folder}")
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_folder(out: str, splits: dict) -> int:
    """Writes scenes as a data set folder: ``out/<split>/<index>.png`` (zero-padded split index,
    so that file-name order is index order) and ``out/<split>/annotations.json`` (the boxes, COCO
    form), into a temporary folder renamed to ``out`` at the end (nothing is left on failure).

    Args:
      out: a folder that does not exist yet (its parent must).
      splits: {split name: dict(image [N, S, S] float32 in [0, 1], boxes_px [N, M, 4] (x, y, w,
        h), box_mask [N, M])}.
    Returns the PNGs' bit depth: 8 if every value of every image is k / 255 (the values of an
    8-bit PNG, bit for bit), else 16 (grayscale, quantised to k / 65535).
    """
    check_new_folder(out)
    bits = max(image_files.png_bits(arrays["image"]) for arrays in splits.values())
    parent = os.path.dirname(os.path.abspath(out))
    tmp = tempfile.mkdtemp(dir=parent, prefix=os.path.basename(out) + ".tmp")
    try:
        for split, arrays in splits.items():
            folder = os.path.join(tmp, split)
            os.makedirs(folder)
            num = len(arrays["image"])
            names = [f"{i:0{max(6, len(str(num - 1)))}d}.png" for i in range(num)]
            for name, image in zip(names, arrays["image"]):
                image_files.write_png(os.path.join(folder, name), image, bits)
            size = arrays["image"].shape[2], arrays["image"].shape[1]  # (width, height)
            coco.write(folder, names, [size] * num,
                       [b[m] for b, m in zip(arrays["boxes_px"], arrays["box_mask"])])
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return bits


def check_new_folder(out: str) -> None:
    """Raises ValueError unless ``out`` does not exist and its parent folder does."""
    if os.path.exists(out):
        raise ValueError(f"{out} exists; give a new folder (nothing is overwritten)")
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise ValueError(f"the parent folder of {out} does not exist")
