"""Spatial transformer (docs/ORIGINAL.md §3.1, quirk Q30): separable sampler vs the gather
reference, hard and zero_pad edges, and hand-computed pixels."""
import numpy as np
import pytest
import tensorflow as tf

from asr_tf.nn import transformer as T


def _f32(a):
    return tf.constant(np.asarray(a, np.float32))


def _axis_aligned_theta(sx, sy, ox, oy):
    z = np.zeros_like(sx)
    return np.stack([np.stack([sx, z, ox], -1), np.stack([z, sy, oy], -1)], 1).astype(np.float32)


# ----------------------------------------------------------------- separable == gather (hard)

def test_separable_equals_gather_random_affines():
    rng = np.random.default_rng(0)
    n, h, w = 64, 20, 30  # H != W and H' != W' so a swapped axis shows
    images = rng.uniform(size=(n, h, w)).astype(np.float32)
    sx, sy = rng.uniform(0.1, 1.6, n), rng.uniform(0.1, 1.6, n)
    ox, oy = rng.uniform(-1.5, 1.5, n), rng.uniform(-1.5, 1.5, n)  # many boxes partly outside
    out_hw = (7, 11)
    sep = T.sample_separable(_f32(images), _f32(sx), _f32(sy), _f32(ox), _f32(oy), out_hw, "hard")
    ref = T.sample_gather(_f32(images), _axis_aligned_theta(sx, sy, ox, oy), out_hw)
    assert sep.shape == (n, 7, 11)
    np.testing.assert_allclose(sep.numpy(), ref.numpy(), atol=1e-5)
    # the draw really has partly-outside boxes: some outputs are exactly 0, most are not
    frac_zero = np.mean(ref.numpy() == 0.0)
    assert 0.05 < frac_zero < 0.9


def test_extract_and_render_match_gather_with_glimpse_thetas():
    rng = np.random.default_rng(1)
    n, s, g = 16, 50, 28
    canvas = rng.uniform(size=(n, s, s)).astype(np.float32)
    glimpse = rng.uniform(size=(n, g, g)).astype(np.float32)
    scale = _f32(rng.uniform(0.15, 0.9, n))
    shift = _f32(rng.uniform(-1.0, 1.0, (n, 2)))
    ext = T.extract_glimpse(_f32(canvas), scale, shift, g, "hard")
    ref = T.sample_gather(_f32(canvas), T.glimpse_theta(scale, shift), (g, g))
    np.testing.assert_allclose(ext.numpy(), ref.numpy(), atol=1e-5)
    ren = T.render_glimpse(_f32(glimpse), scale, shift, s, "hard")
    ref = T.sample_gather(_f32(glimpse), T.inverse_theta(scale, shift), (s, s))
    np.testing.assert_allclose(ren.numpy(), ref.numpy(), atol=1e-5)


def test_inverse_theta_is_the_inverse():
    scale = _f32([0.3, 0.8])
    shift = _f32([[0.2, -0.5], [-0.7, 0.1]])
    a = T.glimpse_theta(scale, shift).numpy()
    b = T.inverse_theta(scale, shift).numpy()
    for k in range(2):
        fa = np.vstack([a[k], [0, 0, 1]])
        fb = np.vstack([b[k], [0, 0, 1]])
        np.testing.assert_allclose(fa @ fb, np.eye(3), atol=1e-6)


# ----------------------------------------------------------------- hard edges (Q30)

def test_transposed_interpolation_matrix_is_the_transpose():
    pos = _f32([[-0.5, 0.0, 1.25, 2.999, 3.2], [0.5, 1.5, 2.5, -2.0, 4.0]])
    for edge in ("hard", "zero_pad"):
        w = T.interpolation_matrix(pos, 4, edge).numpy()
        w_t = T.interpolation_matrix(pos, 4, edge, transposed=True).numpy()
        assert w.shape == (2, 5, 4) and w_t.shape == (2, 4, 5)
        np.testing.assert_array_equal(w_t, np.transpose(w, [0, 2, 1]))


def test_hard_interpolation_rows_outside_and_at_last_index():
    w = 4
    pos = _f32([[-1.5, -0.5, 0.0, 1.5, 2.999, 3.0, 3.5, 7.0]])
    m = T.interpolation_matrix(pos, w, "hard").numpy()[0]  # [8, 4]
    expected = np.zeros((8, 4), np.float32)
    expected[2, 0] = 1.0                       # p = 0: exactly the first pixel
    expected[3, 1:3] = 0.5                     # p = 1.5: half/half
    expected[4, 2], expected[4, 3] = 0.001, 0.999  # p = 2.999
    # rows 0, 1 (p < 0), 5 (p == W-1 exactly), 6, 7 (p > W-1): all zero
    np.testing.assert_allclose(m, expected, atol=1e-6)
    assert np.all(m[[0, 1, 5, 6, 7]] == 0.0)


def test_hard_sampler_exactly_zero_outside_source():
    # ones image: any in-range sample is 1 (bilinear weights sum to 1), out of range is exactly 0
    images = tf.ones([1, 6, 6])
    # x_s = 1.5 g - 0.2 in [-1.7, 1.3]: p = (x_s + 1) * 4.999 / 2 from -1.75 to 5.75
    out = T.sample_separable(images, _f32([1.5]), _f32([0.5]), _f32([-0.2]), _f32([0.0]),
                             (5, 9), "hard").numpy()[0]
    grid = np.linspace(-1, 1, 9)
    px = (1.5 * grid - 0.2 + 1.0) * (6 - 1.001) / 2.0
    for j, p in enumerate(px):
        if 0.0 <= p < 5.0:
            np.testing.assert_allclose(out[:, j], 1.0, atol=1e-6)
        else:
            assert np.all(out[:, j] == 0.0), (j, p)
    assert np.sum(px < 0) == 2 and np.sum(px >= 5.0) == 1  # outside columns on both sides


# ----------------------------------------------------------------- hand-computed pixels

def test_known_affine_on_linear_4x4_image():
    # U[r, c] = 10 r + c is linear, so bilinear interpolation inside [0, 3) is exact:
    # out = 10 p_y + p_x.
    img = (10.0 * np.arange(4)[:, None] + np.arange(4)[None, :]).astype(np.float32)
    out = T.sample_separable(_f32(img[None]), _f32([0.5]), _f32([0.25]), _f32([0.1]),
                             _f32([-0.3]), (3, 3), "hard").numpy()[0]
    # grid (-1, 0, 1); x_s = 0.5 g + 0.1 = (-0.4, 0.1, 0.6); p_x = (x_s + 1) * 2.999 / 2
    # = (0.89970, 1.649450, 2.39920). y_s = 0.25 g - 0.3 = (-0.55, -0.3, -0.05);
    # p_y = (0.674775, 1.049650, 1.424525).
    p_x = np.array([0.8997, 1.64945, 2.3992])
    p_y = np.array([0.674775, 1.04965, 1.424525])
    np.testing.assert_allclose(out, 10.0 * p_y[:, None] + p_x[None, :], atol=1e-4)
    assert out[0, 0] == pytest.approx(7.64745, abs=1e-4)
    assert out[2, 2] == pytest.approx(16.64445, abs=1e-4)


def test_known_affine_single_pixel_tent():
    # a single 1 at (row 1, col 2): out = tent(p_y - 1) * tent(p_x - 2), tent(d) = max(0, 1 - |d|)
    img = np.zeros((4, 4), np.float32)
    img[1, 2] = 1.0
    out = T.sample_separable(_f32(img[None]), _f32([0.5]), _f32([0.25]), _f32([0.1]),
                             _f32([-0.3]), (3, 3), "hard").numpy()[0]
    # p_x = (0.8997, 1.64945, 2.3992) -> tents (0, 0.64945, 0.6008)
    # p_y = (0.674775, 1.04965, 1.424525) -> tents (0.674775, 0.95035, 0.575475)
    tx = np.array([0.0, 0.64945, 0.6008])
    ty = np.array([0.674775, 0.95035, 0.575475])
    np.testing.assert_allclose(out, ty[:, None] * tx[None, :], atol=1e-5)


def test_identity_transform_up_to_1001_detail():
    rng = np.random.default_rng(2)
    h, w = 10, 12
    img = rng.uniform(size=(h, w)).astype(np.float32)
    out = T.sample_separable(_f32(img[None]), _f32([1.0]), _f32([1.0]), _f32([0.0]), _f32([0.0]),
                             (h, w), "hard").numpy()[0]
    # p_j = j (W - 1.001) / (W - 1) = j - d_j with d_j = 0.001 j / (W - 1): pixel j takes
    # (1 - d_j) of U[j] and d_j of U[j - 1].
    def mix(n):
        a = np.zeros((n, n))
        for j in range(n):
            d = 0.001 * j / (n - 1)
            a[j, j] = 1.0 - d
            if j > 0:
                a[j, j - 1] = d
        return a
    expected = mix(h) @ img @ mix(w).T
    np.testing.assert_allclose(out, expected, atol=1e-5)
    np.testing.assert_allclose(out, img, atol=2e-3)  # |d| <= 0.001 per axis, |U| <= 1
    assert not np.allclose(out, img, atol=1e-6)  # the 1.001 detail is there


# ----------------------------------------------------------------- zero_pad edges

def test_zero_pad_blends_with_zero_at_border():
    w = 4
    pos = _f32([[-0.25, 3.25, -1.5, 1.5]])
    m = T.interpolation_matrix(pos, w, "zero_pad").numpy()[0]
    expected = np.zeros((4, 4), np.float32)
    expected[0, 0] = 0.75  # p = -0.25: 0.25 on the zero at index -1, 0.75 on index 0
    expected[1, 3] = 0.75  # p = 3.25: 0.75 on index 3, 0.25 on the zero at index 4
    expected[3, 1:3] = 0.5
    np.testing.assert_allclose(m, expected, atol=1e-6)
    hard = T.interpolation_matrix(pos, w, "hard").numpy()[0]
    assert np.all(hard[:2] == 0.0)

    # through the sampler: a 4x4 image of 2s, output columns at p_x = -0.25 and 3.25
    # (x_s = p / 1.4995 - 1), rows at p_y = 1 (inside).
    xs0, xs1 = -0.25 / 1.4995 - 1.0, 3.25 / 1.4995 - 1.0
    sx, ox = (xs1 - xs0) / 2.0, (xs1 + xs0) / 2.0
    ys = 1.0 / 1.4995 - 1.0
    img = tf.fill([1, 4, 4], 2.0)
    out = T.sample_separable(img, _f32([sx]), _f32([0.0]), _f32([ox]), _f32([ys]), (1, 2),
                             "zero_pad").numpy()[0]
    np.testing.assert_allclose(out, [[1.5, 1.5]], atol=1e-5)  # 0.75 * 2
    out_hard = T.sample_separable(img, _f32([sx]), _f32([0.0]), _f32([ox]), _f32([ys]), (1, 2),
                                  "hard").numpy()[0]
    assert np.all(out_hard == 0.0)


def test_zero_pad_gives_shift_gradient_off_canvas_hard_does_not():
    # Canvas S = 10 with ink only in column 0. A tiny window (s = 0.05) centred at x = -1.1 samples
    # p_x = (x_s + 1) * 8.999 / 2 in [-0.675, -0.225]: left of the canvas, next to the ink.
    s_px, g = 10, 5
    canvas = np.zeros((1, s_px, s_px), np.float32)
    canvas[0, :, 0] = 1.0
    canvas = _f32(canvas)
    scale = _f32([0.05])
    grads, outs = {}, {}
    for edge in ("hard", "zero_pad"):
        shift = tf.Variable([[-1.1, 0.0]])
        with tf.GradientTape() as tape:
            out = T.extract_glimpse(canvas, scale, shift, g, edge)
            total = tf.reduce_sum(out)
        grads[edge] = tape.gradient(total, shift).numpy()[0]
        outs[edge] = out.numpy()[0]
    assert np.all(outs["hard"] == 0.0)
    np.testing.assert_array_equal(grads["hard"], [0.0, 0.0])
    # zero_pad: each pixel is (p_x + 1) * 1 (weight on column 0), so d out / d shift_x = 8.999 / 2
    grid = np.linspace(-1, 1, g)
    p_x = (0.05 * grid - 1.1 + 1.0) * (s_px - 1.001) / 2.0
    np.testing.assert_allclose(outs["zero_pad"], np.tile(p_x + 1.0, (g, 1)), atol=1e-5)
    assert grads["zero_pad"][0] == pytest.approx(g * g * (s_px - 1.001) / 2.0, rel=1e-4)
    assert grads["zero_pad"][0] > 0  # pulls the window right, onto the ink
    assert grads["zero_pad"][1] == pytest.approx(0.0, abs=1e-4)


def test_unknown_edge_mode_raises():
    with pytest.raises(ValueError):
        T.interpolation_matrix(_f32([[0.5]]), 4, "reflect")


# ----------------------------------------------------------------- round trip

@pytest.mark.parametrize("edge", ["hard", "zero_pad"])
def test_render_then_extract_returns_glimpse_interior(edge):
    g, s = 28, 50
    yy, xx = np.meshgrid(np.arange(g), np.arange(g), indexing="ij")
    blob = np.exp(-((yy - 13.5) ** 2 + (xx - 12.0) ** 2) / (2 * 5.0 ** 2)).astype(np.float32)
    scale = _f32([0.56, 0.4])
    shift = _f32([[0.1, -0.2], [-0.3, 0.35]])
    glimpse = _f32(np.stack([blob, blob.T]))
    canvas = T.render_glimpse(glimpse, scale, shift, s, edge)
    back = T.extract_glimpse(canvas, scale, shift, g, edge).numpy()
    inner = slice(2, g - 2)
    np.testing.assert_allclose(back[:, inner, inner], glimpse.numpy()[:, inner, inner], atol=0.03)
    # the canvas is empty outside the box: e.g. far corners
    c = canvas.numpy()
    assert np.all(c[:, :3, :3] == 0.0) and np.all(c[:, -3:, -3:] == 0.0)


# ----------------------------------------------------------------- summed rendering

@pytest.mark.parametrize("edge", ["hard", "zero_pad"])
def test_render_glimpses_summed_equals_sum_of_renderings(edge):
    rng = np.random.default_rng(3)
    n, steps, g, s = 5, 4, 28, 50
    glimpses = _f32(rng.uniform(size=(n, steps, g, g)))
    weights = _f32(rng.uniform(size=(n, steps)) * (rng.uniform(size=(n, steps)) > 0.3))
    scale = _f32(rng.uniform(0.15, 0.9, (n, steps)))
    shift = _f32(rng.uniform(-1.2, 1.2, (n, steps, 2)))  # some boxes partly off the canvas

    def summed(glimpses, weights, scale, shift):
        return T.render_glimpses_summed(glimpses, weights, scale, shift, s, edge)

    def one_by_one(glimpses, weights, scale, shift):
        return tf.add_n([weights[:, t, None, None]
                         * T.render_glimpse(glimpses[:, t], scale[:, t], shift[:, t], s, edge)
                         for t in range(steps)])

    args = (glimpses, weights, scale, shift)
    got, want = summed(*args), one_by_one(*args)
    assert got.shape == (n, s, s)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)
    assert np.mean(want.numpy() > 0) > 0.2  # something was rendered
    # the same gradients with respect to every input
    probe = _f32(rng.normal(size=(n, s, s)))
    grads = []
    for fn in (summed, one_by_one):
        with tf.GradientTape() as tape:
            tape.watch(args)
            value = tf.reduce_sum(fn(*args) * probe)
        grads.append(tape.gradient(value, args))
    for a, b in zip(*grads):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------- batched products

@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("kind", ["nn", "nt"])
def test_batched_matmul_values_and_gradients_match_tf_matmul(kind, jit):
    """The sampler's products (gradients with transposes copied behind a barrier) against
    tf.matmul's own gradient, eagerly and under XLA."""
    rng = np.random.default_rng(7)
    a = _f32(rng.normal(size=(3, 4, 5)))
    b = _f32(rng.normal(size=(3, 6, 5) if kind == "nt" else (3, 5, 6)))
    probe = _f32(rng.normal(size=(3, 4, 6)))
    ours = T.batched_matmul_nt if kind == "nt" else T.batched_matmul

    def value_and_grads(fn):
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            c = fn(a, b)
            value = tf.reduce_sum(c * probe)
        return (c,) + tuple(tape.gradient(value, [a, b]))

    run = tf.function(value_and_grads, jit_compile=True) if jit else value_and_grads
    got = run(ours)
    want = value_and_grads(lambda x, y: tf.matmul(x, y, transpose_b=(kind == "nt")))
    assert got[0].shape == (3, 4, 6)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=1e-5)
    # by hand for one entry: dc/da[0, 1, 2] = sum_p probe[0, 1, p] * b[0, 2, p] (nn: b[0, 2, :])
    b_rows = b.numpy()[0].T if kind == "nt" else b.numpy()[0]
    np.testing.assert_allclose(got[1].numpy()[0, 1, 2], probe.numpy()[0, 1] @ b_rows[2], rtol=1e-5)


def test_render_glimpses_summed_gradient_under_xla_matches_eager():
    rng = np.random.default_rng(4)
    n, steps, g, s = 4, 3, 28, 50
    args = (_f32(rng.uniform(size=(n, steps, g, g))), _f32(rng.uniform(size=(n, steps))),
            _f32(rng.uniform(0.2, 0.8, (n, steps))), _f32(rng.uniform(-0.8, 0.8, (n, steps, 2))))
    probe = _f32(rng.normal(size=(n, s, s)))

    def grads(*args):
        with tf.GradientTape() as tape:
            tape.watch(args)
            value = tf.reduce_sum(T.render_glimpses_summed(*args, s, "zero_pad") * probe)
        return tape.gradient(value, args)

    for x, y in zip(tf.function(grads, jit_compile=True)(*args), grads(*args)):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-4, atol=1e-4)
        assert np.abs(y.numpy()).max() > 0
