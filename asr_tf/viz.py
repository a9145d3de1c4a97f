"""Images of the MOG-ASR runs (spec section 9): grids with numpy + PIL, curves with matplotlib.

* `draw_boxes`: a grayscale canvas, upscaled (nearest), with 1-px box outlines coloured by step
  (red, green, blue, yellow, magenta, cyan).
* `image_grid`: the int(sqrt(N)) x int(sqrt(N)) grid filled column by column that the original
  `pile_image` meant to build (quirk Q37, fixed: floats are clipped to [0, 1] and converted to
  uint8; grayscale is repeated to RGB).
* `reconstruction_panels`: per image [original + inferred boxes | 4-px white | reconstruction +
  boxes | 4-px white], gridded (the `visualize_{step}.png` images, paper Figures 4-6).
* `save_png`; `learning_curves_figure` / `learning_curves_png`: metric against step, one
  panel per metric, one line per run (a matplotlib Figure on the Agg canvas, no pyplot state).

All boxes are (x1, y1, x2, y2) in pixels of the un-upscaled image, x horizontal (column).
"""
from __future__ import annotations

import math
import os
import re
from typing import Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np
import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image

__all__ = [
    "STEP_COLORS",
    "to_uint8",
    "to_rgb",
    "draw_boxes",
    "image_grid",
    "reconstruction_panels",
    "save_png",
    "METRIC_LABELS",
    "learning_curves_figure",
    "learning_curves_png",
    "count_curves_figure",
    "count_curves_png",
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
      image: [H, W] or [H, W, 1] float in [0, 1] (uint8 and RGB also accepted).
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
      images: [N, H, W(, 1)] inputs in [0, 1].
      recon: [N, H, W(, 1)] reconstructions (clipped to [0, 1] for display).
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


def _series(records: Iterable[Mapping], key: str):
    """(steps, values) of ``key`` in ``records``; records without 'step', without the key, or with
    a None / non-numeric / non-finite value are skipped (a list value is averaged)."""
    xs, ys = [], []
    for rec in records:
        if key not in rec or rec[key] is None or "step" not in rec:
            continue
        try:
            v = float(np.mean(rec[key]))
        except (TypeError, ValueError):
            continue
        if math.isfinite(v):
            xs.append(float(rec["step"]))
            ys.append(v)
    return xs, ys


# Axis label of each metric key of the evaluation records (the paper's names).
METRIC_LABELS = {"acc": "ACC", "se": "SE", "miou": "mIoU", "nelbo": "nELBO"}


def learning_curves_figure(records, keys: Sequence[str],
                           panel_size: Tuple[int, int] = (480, 320)) -> Figure:
    """A matplotlib Figure (Agg canvas): one panel per key, metric against 'step'.

    Args:
      records: list of dicts, each with 'step' and some metric keys (missing/non-finite values
        are skipped); or a dict name -> such a list, one line per name (the same colour in every
        panel), named in a legend below the panels; or a dict (name, member) -> such a list
        (e.g. (run, seed)): a colour per name and a line style per member, both in the legend.
      keys: metric names, one panel each (y label ``METRIC_LABELS.get(key, key)``, x label
        'step'), in rows of two panels.
      panel_size: (width, height) of one panel in pixels (100 dpi).
    Returns:
      Figure of ncols * width x nrows * height pixels; panel j is ``figure.axes[j]``.
    """
    keys = list(keys)
    if not keys:
        raise ValueError("learning curves need at least one metric key")
    series = ({k if isinstance(k, tuple) else (str(k), ""): list(v) for k, v in records.items()}
              if isinstance(records, Mapping) else {("", ""): list(records)})
    names = list(dict.fromkeys(name for name, _ in series))
    members = list(dict.fromkeys(member for _, member in series))
    ncols = min(2, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    width_px, height_px = panel_size
    fig = Figure(figsize=(ncols * width_px / 100.0, nrows * height_px / 100.0), dpi=100,
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(keys):]:
        fig.delaxes(ax)
    for ax, key in zip(axes, keys):
        for (name, member), recs in series.items():
            steps, values = _series(recs, key)
            if steps:
                ax.plot(steps, values, color=_colour(names.index(name)),
                        linestyle=LINE_STYLES[members.index(member) % len(LINE_STYLES)],
                        label=f"{name} {member}".strip(), marker="o" if len(steps) == 1 else None)
        if not ax.lines:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center",
                    color="grey")
        ax.set_xlabel("step")
        ax.set_ylabel(METRIC_LABELS.get(key, key))
        ax.grid(True, alpha=0.3)
    if len(series) > 1 and any(ax.lines for ax in axes[:len(keys)]):
        handles = [Line2D([], [], color=_colour(i), label=name) for i, name in enumerate(names)
                   if name] + [Line2D([], [], color="black", label=member,
                                      linestyle=LINE_STYLES[i % len(LINE_STYLES)])
                               for i, member in enumerate(members) if member and len(members) > 1]
        fig.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)),
                   fontsize="small")
    return fig


LINE_STYLES = ("-", "--", ":", "-.")


def _colour(i):
    """The i-th distinct colour: tab10, then tab20's light shades (20 before any repeats)."""
    return f"C{i}" if i < 10 else matplotlib.colormaps["tab20"](2 * (i - 10) % 20 + 1)


def learning_curves_png(records, keys: Sequence[str], path,
                        panel_size: Tuple[int, int] = (480, 320)) -> str:
    """Writes `learning_curves_figure(records, keys, panel_size)` as a PNG; returns path."""
    return _save_figure(learning_curves_figure(records, keys, panel_size), path)


_COUNT_KEY = re.compile(r"count_frac_(\d+)obj_(\d+)$")
_PRES_KEY = re.compile(r"pres_(\d+)obj_step(\d+)$")


def _indexed_keys(records, pattern):
    """{first index: sorted second indices} of the keys of ``records`` that match ``pattern``."""
    found = {}
    for rec in records:
        for key in rec:
            m = pattern.match(key)
            if m:
                found.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    return {a: sorted(b) for a, b in sorted(found.items())}


def count_curves_figure(records: Mapping[str, Sequence[Mapping]],
                        panel_size: Tuple[int, int] = (300, 220)) -> Figure:
    """How runs count over training: a row of panels per run, two panels per true count c.

    Args:
      records: run name -> its evaluation records (dicts with 'step' and the count scalars of
        asr_tf/counts.py: ``count_frac_<c>obj_<k>``, ``pres_<c>obj_step<t>``).
      panel_size: (width, height) of one panel in pixels (100 dpi).
    Returns:
      Figure; per run and true count c, left: the fractions of c-object scenes with each inferred
      count k stacked against step (they sum to 1; a colour per k, viridis); right: the mean
      presence probability of each glimpse step t against step (a line per t, the boxes'
      STEP_COLORS); one legend below. Runs without count scalars get a "no data" row.
    """
    runs = {str(name): list(recs) for name, recs in records.items()}
    if not runs:
        raise ValueError("count curves need at least one run")
    true_counts = sorted({c for recs in runs.values() for c in _indexed_keys(recs, _COUNT_KEY)})
    ncols = 2 * max(1, len(true_counts))
    width_px, height_px = panel_size
    fig = Figure(figsize=(ncols * width_px / 100.0, len(runs) * height_px / 100.0), dpi=100,
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(runs), ncols, squeeze=False)
    for row, (name, recs) in zip(axes, runs.items()):
        counts, steps_by_c = _indexed_keys(recs, _COUNT_KEY), _indexed_keys(recs, _PRES_KEY)
        for j, c in enumerate(true_counts or [None]):
            ax_count, ax_pres = row[2 * j], row[2 * j + 1]
            ks = counts.get(c, [])
            keys = [f"count_frac_{c}obj_{k}" for k in ks]
            usable = [r for r in recs if "step" in r and all(r.get(key) is not None for key in keys)]
            if ks and usable:
                ax_count.stackplot([r["step"] for r in usable],
                                   [[float(r[key]) for r in usable] for key in keys],
                                   labels=[f"count {k}" for k in ks],
                                   colors=[matplotlib.colormaps["viridis"](k / max(ks[-1], 1))
                                           for k in ks])
                ax_count.set_ylim(0, 1)
            for t in steps_by_c.get(c, []):
                xs, ys = _series(recs, f"pres_{c}obj_step{t}")
                ax_pres.plot(xs, ys, color=np.array(STEP_COLORS[t % 6]) / 255 * 0.85,
                             label=f"step {t}")
            if ax_pres.lines:
                ax_pres.set_ylim(-0.02, 1.02)
            for ax, what in ((ax_count, "counts"), (ax_pres, "presence")):
                if not (ax.lines or ax.collections):
                    ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center",
                            va="center", color="grey")
                ax.set_title(f"{name}: {c} objects, {what}" if c is not None else name,
                             fontsize="small")
                ax.set_xlabel("step")
    handles = {}  # one legend for the figure: every count's colour, then every step's
    for ax in fig.axes:
        for artist in ax.collections + ax.lines:
            handles.setdefault(artist.get_label(), artist)
    if handles:
        fig.legend(handles=list(handles.values()), loc="outside lower center", fontsize="small",
                   ncols=min(len(handles), 7))
    return fig


def count_curves_png(records, path, panel_size: Tuple[int, int] = (300, 220)) -> str:
    """Writes `count_curves_figure(records, panel_size)` as a PNG; returns path."""
    return _save_figure(count_curves_figure(records, panel_size), path)


def _save_figure(fig, path) -> str:
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    fig.savefig(path, format="png")
    return path
