"""Images of the MOG-ASR runs (docs/ORIGINAL.md §9): grids with numpy + PIL (curves:
asr_tf/plots.py).

* `draw_boxes`: a grayscale or RGB canvas, upscaled (nearest), with 1-px box outlines coloured
  by step (red, green, blue, yellow, magenta, cyan).
* `image_grid`: the int(sqrt(N)) x int(sqrt(N)) grid filled column by column that the original
  `pile_image` meant to build (quirk Q37, fixed: floats are clipped to [0, 1] and converted to
  uint8; grayscale is repeated to RGB, colour shown as it is).
* `reconstruction_panels`: per image [original + inferred boxes | 4-px white | reconstruction +
  boxes | 4-px white], gridded (the `visualize_{step}.png` images, paper Figures 4-6).
* `save_png`.

All boxes are (x1, y1, x2, y2) in pixels of the un-upscaled image, x horizontal (column).
"""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image

__all__ = [
    "STEP_COLORS",
    "to_uint8",
    "to_rgb",
    "draw_boxes",
    "image_grid",
    "reconstruction_panels",
    "save_png",
]

# Box colour per step t (t-th box uses STEP_COLORS[t % 6]).
STEP_COLORS: Tuple[Tuple[int, int, int], ...] = (
    (255, 0, 0),      # red
    (0, 255, 0),      # green
    (0, 0, 255),      # blue
    (255, 255, 0),    # yellow
    (255, 0, 255),    # magenta
    (0, 255, 255),    # cyan
)


# ----------------------------------------------------------------------------- conversions

def to_uint8(array) -> np.ndarray:
    """uint8 arrays pass through; anything else is clipped to [0, 1] and scaled to [0, 255]."""
    a = np.asarray(array)
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    a = np.nan_to_num(a.astype(np.float64), nan=0.0)
    return np.round(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)


def to_rgb(image) -> np.ndarray:
    """[H, W], [H, W, 1], [H, W, 3] or [H, W, 4] (float in [0, 1] or uint8) -> uint8 [H, W, 3]."""
    a = to_uint8(image)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise ValueError("expected an image [H, W(, C)], got shape %s" % (a.shape,))
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    elif a.shape[-1] == 4:
        a = a[..., :3]
    elif a.shape[-1] != 3:
        raise ValueError("expected 1, 3 or 4 channels, got %d" % a.shape[-1])
    return np.ascontiguousarray(a)


# ----------------------------------------------------------------------------- boxes

def draw_boxes(image, boxes_xyxy, colors: Optional[Sequence[Tuple[int, int, int]]] = None,
               upscale: int = 2, thickness: int = 1) -> np.ndarray:
    """Draws box outlines on an upscaled copy of one image.

    Args:
      image: [H, W], [H, W, 1] or [H, W, 3] (RGB) float in [0, 1] (uint8 also accepted).
      boxes_xyxy: [K, 4] boxes (x1, y1, x2, y2) in pixels of `image`; box k gets
        colors[k % len(colors)] (default STEP_COLORS, i.e. by step order).
      upscale: integer nearest-neighbour upscale factor; box coordinates are multiplied by it
        and rounded to the nearest upscaled pixel.
      thickness: outline width in upscaled pixels (drawn inwards from the box edge).
    Returns:
      uint8 RGB [H*upscale, W*upscale, 3]. Edges lying outside the image are not drawn and the
      remaining edges are clipped to the image (boxes partly outside stay open on that side).
    """
    up = int(upscale)
    if up < 1:
        raise ValueError("upscale must be >= 1")
    out = to_rgb(image)
    if up > 1:
        out = np.repeat(np.repeat(out, up, axis=0), up, axis=1)
    out = out.copy()
    height, width = out.shape[:2]
    colors = STEP_COLORS if not colors else colors
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    th = max(1, int(thickness))

    def fill(r0, r1, c0, c1, color):  # inclusive ranges, clipped
        r0, c0 = max(r0, 0), max(c0, 0)
        r1, c1 = min(r1, height - 1), min(c1, width - 1)
        if r0 <= r1 and c0 <= c1:
            out[r0:r1 + 1, c0:c1 + 1] = color

    for k, box in enumerate(boxes):
        if not np.all(np.isfinite(box)):
            continue
        color = np.asarray(colors[k % len(colors)], dtype=np.uint8)[:3]
        x1, y1, x2, y2 = (int(round(v * up)) for v in box)
        x1, x2 = min(x1, x2), max(x1, x2)
        y1, y2 = min(y1, y2), max(y1, y2)
        fill(y1, y1 + th - 1, x1, x2, color)   # top
        fill(y2 - th + 1, y2, x1, x2, color)   # bottom
        fill(y1, y2, x1, x1 + th - 1, color)   # left
        fill(y1, y2, x2 - th + 1, x2, color)   # right
    return out


# ----------------------------------------------------------------------------- grids

def image_grid(images, ncols: Optional[int] = None, pad: int = 2, column_major: bool = True,
               pad_value: int = 255) -> np.ndarray:
    """Tiles panels into one RGB image.

    Args:
      images: [N, H, W], [N, H, W, 1] or [N, H, W, 3] (float in [0, 1] or uint8), or a list of
        equally shaped panels.
      ncols: None -> an int(sqrt(N)) x int(sqrt(N)) grid as in the original (the panels beyond
        the square are dropped); otherwise ncols columns and ceil(N / ncols) rows (all shown).
      pad: pixels of `pad_value` between panels (not around the border).
      column_major: fill column by column (original order): panel i goes to row i % nrows,
        column i // nrows. False: row by row.
      pad_value: grey level of the padding and of empty cells.
    Returns:
      uint8 [nrows*H + (nrows-1)*pad, ncols*W + (ncols-1)*pad, 3].
    """
    panels = [to_rgb(im) for im in images]
    n = len(panels)
    if n == 0:
        raise ValueError("image_grid needs at least one image")
    h, w = panels[0].shape[:2]
    if any(p.shape != panels[0].shape for p in panels):
        raise ValueError("all panels must have the same shape")
    if ncols is None:
        ncols = nrows = max(1, math.isqrt(n))
    else:
        ncols = max(1, int(ncols))
        nrows = int(math.ceil(n / ncols))
    n_shown = min(n, nrows * ncols)
    pad = max(0, int(pad))
    out = np.full([nrows * h + (nrows - 1) * pad, ncols * w + (ncols - 1) * pad, 3],
                  pad_value, dtype=np.uint8)
    for i in range(n_shown):
        if column_major:
            r, c = i % nrows, i // nrows
        else:
            r, c = i // ncols, i % ncols
        y, x = r * (h + pad), c * (w + pad)
        out[y:y + h, x:x + w] = panels[i]
    return out


def reconstruction_panels(images, recon, boxes_xyxy, counts, upscale: int = 2, sep: int = 4,
                          ncols: Optional[int] = None, pad: int = 2) -> np.ndarray:
    """Original + reconstruction side by side, with the inferred boxes, gridded.

    Args:
      images: [N, H, W(, C)] inputs in [0, 1], C 1 (grayscale) or 3 (RGB).
      recon: [N, H, W(, C)] reconstructions (clipped to [0, 1] for display).
      boxes_xyxy: [N, T, 4] inferred boxes (x1, y1, x2, y2) in pixels (`metrics.boxes_from_where`).
      counts: [N] inferred counts; only the first counts[n] boxes of image n are drawn.
      upscale: nearest-neighbour upscale of each image.
      sep: white strip after each of the two images of a panel (4 px in the original).
      ncols, pad: grid layout, see `image_grid` (column-major).
    Returns:
      uint8 RGB grid; each panel is [H*up, 2*(W*up + sep), 3].
    """
    images = np.asarray(images)
    recon = np.asarray(recon)
    boxes = np.asarray(boxes_xyxy, dtype=np.float64)
    counts = np.asarray(counts).reshape(-1).astype(np.int64)
    n = images.shape[0]
    panels = []
    for i in range(n):
        k = int(np.clip(counts[i], 0, boxes.shape[1]))
        left = draw_boxes(images[i], boxes[i, :k], upscale=upscale)
        right = draw_boxes(recon[i], boxes[i, :k], upscale=upscale)
        strip = np.full([left.shape[0], sep, 3], 255, dtype=np.uint8)
        panels.append(np.concatenate([left, strip, right, strip], axis=1))
    return image_grid(panels, ncols=ncols, pad=pad, column_major=True)


# ----------------------------------------------------------------------------- files

def save_png(array, path) -> str:
    """Writes [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] (uint8, or float in [0, 1]) as PNG."""
    a = to_uint8(array)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(a)).save(path, format="PNG")
    return path
