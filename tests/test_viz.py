"""Checks of asr_tf.viz (docs/ORIGINAL.md §9, quirk Q37)."""
import numpy as np
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
