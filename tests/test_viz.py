"""Checks of asr_tf.viz (spec section 9, quirk Q37)."""
import matplotlib
import numpy as np
import pytest
from PIL import Image

from asr_tf import viz

RED, GREEN = (255, 0, 0), (0, 255, 0)


# ----------------------------------------------------------------------------- grid

def test_grid_shape_64_panels():
    panels = np.zeros([64, 10, 10], np.uint8)
    g = viz.image_grid(panels, pad=2)
    # 8 x 8 panels of 10 px with 7 gaps of 2 px
    assert g.shape == (8 * 10 + 7 * 2, 8 * 10 + 7 * 2, 3)
    assert g.dtype == np.uint8


def test_grid_column_major_order_and_padding():
    panels = np.stack([np.full([10, 10], 3 * i, np.uint8) for i in range(64)])
    g = viz.image_grid(panels, pad=2)
    for i in range(64):
        r, c = i % 8, i // 8          # column by column
        y, x = r * 12, c * 12
        assert np.all(g[y:y + 10, x:x + 10] == 3 * i), i
    assert g[0, 1 * 12 + 0, 0] == 3 * 8        # right of panel 0 is panel 8
    assert g[1 * 12, 0, 0] == 3 * 1            # below panel 0 is panel 1
    assert np.all(g[10:12, :, :] == 255)       # padding rows
    assert np.all(g[:, 10:12, :] == 255)       # padding columns
    # row-major option
    g2 = viz.image_grid(panels, pad=2, column_major=False)
    assert g2[0, 12, 0] == 3 * 1


def test_grid_floats_are_clipped_and_extra_panels_dropped():
    panels = np.zeros([5, 4, 4, 1])
    panels[0] = 2.0      # -> 255
    panels[1] = -1.0     # -> 0
    panels[2] = 0.5      # -> 128
    g = viz.image_grid(panels, pad=0)       # int(sqrt(5)) = 2 -> 2 x 2, panel 4 dropped
    assert g.shape == (8, 8, 3)
    assert g[0, 0, 0] == 255 and g[4, 0, 0] == 0 and g[0, 4, 0] == 128
    g3 = viz.image_grid(panels, ncols=3, pad=0)  # 2 rows x 3 cols, all 5 shown
    assert g3.shape == (8, 12, 3)


# ----------------------------------------------------------------------------- boxes

def test_draw_boxes_outline_red_interior_unchanged():
    img = np.full([20, 20], 0.5)
    out = viz.draw_boxes(img, [[5, 5, 14, 14]], upscale=1)
    assert out.shape == (20, 20, 3) and out.dtype == np.uint8
    outline = np.zeros([20, 20], bool)
    outline[5, 5:15] = outline[14, 5:15] = outline[5:15, 5] = outline[5:15, 14] = True
    assert np.all(out[outline] == RED)
    assert np.all(out[~outline] == 128)        # interior and outside untouched


def test_draw_boxes_upscale_and_step_colours():
    img = np.zeros([20, 20, 1])
    out = viz.draw_boxes(img, [[2, 2, 6, 6], [10, 10, 15, 15]], upscale=2)
    assert out.shape == (40, 40, 3)
    assert tuple(out[4, 8]) == RED and tuple(out[12, 4]) == RED      # edges at 4 and 12
    assert tuple(out[20, 25]) == GREEN and tuple(out[30, 25]) == GREEN
    assert tuple(out[8, 8]) == (0, 0, 0)                              # interior
    cols = [tuple(c) for c in viz.STEP_COLORS]
    assert cols == [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255),
                    (0, 255, 255)]


def test_draw_boxes_clips_boxes_partly_outside():
    img = np.zeros([20, 20])
    out = viz.draw_boxes(img, [[15, -3, 25, 10]], upscale=1)
    assert np.all(out[10, 15:20] == RED)       # bottom edge, clipped at the right border
    assert np.all(out[0:11, 15] == RED)        # left edge, clipped at the top
    assert np.all(out[0, 16:20] == 0)          # top edge (y = -3) is outside: not drawn
    assert np.all(out[:, 19][11:] == 0)


def test_reconstruction_panels_shape_and_counts():
    images = np.zeros([4, 10, 10])
    recon = np.zeros([4, 10, 10, 1])
    boxes = np.tile(np.array([[2.0, 2.0, 7.0, 7.0], [1.0, 1.0, 3.0, 3.0]]), [4, 1, 1])
    counts = np.array([1, 0, 2, 1])
    g = viz.reconstruction_panels(images, recon, boxes, counts, upscale=2, sep=4, pad=2)
    ph, pw = 20, 2 * (20 + 4)
    assert g.shape == (2 * ph + 2, 2 * pw + 2, 3)
    # panel 1 (row 1, col 0) has count 0: no colour anywhere in it
    p1 = g[ph + 2:2 * ph + 2, 0:pw]
    assert np.all(p1[:, :20] == 0) and np.all(p1[:, 20:24] == 255)
    # panel 0: red box on both the original and the reconstruction
    p0 = g[0:ph, 0:pw]
    assert tuple(p0[4, 4]) == RED and tuple(p0[4, 24 + 4]) == RED
    assert tuple(p0[2, 2]) == (0, 0, 0)        # the second box is beyond count 1
    p2 = g[0:ph, pw + 2:2 * pw + 2]          # panel 2 (row 0, col 1) shows both boxes
    assert tuple(p2[2, 2]) == GREEN


# ----------------------------------------------------------------------------- files

def test_png_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=[12, 9, 3], dtype=np.uint8)
    path = viz.save_png(a, tmp_path / "sub" / "x.png")
    back = np.asarray(Image.open(path))
    np.testing.assert_array_equal(back, a)
    g = rng.integers(0, 256, size=[7, 5, 1], dtype=np.uint8)
    back = np.asarray(Image.open(viz.save_png(g, tmp_path / "g.png")))
    np.testing.assert_array_equal(back, g[..., 0])


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
    fig = viz.learning_curves_figure(_runs(), ["acc", "se", "miou", "nelbo"])
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
    fig = viz.learning_curves_figure(series, ["acc"])
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
    fig = viz.learning_curves_figure(records, ["acc", "bogus", "nelbo"])
    assert len(fig.axes) == 3 and not fig.legends    # 2 x 2 grid, the fourth cell removed
    (line,) = fig.axes[0].lines
    assert list(line.get_xdata()) == [5] and line.get_marker() == "o"   # one point stays visible
    assert fig.axes[1].get_ylabel() == "bogus"
    for ax in fig.axes[1:]:
        assert not ax.lines and [t.get_text() for t in ax.texts] == ["no data"]
    with pytest.raises(ValueError, match="at least one metric"):
        viz.learning_curves_figure(records, [])


@pytest.mark.parametrize("keys, grid", [(["acc"], (1, 1)), (["acc", "se", "miou"], (2, 2)),
                                        (["acc", "se", "miou", "nelbo"], (2, 2))])
def test_learning_curves_png_size_and_lines(tmp_path, keys, grid):
    path = viz.learning_curves_png(_runs(), keys, tmp_path / "sub" / "c.png", panel_size=(300, 200))
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
         rec(100, [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0], [1.0, 0.5, float("nan")])]
    return {"x": x, "y": [{"step": 0, "acc": 0.1}]}


def test_count_curves_figure_stacks_fractions_and_draws_presence():
    fig = viz.count_curves_figure(_count_records())
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
    # presence: a line per glimpse step, the NaN of step 2 at step 100 skipped
    assert [(ln.get_label(), list(ln.get_xdata()), list(ln.get_ydata())) for ln in x1p.lines] == [
        ("step 0", [0.0, 100.0], [0.9, 1.0]), ("step 1", [0.0, 100.0], [0.6, 0.5]),
        ("step 2", [0.0], [0.2])]
    assert np.allclose(matplotlib.colors.to_rgb(x1p.lines[0].get_color()), (0.85, 0, 0))
    for ax in fig.axes[4:]:                              # run "y": no count scalars
        assert not ax.collections and not ax.lines
        assert [t.get_text() for t in ax.texts] == ["no data"]
    with pytest.raises(ValueError, match="at least one run"):
        viz.count_curves_figure({})


def test_count_curves_png_size(tmp_path):
    path = viz.count_curves_png(_count_records(), tmp_path / "c" / "counts.png",
                                panel_size=(200, 150))
    assert Image.open(path).size == (200 * 4, 150 * 2)
