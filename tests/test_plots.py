"""Checks of asr_tf.plots: learning curves and counts over training (matplotlib)."""
import matplotlib
import numpy as np
import pytest
from PIL import Image

from asr_tf import plots


# ----------------------------------------------------------------------------- learning curves

def _runs():
    """Two runs; run "b" has a NaN ACC, a record without 'step' and no SE at all."""
    a = [{"step": s, "acc": s / 400, "se": 50.0 - s / 10, "miou": 0.5, "nelbo": 700.0 - s}
         for s in (0, 100, 200)]
    b = [{"step": 0, "acc": 0.1, "miou": 0.2, "nelbo": 650.0},
         {"step": 150, "acc": float("nan"), "miou": 0.3, "nelbo": 600.0},
         {"acc": 0.9},
         {"step": 300, "acc": 0.4, "miou": [0.2, 0.6], "nelbo": 550.0}]
    return {"a": a, "b": b}


def test_learning_curves_figure_holds_exactly_the_series():
    fig = plots.learning_curves_figure(_runs(), ["acc", "se", "miou", "nelbo"])
    assert len(fig.axes) == 4
    want = {  # (label, steps, values) per panel; b's NaN ACC, step-less record and SE skipped
        "acc": [("a", [0, 100, 200], [0.0, 0.25, 0.5]), ("b", [0, 300], [0.1, 0.4])],
        "se": [("a", [0, 100, 200], [50.0, 40.0, 30.0])],
        "miou": [("a", [0, 100, 200], [0.5] * 3), ("b", [0, 150, 300], [0.2, 0.3, 0.4])],
        "nelbo": [("a", [0, 100, 200], [700.0, 600.0, 500.0]),
                  ("b", [0, 150, 300], [650.0, 600.0, 550.0])],
    }
    for ax, (key, lines), label in zip(fig.axes, want.items(), ["ACC", "SE", "mIoU", "nELBO"]):
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("step", label)
        got = [(ln.get_label(), list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax.lines]
        assert got == lines, key
    colors = {}
    for ax in fig.axes:
        for ln in ax.lines:
            colors.setdefault(ln.get_label(), set()).add(ln.get_color())
    assert colors == {"a": {"C0"}, "b": {"C1"}}           # one colour per run in every panel
    (legend,) = fig.legends                   # one legend for the figure, every run once
    assert [t.get_text() for t in legend.get_texts()] == ["a", "b"]


def test_learning_curves_colour_per_name_line_style_per_seed():
    """(run, seed) series: one colour per run (12 runs, 12 colours), one line style per seed."""
    series = {(f"run{r}", f"s{s}"): [{"step": 0, "acc": r + s / 10}, {"step": 1, "acc": r}]
              for r in range(12) for s in range(3)}
    fig = plots.learning_curves_figure(series, ["acc"])
    (ax,) = fig.axes
    by_run, by_seed = {}, {}
    for ln in ax.lines:
        run, seed = ln.get_label().split()
        by_run.setdefault(run, set()).add(matplotlib.colors.to_hex(ln.get_color()))
        by_seed.setdefault(seed, set()).add(ln.get_linestyle())
    assert all(len(c) == 1 for c in by_run.values())
    assert len({c for cs in by_run.values() for c in cs}) == 12  # no two runs share a colour
    assert [len(s) for s in by_seed.values()] == [1, 1, 1]
    assert len({s for ss in by_seed.values() for s in ss}) == 3
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [f"run{r}" for r in range(12)] + [
        "s0", "s1", "s2"]


def test_learning_curves_single_run_and_empty_panel():
    records = [{"step": 5, "acc": 0.5}]
    fig = plots.learning_curves_figure(records, ["acc", "bogus", "nelbo"])
    assert len(fig.axes) == 3 and not fig.legends    # 2 x 2 grid, the fourth cell removed
    (line,) = fig.axes[0].lines
    assert list(line.get_xdata()) == [5] and line.get_marker() == "o"   # one point stays visible
    assert fig.axes[1].get_ylabel() == "bogus"
    for ax in fig.axes[1:]:
        assert not ax.lines and [t.get_text() for t in ax.texts] == ["no data"]
    with pytest.raises(ValueError, match="at least one metric"):
        plots.learning_curves_figure(records, [])


@pytest.mark.parametrize("keys, grid", [(["acc"], (1, 1)), (["acc", "se", "miou"], (2, 2)),
                                        (["acc", "se", "miou", "nelbo"], (2, 2))])
def test_learning_curves_png_size_and_lines(tmp_path, keys, grid):
    path = plots.learning_curves_png(_runs(), keys, tmp_path / "sub" / "c.png",
                                     panel_size=(300, 200))
    im = Image.open(path)
    assert im.format == "PNG" and im.size == (300 * grid[1], 200 * grid[0])
    rgb = np.asarray(im.convert("RGB")).astype(int)
    for color in [(31, 119, 180), (255, 127, 14)]:   # matplotlib's C0 and C1: runs a and b drawn
        assert (np.abs(rgb - color).sum(-1) < 40).sum() > 20, color


# ----------------------------------------------------------------------------- count curves

def _count_records():
    """Run "x" (1 or 3 objects, counts 0..3, 3 steps) at two evaluations; run "y" without
    count scalars."""
    def rec(step, f1, f3, p):
        r = {"step": step, "acc": 0.5}
        r.update({f"count_frac_1obj_{k}": v for k, v in enumerate(f1)})
        r.update({f"count_frac_3obj_{k}": v for k, v in enumerate(f3)})
        r.update({f"pres_{c}obj_step{t}": p[t] for c in (1, 3) for t in range(3)})
        return r
    x = [rec(0, [0.0, 0.2, 0.8, 0.0], [0.0, 0.0, 0.5, 0.5], [0.9, 0.6, 0.2]),
         {"step": 50, "train_loss": 3.0},                 # a training record: no evaluation
         rec(100, [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0], [1.0, 0.5, float("nan")]),
         rec(200, [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0], [1.0, 0.4, 0.7])]
    del x[-1]["pres_1obj_step1"]                         # no scene reached step 1 at 200
    return {"x": x, "y": [{"step": 0, "acc": 0.1}]}


def test_count_curves_figure_stacks_fractions_and_draws_presence():
    fig = plots.count_curves_figure(_count_records())
    assert len(fig.axes) == 2 * 4                       # 2 runs x (2 true counts x 2 panels)
    x1, x1p, x3, x3p = fig.axes[:4]
    assert x1.get_title() == "x: 1 objects, counts"
    assert x3p.get_title() == "x: 3 objects, presence"
    # the stack's top edge is the cumulative sum: its last band ends at 1 at both steps
    (first, *_, last) = x1.collections
    assert len(x1.collections) == 4
    top = last.get_paths()[0].vertices
    assert np.allclose(sorted(set(np.round(top[:, 1], 6)) - {0.0}), [1.0])
    band1 = first.get_paths()[0].vertices                 # count 0: empty at both steps
    assert np.allclose(band1[:, 1], 0.0)
    (legend,) = fig.legends                              # every count, then every step, once
    assert [t.get_text() for t in legend.get_texts()] == [
        "count 0", "count 1", "count 2", "count 3", "step 0", "step 1", "step 2"]
    # presence: a line per glimpse step over the evaluations (not the training record), NaN
    # (a break in the line, not a bridge) where a value is NaN or missing
    lines = [(ln.get_label(), list(ln.get_xdata()), list(ln.get_ydata())) for ln in x1p.lines]
    assert [(label, xs) for label, xs, _ in lines] == [
        ("step 0", [0, 100, 200]), ("step 1", [0, 100, 200]), ("step 2", [0, 100, 200])]
    np.testing.assert_array_equal([ys for *_, ys in lines],
                                  [[0.9, 1.0, 1.0], [0.6, 0.5, np.nan], [0.2, np.nan, 0.7]])
    assert x1p.lines[0].get_marker() == "."
    assert np.allclose(matplotlib.colors.to_rgb(x1p.lines[0].get_color()), (0.85, 0, 0))
    for ax in fig.axes[4:]:                              # run "y": no count scalars
        assert not ax.collections and not ax.lines
        assert [t.get_text() for t in ax.texts] == ["no data"]
    with pytest.raises(ValueError, match="at least one run"):
        plots.count_curves_figure({})


def test_count_curves_png_size(tmp_path):
    path = plots.count_curves_png(_count_records(), tmp_path / "c" / "counts.png",
                                panel_size=(200, 150))
    assert Image.open(path).size == (200 * 4, 150 * 2)
