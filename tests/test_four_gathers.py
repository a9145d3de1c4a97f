"""Q30 'four_gathers': the original's sampler arithmetic (asr_tf/nn/four_gathers.py) against the
exact sampler inside the source, a hand-worked float32 residue outside it, a numpy float32
re-derivation of the original's formula, and eager / graph / XLA agreement bit for bit."""
import numpy as np
import pytest
import tensorflow as tf

from asr_tf.nn import four_gathers as F
from asr_tf.nn import transformer as T
from asr_tf.quirks import SAMPLER_EDGES, Quirks

f32 = np.float32


def _c(a):
    return tf.constant(np.asarray(a, np.float32))


def _numpy_original(images, sx, sy, ox, oy, out_hw):
    """The original's formula, one float32 numpy op at a time (numpy rounds every op, no
    fused multiply-add): [N, H, W] -> [N, H', W']."""
    n, h, w = images.shape
    out = np.zeros((n,) + tuple(out_hw), np.float32)
    gy = f32(-1) + (f32(2) / f32(out_hw[0] - 1)) * np.arange(out_hw[0], dtype=f32)
    gx = f32(-1) + (f32(2) / f32(out_hw[1] - 1)) * np.arange(out_hw[1], dtype=f32)
    for k in range(n):
        x = ((sx[k] * gx + ox[k]) + f32(1)) * (f32(w) - f32(1.001)) / f32(2)  # [W']
        y = ((sy[k] * gy + oy[k]) + f32(1)) * (f32(h) - f32(1.001)) / f32(2)  # [H']
        x0 = np.floor(x).astype(np.int64)
        y0 = np.floor(y).astype(np.int64)
        x0, x1 = np.clip(x0, 0, w - 1), np.clip(x0 + 1, 0, w - 1)
        y0, y1 = np.clip(y0, 0, h - 1), np.clip(y0 + 1, 0, h - 1)
        xf0, xf1 = x0.astype(f32)[None], x1.astype(f32)[None]  # [1, W']
        yf0, yf1 = y0.astype(f32)[:, None], y1.astype(f32)[:, None]  # [H', 1]
        xx, yy = x[None], y[:, None]
        u = images[k]
        a = ((xf1 - xx) * (yf1 - yy)) * u[y0[:, None], x0[None]]
        b = ((xf1 - xx) * (yy - yf0)) * u[y1[:, None], x0[None]]
        c = ((xx - xf0) * (yf1 - yy)) * u[y0[:, None], x1[None]]
        d = ((xx - xf0) * (yy - yf0)) * u[y1[:, None], x1[None]]
        out[k] = ((a + b) + c) + d
    return out


# ----------------------------------------------------------------- outside: hand-worked residues

def test_hand_worked_residues_left_of_the_source():
    # U is 2 x 3; A = [[0.5, 0, -1], [0, 0.5, 0.1]], output 3 x 3, grid (-1, 0, 1).
    # Column 0: x_s = -1.5, x = (-1.5 + 1) * (3 - 1.001) / 2 = -0.49975: left of the source,
    # x0 = x1 = 0 after clipping. Rows: y_s = (-0.4, 0.1, 0.6), y = (y_s + 1) * 0.999 / 2 =
    # (0.2997, 0.54945, 0.7992), inside [0, 1): y0 = 0, y1 = 1.
    # Then wc = -wa, wd = -wb, Ic = Ia, Id = Ib: out = ((A + B) - A) - B, the float32 rounding
    # error of A + B, with A = 0.49975 (1 - y) U[0, 0] and B = 0.49975 y U[1, 0].
    img = np.array([[0.7, 0.2, 0.9], [0.3, 0.6, 0.1]], np.float32)
    args = (_c(img[None]), _c([0.5]), _c([0.5]), _c([-1.0]), _c([0.1]), (3, 3))
    out = F.sample(*args).numpy()[0]
    # by hand, row 0: A = fl(fl(0.49975 * 0.7003) * 0.7) = 0.24498242,
    # B = fl(fl(0.49975 * 0.2997) * 0.3) = 0.044932522; A + B = 0.28991494... lies in
    # [0.25, 0.5) where float32 steps by 2^-25 and rounds down by 2^-27.
    x, y0 = f32(-0.49975), f32(0.2997)
    a = ((f32(0) - x) * (f32(1) - y0)) * f32(0.7)
    b = ((f32(0) - x) * (y0 - f32(0))) * f32(0.3)
    assert a == f32(0.24498242) and b == f32(0.044932522)
    residue = ((a + b) - a) - b
    assert residue == f32(-2.0 ** -27) == float(a + b) - (float(a) + float(b))
    assert out[0, 0] == f32(-2.0 ** -27)  # -7.450581e-09: negative
    assert out[1, 0] == f32(2.0 ** -27)   # row 1 rounds up: positive
    assert out[2, 0] == 0.0               # row 2: A + B is exact
    # the exact sampler gives exactly 0 in that column; inside, the two agree to rounding
    hard = T.sample_separable(*args, "hard").numpy()[0]
    assert np.all(hard[:, 0] == 0.0)
    np.testing.assert_allclose(out[:, 1:], hard[:, 1:], atol=1e-6)
    assert np.all(out[:, 1:] > 0.3)


def test_residues_only_left_and_right_of_a_rendered_box():
    # x outside, y inside: the rounding error of A + B. y outside: B = -A and D = -C, so
    # ((A - A) + C) - C = 0 exactly, also in the corners.
    rng = np.random.default_rng(5)
    n, g, s = 8, 28, 50
    glimpse = _c(rng.uniform(0.05, 1.0, (n, g, g)))  # decoder-like: never 0
    scale, shift = _c(rng.uniform(0.25, 0.6, n)), _c(rng.uniform(-0.4, 0.4, (n, 2)))
    out = T.render_glimpse(glimpse, scale, shift, s, "four_gathers").numpy()
    hard = T.render_glimpse(glimpse, scale, shift, s, "hard").numpy()
    inv = tf.math.divide_no_nan(1.0, scale)

    def inside(axis):  # [n, S]: 0 <= source position < G - 1 (float32, as the sampler)
        pos = T._source_pixels(s, g, inv, -shift[:, axis] / scale).numpy()
        return (pos >= 0) & (pos < g - 1)

    col_in, row_in = inside(0), inside(1)
    for k in range(n):
        rows_out = ~row_in[k]
        assert np.all(out[k][rows_out] == 0.0)  # above, below and the corners: exact zeros
        band = out[k][np.ix_(row_in[k], ~col_in[k])]  # left and right of the box
        assert np.all(np.abs(band) < 2e-5)
        assert np.mean(band > 0) > 0.1 and np.mean(band < 0) > 0.1  # both signs, often
    assert np.all(hard[~(row_in[:, :, None] & col_in[:, None, :])] == 0.0)


@pytest.mark.parametrize("graph", [False, True])
def test_band_pixels_pass_rounding_level_gradients_the_exact_sampler_none(graph):
    # A BCE-sized upstream gradient (1e8, as 1 / (r + 1e-10) under ink) on the residue pixels
    # beside the box: the four terms cancel only up to rounding in the backward pass too, so a
    # rounding-level part of it reaches the box's horizontal shift and its scale and the
    # glimpse's edge columns (the only ones the band reads); the vertical shift's terms cancel
    # exactly there in the rendering's order (RENDER_ORDER); the exact sampler passes nothing.
    rng = np.random.default_rng(10)
    n, g, s = 8, 28, 50
    glimpse = _c(rng.uniform(0.05, 1.0, (n, g, g)))
    scale, shift = _c(rng.uniform(0.25, 0.6, n)), _c(rng.uniform(-0.4, 0.4, (n, 2)))
    out = T.render_glimpse(glimpse, scale, shift, s, "four_gathers").numpy()
    hard = T.render_glimpse(glimpse, scale, shift, s, "hard").numpy()
    probe = _c(((hard == 0) & (out != 0)) * 1e8)
    grads = {}
    for edge in ("four_gathers", "hard"):
        def fn(gl, sc, sh, edge=edge):
            with tf.GradientTape() as tape:
                tape.watch([gl, sc, sh])
                value = tf.reduce_sum(T.render_glimpse(gl, sc, sh, s, edge) * probe)
            return tape.gradient(value, [gl, sc, sh])
        run = tf.function(fn) if graph else fn
        grads[edge] = [x.numpy() for x in run(glimpse, scale, shift)]
    for x in grads["hard"]:
        np.testing.assert_array_equal(x, 0.0)
    d_glimpse, d_scale, d_shift = grads["four_gathers"]
    assert np.all(d_scale != 0) and np.all(d_shift[:, 0] != 0)
    np.testing.assert_array_equal(d_shift[:, 1], 0.0)
    np.testing.assert_array_equal(d_glimpse[:, :, 1:-1], 0.0)
    edges = np.abs(d_glimpse[:, :, [0, -1]])
    assert edges.max() > 0 and edges.mean() < 1e8 * 1e-4  # rounding-level share of the probe


def test_equals_numpy_float32_original_bit_for_bit():
    rng = np.random.default_rng(6)
    n, h, w = 12, 20, 30
    images = rng.uniform(size=(n, h, w)).astype(np.float32)
    sx, sy = rng.uniform(0.1, 1.6, n).astype(f32), rng.uniform(0.1, 1.6, n).astype(f32)
    ox, oy = rng.uniform(-1.5, 1.5, n).astype(f32), rng.uniform(-1.5, 1.5, n).astype(f32)
    got = F.sample(_c(images), _c(sx), _c(sy), _c(ox), _c(oy), (7, 11)).numpy()
    want = _numpy_original(images, sx, sy, ox, oy, (7, 11))
    np.testing.assert_array_equal(got, want)
    assert np.mean(want != 0) > np.mean(T.sample_separable(
        _c(images), _c(sx), _c(sy), _c(ox), _c(oy), (7, 11), "hard").numpy() != 0)


def _render_inputs(seed, n=4, steps=3, g=28):
    rng = np.random.default_rng(seed)
    return (_c(rng.uniform(0.05, 1.0, (n, steps, g, g))), _c(rng.uniform(0.2, 1.0, (n, steps))),
            _c(rng.uniform(0.2, 0.7, (n, steps))), _c(rng.uniform(-0.9, 0.9, (n, steps, 2))))


def test_summed_canvas_is_the_step_by_step_running_sum():
    glimpses, weights, scale, shift = _render_inputs(7)
    got = T.render_glimpses_summed(glimpses, weights, scale, shift, 50, "four_gathers").numpy()
    canvas = np.zeros((4, 50, 50), np.float32)
    for t in range(3):  # the original: running_recon += z_pres * window_recon, in order
        rendered = T.render_glimpse(glimpses[:, t], scale[:, t], shift[:, t], 50, "four_gathers")
        canvas = canvas + weights.numpy()[:, t, None, None] * rendered.numpy()
    np.testing.assert_array_equal(got, canvas)
    assert np.mean((got != 0) & (np.abs(got) < 1e-4)) > 0.02  # residues survive the sum


def test_steps_a_test_pass_did_not_execute_leave_the_canvas_as_it_was():
    """A test pass that stops early records zeros for the steps after it (scale 0, weight 0):
    they add exactly nothing, as the original's masked sum, and no 0 * NaN."""
    glimpses, weights, scale, shift = _render_inputs(7)
    executed = T.render_glimpses_summed(glimpses[:, :2], weights[:, :2], scale[:, :2],
                                        shift[:, :2], 50, "four_gathers").numpy()
    stopped = T.render_glimpses_summed(
        tf.concat([glimpses[:, :2], tf.zeros_like(glimpses[:, 2:])], 1),
        tf.concat([weights[:, :2], tf.zeros_like(weights[:, 2:])], 1),
        tf.concat([scale[:, :2], tf.zeros_like(scale[:, 2:])], 1),
        tf.concat([shift[:, :2], tf.zeros_like(shift[:, 2:])], 1), 50, "four_gathers").numpy()
    assert np.isfinite(stopped).all()
    np.testing.assert_array_equal(stopped, executed)


def test_a_stopped_step_at_a_tiny_scale_adds_nothing():
    """A step that ran after its item stopped (weight 0) may hold any scale: at s = 1e-24 the
    positions overflow and its rendering is NaN; the original's mask keeps the canvas finite."""
    glimpses, weights, scale, shift = _render_inputs(7)
    tiny = tf.concat([scale[:, :2], tf.fill([4, 1], 1e-24)], 1)
    stopped = tf.concat([weights[:, :2], tf.zeros([4, 1])], 1)
    assert not np.isfinite(T.render_glimpse(glimpses[:, 2], tiny[:, 2], shift[:, 2], 50,
                                            "four_gathers").numpy()).all()
    got = T.render_glimpses_summed(glimpses, stopped, tiny, shift, 50, "four_gathers").numpy()
    want = T.render_glimpses_summed(glimpses[:, :2], weights[:, :2], scale[:, :2],
                                    shift[:, :2], 50, "four_gathers").numpy()
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("mode", ["graph", "xla"])
def test_eager_graph_and_xla_agree_bit_for_bit(mode):
    # XLA would fuse a product and its sum into one multiply-add and grappler round 1 / s
    # differently: the module fences both. Each sampler is traced on its own: grappler may
    # re-associate arithmetic it finds around a sampler in a larger graph (the original's graph
    # meets the same optimizer).
    glimpses, weights, scale, shift = _render_inputs(8)
    images = _c(np.random.default_rng(8).uniform(size=(4, 50, 50)))
    beyond = shift[:, 0] * 1.3  # windows partly outside the image

    def canvas(glimpses, weights, scale, shift):
        return T.render_glimpses_summed(glimpses, weights, scale, shift, 50, "four_gathers")

    def window(images, scale, beyond):
        return T.extract_glimpse(images, scale, beyond, 28, "four_gathers")

    for fn, args in ((canvas, (glimpses, weights, scale, shift)),
                     (window, (images, scale[:, 0], beyond))):
        got = tf.function(fn, jit_compile=(mode == "xla"))(*args)
        np.testing.assert_array_equal(got.numpy(), fn(*args).numpy())


# ----------------------------------------------------------------- the original's gradient

def _box_rows_cols(scale, shift, s, g):
    """[n, S] masks: canvas rows / columns whose source position lies inside the glimpse."""
    inv = tf.math.divide_no_nan(1.0, scale)

    def inside(axis):
        pos = T._source_pixels(s, g, inv, -shift[:, axis] / scale).numpy()
        return (pos >= 0) & (pos < g - 1)
    return inside(1), inside(0)


@pytest.mark.parametrize("order", [F.RENDER_ORDER, F.EXTRACT_ORDER])
def test_the_gradient_order_decides_which_uncovered_pixels_reach_the_box(order):
    """A huge upstream gradient (the BCE's 1e10 at an uncovered ink pixel) on the pixels above
    and below a rendered box, where the output is exactly 0: with the rendering's order
    (c, d, a, b at x) the four terms of x's gradient cancel exactly there; with the extraction's
    (a, d, b, c) they leave a rounding residue, and the box feels those pixels."""
    rng = np.random.default_rng(12)
    n, g, s = 6, 28, 50
    glimpse = _c(rng.uniform(0.05, 1.0, (n, g, g)))
    scale, shift = _c(rng.uniform(0.25, 0.6, n)), _c(rng.uniform(-0.4, 0.4, (n, 2)))
    rows_in, cols_in = _box_rows_cols(scale, shift, s, g)
    above_below = _c((~rows_in[:, :, None] & cols_in[:, None, :]) * 1e10)  # [n, S, S]
    zeros = tf.zeros_like(scale)
    theta = F._theta(((tf.math.divide_no_nan(1.0, scale), zeros,
                       tf.math.divide_no_nan(-shift[:, 0], scale)),
                      (zeros, tf.math.divide_no_nan(1.0, scale),
                       tf.math.divide_no_nan(-shift[:, 1], scale))))
    with tf.GradientTape() as tape:
        tape.watch(theta)
        out = F.sample_theta(glimpse, theta, (s, s), order)
        value = tf.reduce_sum(out * above_below)
    assert np.all(out.numpy()[above_below.numpy() > 0] == 0.0)
    d_x_row = tape.gradient(value, theta).numpy()[:, 0]  # x's row of theta: [n, 3]
    if order == F.RENDER_ORDER:
        np.testing.assert_array_equal(d_x_row, 0.0)
    else:
        assert np.all(np.abs(d_x_row).max(axis=1) > 1.0)


def _numpy_position_gradient(g_out, images, x, y, order):
    """x's gradient of sum(g_out * out) term by term in float32, the terms added left to right
    in ``order`` (a, b, c, d: the terms of wa, wb, wc, wd). Flat [N*P] inputs."""
    n, h, w = images.shape
    x0 = np.clip(np.floor(x).astype(np.int64), 0, w - 1)
    x1 = np.clip(np.floor(x).astype(np.int64) + 1, 0, w - 1)
    y0 = np.clip(np.floor(y).astype(np.int64), 0, h - 1)
    y1 = np.clip(np.floor(y).astype(np.int64) + 1, 0, h - 1)
    b = np.repeat(np.arange(n), x.size // n)
    ia, ib, ic, id_ = (images[b, yy, xx] for yy, xx in ((y0, x0), (y1, x0), (y0, x1), (y1, x1)))
    x0f, x1f, y0f, y1f = (v.astype(f32) for v in (x0, x1, y0, y1))
    terms = {"a": -((g_out * ia) * (y1f - y)), "b": -((g_out * ib) * (y - y0f)),
             "c": (g_out * ic) * (y1f - y), "d": (g_out * id_) * (y - y0f)}
    total = terms[order[0]]
    for key in order[1:]:
        total = (total + terms[key]).astype(f32)
    return total


@pytest.mark.parametrize("order", [F.RENDER_ORDER, F.EXTRACT_ORDER])
def test_position_gradient_equals_the_terms_added_in_order_bit_for_bit(order):
    rng = np.random.default_rng(13)
    n, g, out_hw = 5, 9, (11, 13)
    images = rng.uniform(0.05, 1.0, (n, g, g)).astype(f32)
    x = _c(rng.uniform(-3.0, g + 2.0, n * 143))  # inside and outside the source, [N*P]
    y = _c(rng.uniform(-3.0, g + 2.0, n * 143))
    g_out = rng.normal(size=n * 143).astype(f32) * f32(1e8)
    corners = [tf.cast(c, tf.float32) for c in (*F._corner(x, g), *F._corner(y, g))]
    x0f, x1f, y0f, y1f = corners[0], corners[1], corners[2], corners[3]
    with tf.GradientTape() as tape:
        tape.watch(x)
        wa, wb, wc, wd = F._weights(x, y, x0f, x1f, y0f, y1f, order)
        b = np.repeat(np.arange(n), 143)
        pick = lambda yy, xx: _c(images[b, yy.numpy().astype(int), xx.numpy().astype(int)])
        ia, ib, ic, id_ = (pick(yy, xx) for yy, xx in ((y0f, x0f), (y1f, x0f), (y0f, x1f), (y1f, x1f)))
        value = tf.reduce_sum(_c(g_out) * (wa * ia + wb * ib + wc * ic + wd * id_))
    got = tape.gradient(value, x).numpy()
    want = _numpy_position_gradient(g_out, images, x.numpy(), y.numpy(), order[0])
    np.testing.assert_array_equal(got, want)


def test_image_gradient_is_one_segment_sum_in_gather_order():
    """The images' gradient adds, per source pixel, the a, b, c then d gathers' terms, each in
    output order (the sum of the four gathers' sparse gradients, as the original's), bit for
    bit; outside the box those terms cancel only up to rounding."""
    rng = np.random.default_rng(14)
    n, g, s = 3, 28, 50
    glimpse = _c(rng.uniform(0.05, 1.0, (n, g, g)))
    scale, shift = _c(rng.uniform(0.25, 0.6, n)), _c(rng.uniform(-0.4, 0.4, (n, 2)))
    probe = rng.normal(size=(n, s, s)).astype(f32) * f32(1e9)
    with tf.GradientTape() as tape:
        tape.watch(glimpse)
        value = tf.reduce_sum(F.render_glimpse(glimpse, scale, shift, s) * probe)
    got = tape.gradient(value, glimpse).numpy().reshape(-1)
    zeros = tf.zeros_like(scale)  # the sampler's own positions: the same ops
    theta = F._theta(((tf.math.divide_no_nan(1.0, scale), zeros,
                       tf.math.divide_no_nan(-shift[:, 0], scale)),
                      (zeros, tf.math.divide_no_nan(1.0, scale),
                       tf.math.divide_no_nan(-shift[:, 1], scale))))
    grid = tf.tile(F._target_grid(s, s)[None], [n, 1, 1])
    source = tf.matmul(theta, grid).numpy()  # [n, 2, P]
    x = (source[:, 0].reshape(-1) + f32(1)) * (f32(g) - f32(1.001)) / f32(2)
    y = (source[:, 1].reshape(-1) + f32(1)) * (f32(g) - f32(1.001)) / f32(2)
    x0 = np.clip(np.floor(x).astype(np.int64), 0, g - 1)
    x1 = np.clip(np.floor(x).astype(np.int64) + 1, 0, g - 1)
    y0 = np.clip(np.floor(y).astype(np.int64), 0, g - 1)
    y1 = np.clip(np.floor(y).astype(np.int64) + 1, 0, g - 1)
    base = np.repeat(np.arange(n) * g * g, s * s)
    up = probe.reshape(-1)
    x0f, x1f, y0f, y1f = (v.astype(f32) for v in (x0, x1, y0, y1))
    want = np.zeros(n * g * g, f32)
    for weight, yy, xx in (((x1f - x) * (y1f - y), y0, x0), ((x1f - x) * (y - y0f), y1, x0),
                           ((x - x0f) * (y1f - y), y0, x1), ((x - x0f) * (y - y0f), y1, x1)):
        np.add.at(want, base + yy * g + xx, up * weight)  # in output order, one at a time
    np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------- inside: the exact sampler

def _value_and_grads(fn, inputs, probe):
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        out = fn(*inputs)
        value = tf.reduce_sum(out * probe)
    return [out] + tape.gradient(value, inputs)


def test_inside_the_source_equals_the_exact_sampler_values_and_gradients():
    rng = np.random.default_rng(9)
    n, s, g = 16, 50, 28
    canvas, glimpse = _c(rng.uniform(size=(n, s, s))), _c(rng.uniform(size=(n, g, g)))
    scale = _c(rng.uniform(0.2, 0.5, n))
    shift = _c(rng.uniform(-1, 1, (n, 2)) * (0.95 - scale.numpy()[:, None]))  # box on canvas
    inputs, probe = [canvas, scale, shift], _c(rng.normal(size=(n, g, g)))
    got, want = (_value_and_grads(lambda c, sc, sh, e=e: T.extract_glimpse(c, sc, sh, g, e),
                                  inputs, probe) for e in ("four_gathers", "hard"))
    assert np.all(want[0].numpy() != 0)  # every sample inside
    for a, b in zip(got, want):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)
    # rendering: probe only the canvas pixels whose source is inside the glimpse
    hard = T.render_glimpse(glimpse, scale, shift, s, "hard").numpy()
    probe = _c(rng.normal(size=(n, s, s)) * (hard != 0))
    inputs = [glimpse, scale, shift]
    got, want = (_value_and_grads(lambda gl, sc, sh, e=e: T.render_glimpse(gl, sc, sh, s, e),
                                  inputs, probe) for e in ("four_gathers", "hard"))
    inside = hard != 0
    np.testing.assert_allclose(got[0].numpy()[inside], want[0].numpy()[inside], atol=1e-5)
    assert np.all(np.abs(got[0].numpy()[~inside]) < 1e-5)  # only residues outside
    for a, b in zip(got[1:], want[1:]):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-3)
        assert np.abs(b.numpy()).max() > 0.1


# ----------------------------------------------------------------- the switch

def test_quirks_sampler_edge_values():
    assert Quirks().sampler_edge == "four_gathers"  # the original's arithmetic is the default
    assert set(SAMPLER_EDGES) == {"four_gathers", *T.SEPARABLE_EDGES}
    for edge in SAMPLER_EDGES:
        assert Quirks(sampler_edge=edge).sampler_edge == edge
    with pytest.raises(ValueError, match="'four_gathers', 'hard', 'zero_pad'"):
        Quirks(sampler_edge="reflect")
    with pytest.raises(ValueError, match="not separable"):  # the separable sampler refuses it
        T.interpolation_matrix(_c([[0.5]]), 4, "four_gathers")
    with pytest.raises(ValueError, match="not one of"):
        T.extract_glimpse(_c(np.zeros((1, 8, 8))), _c([0.5]), _c([[0.0, 0.0]]), 4, "reflect")
