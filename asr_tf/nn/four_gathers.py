"""The original code's sampler arithmetic: quirk Q30, ``Quirks.sampler_edge = 'four_gathers'``.

The original samples with the classic TF spatial transformer (``air/transformer.py``, an
Apache-2.0 copy, docs/ORIGINAL.md §3.1). Per output pixel, in float32 and one op (one rounding)
at a time:

  x_s = s_x * x_t + o_x                  theta @ [x_t, y_t, 1]; the y_t term is 0 * y_t
  x   = (x_s + 1) * (W - 1.001) / 2      source pixels; y likewise with H
  x0  = clip(int(floor(x)), 0, W-1),  x1 = clip(int(floor(x)) + 1, 0, W-1)   (y0, y1 likewise)
  wa = (x1-x)(y1-y)   wb = (x1-x)(y-y0)   wc = (x-x0)(y1-y)   wd = (x-x0)(y-y0)   (clipped corners)
  out = ((wa*Ia + wb*Ib) + wc*Ic) + wd*Id     four flat gathers Ia=U[y0,x0], Ib=U[y1,x0],
                                              Ic=U[y0,x1], Id=U[y1,x1], summed left to right

Inside the source this is bilinear interpolation, the same values as the exact sampler
(:mod:`asr_tf.nn.transformer`, 'hard') up to rounding. Outside, the clipped corners coincide and
the terms cancel in exact arithmetic, but not always in float32:

* x outside, y inside (left and right of a rendered box): x0 = x1, so wc = -wa, wd = -wb,
  Ic = Ia, Id = Ib and out = ((A + B) - A) - B with A = wa*Ia, B = wb*Ib. That is the rounding
  error of A + B, up to half an ulp of A + B: tiny residues of either sign (positive and
  negative equally often), up to a few 1e-6 where |x| is large.
* y outside (above and below a box, and the corners): y0 = y1, so B = -A and D = -C, and
  out = ((A - A) + C) - C = 0 exactly.

The canvas of a glimpse loop is summed step by step, ``canvas += z * rendered``, starting from
zeros; the residues of every step are kept. The reconstruction BCE divides by (r + 1e-10), so
a positive residue r ~ 1e-7 under ink has a BCE gradient ~1e7 (a negative one is clipped to 0,
no gradient), which the sampler's own rounding-level gradients pass on: the original's boxes
get large gradients from their left and right borders, where the exact sampler gives none.

Every rounding step above is kept in eager, graph and XLA execution alike (tests check the
three agree bit for bit):

* XLA:CPU contracts a product followed by a sum into one fused multiply-add (one rounding
  instead of two), which would change the residues (and leave some above and below the box
  too). The products that feed a sum are therefore fenced (:func:`_fenced`): a select that
  keeps the value but hides the multiply from the contraction (XLA's optimization barrier
  does not: it is removed before fusion).
* Grappler regroups chains of sums (``(x + o) + 1`` as ``x + (o + 1)``); the fences on
  partial sums keep the original's order.
* Grappler's constant folding turns ``1 / s`` into a reciprocal that is 1 ulp off for a third
  of the values; ``divide_no_nan`` keeps the exact division (it gives 0, not inf, at s = 0,
  where the original's positions are inf/NaN anyway).
* The target grid is a constant computed as the original's LinSpace kernel (TF 1.12):
  start + step * i in float32, step = (stop - start) / (num - 1).

Gradients are TensorFlow's autodiff of these ops (the fences pass gradients through). As in
the original, the positions are per output pixel and every weight has its own subtractions, so
a position's gradient sums its four terms pixel by pixel, where they cancel only up to
rounding. The sums run in this TF's (and XLA's) order, not TF 1.12's: only the forward values
are the original's bit for bit. The gathers are one-hot products (the same values for finite
images; a NaN or inf pixel would spread to its whole row and column), whose gradient is two
products instead of a scatter (slow on XLA:CPU).
"""
import numpy as np
import tensorflow as tf


@tf.autograph.experimental.do_not_convert  # autograph would wrap the custom gradient
@tf.custom_gradient
def _fenced(x):
    """``x`` unchanged (NaN stays NaN), as a select that XLA:CPU cannot contract with the sum it
    feeds: a product is rounded to float32 on its own, as in the original. Gradient: identity."""
    return tf.where(tf.math.is_nan(x), np.float32(np.nan), x), lambda dy: dy


def _linspace(num):
    """The original's grid, linspace(-1, 1, num), as TF 1.12's LinSpace kernel computes it:
    [num] float32 -1 + step * i with step = 2 / (num - 1), every op rounded to float32."""
    step = np.float32(2.0) / np.float32(num - 1)
    return tf.constant(np.float32(-1.0) + step * np.arange(num, dtype=np.float32))


def _source_pixels(target_px, source_px, scale, offset):
    """Source pixel coordinates along one axis, rounded as the original's float32 ops.

    Args:
      target_px: int, output length along the axis.
      source_px: int, input length along the axis.
      scale: [N] affine diagonal entry; offset: [N] affine translation.
    Returns:
      [N, target_px] source positions in pixels, x = (s * x_t + o + 1) * (W - 1.001) / 2.
    """
    grid = _linspace(target_px)  # [P], the original's meshgrid values
    src = _fenced(_fenced(scale[:, None] * grid[None, :]) + offset[:, None])  # [N, P] normalised
    width = tf.constant(float(source_px), tf.float32) - tf.constant(1.001, tf.float32)
    return (src + 1.0) * width / 2.0


def _corners(pos_px, source_px):
    """Clipped integer corners (the original clips after the int cast) and their floats.

    Args:
      pos_px: [...] source positions in pixels; source_px: int source length.
    Returns:
      (lo, hi) int32 and (lo_f, hi_f) float32, each shaped like ``pos_px``.
    """
    lo = tf.cast(tf.floor(pos_px), tf.int32)
    hi = lo + 1
    lo = tf.clip_by_value(lo, 0, source_px - 1)
    hi = tf.clip_by_value(hi, 0, source_px - 1)
    return lo, hi, tf.cast(lo, tf.float32), tf.cast(hi, tf.float32)


def _picked(images, rows, cols):
    """The gathered values ``images[n, rows[n, i], cols[n, j]]``: [N, R, C] from images
    [N, H, W], rows [N, R] and cols [N, C] (int32), as one-hot products: 1 * U[i, j] plus exact
    zeros, the gathered value bit for bit when the images are finite."""
    rows = tf.one_hot(rows, images.shape[1])  # [N, R, H]
    cols = tf.one_hot(cols, images.shape[2])  # [N, C, W]
    return tf.matmul(rows, tf.matmul(images, cols, transpose_b=True))


def sample(images, scale_x, scale_y, offset_x, offset_y, out_hw):
    """The original's bilinear sampler under an axis-aligned affine (see the module docstring).

    As the original, the positions are per output pixel (their gradient sums the four weights'
    terms pixel by pixel) and the four weights and products are formed one by one. The four
    gathers U[y0, x0], U[y1, x0], U[y0, x1], U[y1, x1] come as one block array, rows y0 then y1
    and columns x0 then x1: [[Ia, Ic], [Ib, Id]] (the same values).

    Args:
      images: [N, H, W] source images.
      scale_x, scale_y, offset_x, offset_y: [N] affine entries, A = [[sx, 0, ox], [0, sy, oy]].
      out_hw: (H', W') output size.
    Returns:
      [N, H', W'] samples, with the original's float32 residues outside the source.
    """
    src_h, src_w = images.shape[1], images.shape[2]
    h, w = out_hw
    x = _source_pixels(w, src_w, scale_x, offset_x)  # [N, W']
    y = _source_pixels(h, src_h, scale_y, offset_y)  # [N, H']
    x0, x1, x0_f, x1_f = _corners(x, src_w)  # [N, W'] each
    y0, y1, y0_f, y1_f = _corners(y, src_h)  # [N, H'] each
    picked = _picked(images, tf.concat([y0, y1], 1), tf.concat([x0, x1], 1))  # [N, 2H', 2W']
    shape = tf.stack([tf.shape(images)[0], h, w])
    xx = tf.broadcast_to(x[:, None, :], shape)  # [N, H', W'], the original's flat x
    yy = tf.broadcast_to(y[:, :, None], shape)
    x0_f, x1_f = x0_f[:, None, :], x1_f[:, None, :]  # [N, 1, W']
    y0_f, y1_f = y0_f[:, :, None], y1_f[:, :, None]  # [N, H', 1]
    wa = (x1_f - xx) * (y1_f - yy)  # [N, H', W'] each
    wb = (x1_f - xx) * (yy - y0_f)
    wc = (xx - x0_f) * (y1_f - yy)
    wd = (xx - x0_f) * (yy - y0_f)
    a = _fenced(wa * picked[:, :h, :w])  # wa * Ia
    b = _fenced(wb * picked[:, h:, :w])  # wb * Ib
    c = _fenced(wc * picked[:, :h, w:])  # wc * Ic
    d = _fenced(wd * picked[:, h:, w:])  # wd * Id
    return _fenced(_fenced(a + b) + c) + d  # the original's add_n, left to right


def extract_glimpse(canvas, scale, shift, glimpse_px):
    """Cuts the window [x - s, x + s] x [y - s, y + s] out of each canvas (theta [s, 0, x]).

    Args:
      canvas: [N, S, S]; scale: [N]; shift: [N, 2] (x = column, y = row); glimpse_px: int G.
    Returns:
      [N, G, G] glimpses.
    """
    return sample(canvas, scale, scale, shift[:, 0], shift[:, 1], (glimpse_px, glimpse_px))


def render_glimpse(glimpse, scale, shift, canvas_px):
    """Pastes each glimpse onto an S x S canvas with the original's inverse theta
    [1/s, 0, -x/s] (a division, as the original).

    Args:
      glimpse: [N, G, G]; scale: [N]; shift: [N, 2]; canvas_px: int S.
    Returns:
      [N, S, S] canvases (residues left and right of the box).
    """
    # divide_no_nan: the exact division also in graph mode (module docstring), and 0, not NaN,
    # at s = 0: the records of glimpse steps a test pass did not execute (weight 0), which the
    # original never renders, would otherwise put 0 * NaN into the canvas.
    inv = tf.math.divide_no_nan(1.0, scale)
    return sample(glimpse, inv, inv, tf.math.divide_no_nan(-shift[:, 0], scale),
                  tf.math.divide_no_nan(-shift[:, 1], scale), (canvas_px, canvas_px))


def render_glimpses_summed(glimpses, weights, scale, shift, canvas_px):
    """The original's running canvas: zeros, then ``canvas += weights[:, k] * rendered_k`` for
    k = 0 .. K-1 in order, each product rounded on its own.

    Args:
      glimpses: [B, K, G, G]; weights: [B, K] (present * z_pres); scale: [B, K];
      shift: [B, K, 2]; canvas_px: int S.
    Returns:
      [B, S, S] canvases.
    """
    g, steps = glimpses.shape[-1], glimpses.shape[1]
    rendered = render_glimpse(tf.reshape(glimpses, [-1, g, g]), tf.reshape(scale, [-1]),
                              tf.reshape(shift, [-1, 2]), canvas_px)  # [B*K, S, S]
    rendered = tf.reshape(rendered, [-1, steps, canvas_px, canvas_px])  # [B, K, S, S]
    # The original masks a stopped item's step out (where(stop_sum < tau, z * rendered, 0)):
    # its glimpse may sit at any scale, and 1 / s of a tiny one overflows the positions to
    # inf and the rendering to NaN, which a product with the weight 0 would keep.
    weights = weights[..., None, None]  # [B, K, 1, 1]
    terms = tf.where(weights != 0, _fenced(weights * rendered), 0.0)  # [B, K, S, S]
    canvas = tf.zeros_like(terms[:, 0])  # [B, S, S]
    for k in range(steps):
        canvas = _fenced(canvas + terms[:, k])
    return canvas
