"""Plots of the MOG-ASR runs with matplotlib (Figures on the Agg canvas, no pyplot state).

* `learning_curves_figure` / `learning_curves_png`: metric against step, one panel per metric,
  a colour per run, a line style per seed.
* `count_curves_figure` / `count_curves_png`: how runs count over training (count fractions per
  true count, stacked; presence probability per glimpse step).
"""
from __future__ import annotations

import math
import os
from typing import Iterable, Mapping, Sequence, Tuple

import numpy as np
import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from asr_tf import counts as counts_lib
from asr_tf.viz import STEP_COLORS

__all__ = [
    "METRIC_LABELS",
    "learning_curves_figure",
    "learning_curves_png",
    "count_curves_figure",
    "count_curves_png",
]


def _finite_or_nan(value) -> float:
    """``value`` as a float (a list value averaged), NaN when it is missing (None), not numeric
    or not finite."""
    if value is None:
        return math.nan
    try:
        v = float(np.mean(value))
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


def _series(records: Iterable[Mapping], key: str):
    """(steps, values) of ``key`` in ``records``; records without 'step', without the key, or with
    a None / non-numeric / non-finite value are skipped (a list value is averaged)."""
    xs, ys = [], []
    for rec in records:
        v = _finite_or_nan(rec.get(key))
        if "step" in rec and math.isfinite(v):
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
    true_counts = sorted({c for recs in runs.values()
                          for c in _indexed_keys(recs, counts_lib.COUNT_FRAC_KEY)})
    ncols = 2 * max(1, len(true_counts))
    width_px, height_px = panel_size
    fig = Figure(figsize=(ncols * width_px / 100.0, len(runs) * height_px / 100.0), dpi=100,
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(runs), ncols, squeeze=False)
    for row, (name, recs) in zip(axes, runs.items()):
        counts = _indexed_keys(recs, counts_lib.COUNT_FRAC_KEY)
        steps_by_c = _indexed_keys(recs, counts_lib.PRESENCE_KEY)
        for j, c in enumerate(true_counts or [None]):
            ax_count, ax_pres = row[2 * j], row[2 * j + 1]
            ks = counts.get(c, [])
            keys = [counts_lib.count_frac_key(c, k) for k in ks]
            usable = [r for r in recs
                      if "step" in r and all(r.get(key) is not None for key in keys)]
            if ks and usable:
                ax_count.stackplot([r["step"] for r in usable],
                                   [[float(r[key]) for r in usable] for key in keys],
                                   labels=[f"count {k}" for k in ks],
                                   colors=[matplotlib.colormaps["viridis"](k / max(ks[-1], 1))
                                           for k in ks])
                ax_count.set_ylim(0, 1)
            glimpse_steps = steps_by_c.get(c, [])
            pres_keys = [counts_lib.presence_key(c, t) for t in glimpse_steps]
            evaluations = [r for r in recs if "step" in r and any(k in r for k in pres_keys)]
            for t, key in zip(glimpse_steps, pres_keys):
                # NaN where an evaluation has no value (no scene reached step t): the line
                # breaks there instead of bridging the gap; markers show isolated points
                xs = [r["step"] for r in evaluations]
                ys = [_finite_or_nan(r.get(key)) for r in evaluations]
                ax_pres.plot(xs, ys, color=np.array(STEP_COLORS[t % 6]) / 255 * 0.85,
                             marker=".", markersize=3, label=f"step {t}")
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
