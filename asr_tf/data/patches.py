"""Object patches of the synthetic scenes (docs/ORIGINAL.md §2.2): square crops of the source
images, optionally rescaled.

Per object: a square-ish crop around the ink of one source image (`crop_non_empty`, negative
starts clamped to 0, Q3); with a rescale factor r ~ U(lo, hi), an order-5 spline onto an
int(D*r) square (D = 28 MNIST, 30 dSprites), clip to [0, 1], zero below INK_FLOOR, crop again
(`rescale_patch`).

Speed: the square crops of all source images are computed once (vectorised); with a fixed
rescale factor (lo == hi, as in every paper dataset) the rescaled crop of each source image is
cached the first time it is drawn (so the first pass over a rescaled MNIST set is slower,
~0.3 ms per new digit).
"""
from __future__ import annotations

import functools

import numpy as np
import scipy.ndimage

from asr_tf.data import sources

INK_FLOOR = 0.05  # after rescaling, values below this become 0
SOURCE_SIDE_PX = {"mnist": sources.MNIST_SIDE_PX, "dsprites": sources.DSPRITES_KEEP_PX}


class EmptyPatch(Exception):
    """An object patch without ink (possible after rescaling); the scene restarts."""


def _crop_bounds(ink_cols: np.ndarray, ink_rows: np.ndarray):
    """Square-crop bounds from ink profiles [N, W] and [N, H] (bool). Returns 4 int arrays [N].

    Centre c = (first + last) / 2 per axis, half-length L = max extent / 2; keep
    int(c - L)..int(c + L) inclusive on both axes (int truncates), starts clamped to 0 (Q3).
    """
    width, height = ink_cols.shape[1], ink_rows.shape[1]
    x0 = ink_cols.argmax(axis=1)
    x1 = width - 1 - ink_cols[:, ::-1].argmax(axis=1)
    y0 = ink_rows.argmax(axis=1)
    y1 = height - 1 - ink_rows[:, ::-1].argmax(axis=1)
    half = np.maximum(x1 - x0, y1 - y0) / 2.0
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    x_start = np.maximum(np.trunc(cx - half).astype(np.int64), 0)
    y_start = np.maximum(np.trunc(cy - half).astype(np.int64), 0)
    x_end = np.trunc(cx + half).astype(np.int64)  # inclusive; never past the last ink pixel
    y_end = np.trunc(cy + half).astype(np.int64)
    return x_start, x_end, y_start, y_end


def crop_non_empty(image: np.ndarray) -> np.ndarray:
    """Square-ish crop [h, w] around the ink of one image [H, W] (docs/ORIGINAL.md §2.2, Q3).

    Raises EmptyPatch if the image has no ink.
    """
    ink = image != 0
    ink_cols, ink_rows = ink.any(axis=0), ink.any(axis=1)
    if not ink_cols.any():
        raise EmptyPatch()
    xs, xe, ys, ye = (int(b[0]) for b in _crop_bounds(ink_cols[None], ink_rows[None]))
    return image[ys : ye + 1, xs : xe + 1]


def rescale_patch(patch: np.ndarray, factor: float, side_px: int) -> np.ndarray:
    """Rescale a cropped patch by `factor` (docs/ORIGINAL.md §2.2); returns the re-cropped patch.

    Order-5 spline, output pixel o reads input o / factor, output shape int(side_px * factor)
    squared (side_px = the source image side, not the crop's), then clip to [0, 1], zero
    below INK_FLOOR, square crop again. Raises EmptyPatch if no ink survives.
    """
    out_px = int(side_px * factor)
    resampled = scipy.ndimage.affine_transform(
        patch, np.array([1.0 / factor, 1.0 / factor]), output_shape=(out_px, out_px), order=5
    )
    resampled = np.clip(resampled, 0.0, 1.0)
    resampled[resampled < INK_FLOOR] = 0.0
    return crop_non_empty(resampled.astype(np.float32, copy=False))


@functools.lru_cache(maxsize=None)
def _source_crops(source: str) -> tuple:
    """Square crops of every source image, a tuple of float32 arrays [h_i, w_i] (views)."""
    images = sources.load_mnist() if source == "mnist" else sources.dsprites_sprites()
    ink = images != 0  # [N, D, D]
    ink_cols, ink_rows = ink.any(axis=1), ink.any(axis=2)  # [N, D] each
    empty = ~ink_cols.any(axis=1)
    if empty.any():
        raise ValueError(f"{source}: source images without ink: {np.flatnonzero(empty)[:10]}")
    x0, x1, y0, y1 = _crop_bounds(ink_cols, ink_rows)
    return tuple(images[i, y0[i] : y1[i] + 1, x0[i] : x1[i] + 1] for i in range(len(images)))


# (source, factor) -> {source index: rescaled patch, or None if no ink survived}
_RESCALED_CACHE: dict = {}


def draw_patch(source: str, rescale: tuple | None, rng: np.random.Generator) -> np.ndarray:
    """One preprocessed object patch [h, w] float32 for a uniformly drawn source image.

    Args:
      source: 'mnist' or 'dsprites' (a key of SOURCE_SIDE_PX).
      rescale: None, or (lo, hi): the factor r ~ U(lo, hi) (a fixed factor if lo == hi).
      rng: the scene's generator; one draw for the source index, one more for r if lo < hi.
    Returns a read-only array when the patch is shared through the cache. Raises EmptyPatch
    if no ink survives the rescale.
    """
    crops = _source_crops(source)
    index = int(rng.random() * len(crops))  # uniform source index
    if rescale is None:
        return crops[index]
    lo, hi = rescale
    side_px = SOURCE_SIDE_PX[source]
    if lo != hi:  # a random factor per object: nothing to cache
        return rescale_patch(crops[index], rng.uniform(lo, hi), side_px)
    cache = _RESCALED_CACHE.setdefault((source, lo), {})
    if index not in cache:
        try:
            patch = rescale_patch(crops[index], lo, side_px)
            patch.flags.writeable = False  # shared by every scene that draws this source
        except EmptyPatch:
            patch = None
        cache[index] = patch
    if cache[index] is None:
        raise EmptyPatch()
    return cache[index]
