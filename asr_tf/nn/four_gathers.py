"""The original code's sampler, values and gradients: quirk Q30, ``Quirks.sampler_edge =
'four_gathers'``.

The original samples with the classic TF spatial transformer (its ``air/transformer.py``,
docs/ORIGINAL.md §3.1). This module builds the same TensorFlow ops in the same arrangement, so
that both its values and TensorFlow's gradient of it are the original's. Per output pixel, in
float32, one op (one rounding) at a time:

  [x_s, y_s] = theta @ [x_t, y_t, 1]     one batched product, [N, 2, 3] x [N, 3, P]
  x   = (x_s + 1) * (W - 1.001) / 2      source pixels; y likewise with H
  x0  = clip(int(floor(x)), 0, W-1),  x1 = clip(int(floor(x)) + 1, 0, W-1)   (y0, y1 likewise)
  wa = (x1-x)(y1-y)   wb = (x1-x)(y-y0)   wc = (x-x0)(y1-y)   wd = (x-x0)(y-y0)   (clipped corners)
  out = AddN(wa*Ia, wb*Ib, wc*Ic, wd*Id)  four gathers from the flattened batch of images,
                                          Ia=U[y0,x0], Ib=U[y1,x0], Ic=U[y0,x1], Id=U[y1,x1]

Inside the source this is bilinear interpolation, the same values as the exact sampler
(:mod:`asr_tf.nn.transformer`, 'hard') up to rounding. Outside, the clipped corners coincide
and the terms cancel in exact arithmetic, but not always in float32:

* x outside, y inside (left and right of a rendered box): x0 = x1, so wc = -wa, wd = -wb,
  Ic = Ia, Id = Ib and out = ((A + B) - A) - B with A = wa*Ia, B = wb*Ib: the rounding error
  of A + B, tiny residues of either sign, up to a few 1e-6 where |x| is large.
* y outside (above and below a box, and the corners): B = -A and D = -C, out = 0 exactly.

The reconstruction BCE divides by (r + 1e-10): a residue r ~ 1e-7 under ink has a gradient
~1e7, and an ink pixel the canvas leaves at exactly 0 has 1e10. Those reach the box through
the sampler's backward pass, where the four terms of a position's gradient cancel again only
up to rounding. That rounding is most of the original's gradient on a box (docs/ORIGINAL.md,
Q30), so this module reproduces it too:

* The images' gradient is the gathers' own: one segment sum over every gathered position, the
  a, b, c, d gathers in turn, in output order (the gathers are real gathers).
* The positions' gradient adds its four terms in the order the original's gradient adds them,
  which TensorFlow's graph optimizer decides, and differently for the original's two samplers:
  EXTRACT_ORDER and RENDER_ORDER, measured on the original's own graph (the in-model gradients
  of both samplers reproduced bit for bit by asr_tf/lab/original_compare.py). With the
  rendering's order the terms of a pixel above or below the box cancel exactly and only those
  beside it leave a residue; another order leaves residues on all four sides and a box
  gradient ten to a hundred times as large.
* theta's gradient is the batched product's, summed over the P output pixels.

Values are kept bit for bit in eager, graph and XLA execution: the products that feed a sum
are fenced (:func:`_fenced`, a select that keeps the value and hides the multiply from XLA's
fused multiply-add), and ``divide_no_nan`` keeps the exact division where grappler would fold
``1 / s`` into a reciprocal 1 ulp off. Gradients are the original's in eager and graph
execution (the sums of the positions' gradient are fenced against grappler's regrouping); XLA
sums the images' gradient and theta's in its own order, so faithful.gin trains without XLA.
"""
import numpy as np
import tensorflow as tf


@tf.autograph.experimental.do_not_convert  # autograph would wrap the custom gradient
@tf.custom_gradient
def _fenced(x):
    """``x`` unchanged (NaN stays NaN), as a select that XLA:CPU cannot contract with the sum it
    feeds: a product is rounded to float32 on its own, as in the original. Gradient: identity."""
    return tf.where(tf.math.is_nan(x), np.float32(np.nan), x), lambda dy: dy


def _target_grid(height, width):
    """The target grid as the original builds it: [3, height * width] rows x_t, y_t, 1 (row-major
    pixel order), x_t and y_t from ``tf.linspace(-1, 1)`` spread by products with ones."""
    x_t = tf.matmul(tf.ones([height, 1]), tf.linspace(-1.0, 1.0, width)[None, :])  # [H', W']
    y_t = tf.matmul(tf.linspace(-1.0, 1.0, height)[:, None], tf.ones([1, width]))  # [H', W']
    x_t, y_t = tf.reshape(x_t, [1, -1]), tf.reshape(y_t, [1, -1])
    return tf.concat([x_t, y_t, tf.ones_like(x_t)], 0)  # [3, P]


def _corner(pos_px, size):
    """floor(pos) and floor(pos) + 1 as int32, each clipped to [0, size - 1] (after the cast,
    as the original)."""
    lo = tf.cast(tf.floor(pos_px), tf.int32)
    return tf.clip_by_value(lo, 0, size - 1), tf.clip_by_value(lo + 1, 0, size - 1)


# The order in which the original's gradient adds the four weights' terms at each position
# (x, y): TensorFlow's graph optimizer reorders the sums of the original's model, and differently
# for its two samplers. Measured on the original's own graph (asr_tf/lab/original_compare.py,
# the in-model gradients of both samplers reproduced bit for bit); a, b, c, d name the terms of
# wa, wb, wc, wd. Outside the source two of the four terms cancel exactly or up to a rounding
# residue depending on this order, and that residue, times the BCE's 1e10 at an uncovered ink
# pixel, is most of the box's gradient.
EXTRACT_ORDER = ("adbc", "adbc")  # cutting the glimpse out of the image
RENDER_ORDER = ("cdab", "bdac")   # pasting the decoded glimpse onto the canvas


def _weights(x, y, x0_f, x1_f, y0_f, y1_f, order):
    """The four bilinear weights [N*P] from the clipped corners; their gradient at x (and y) adds
    the four terms left to right in ``order`` (EXTRACT_ORDER or RENDER_ORDER)."""
    return _WEIGHTS[order](x, y, x0_f, x1_f, y0_f, y1_f)


def _weights_in_order(order):
    @tf.autograph.experimental.do_not_convert  # autograph would wrap the custom gradient
    @tf.custom_gradient
    def weights(x, y, x0_f, x1_f, y0_f, y1_f):
        return _bilinear(x, y, x0_f, x1_f, y0_f, y1_f, order)
    return weights


def _bilinear(x, y, x0_f, x1_f, y0_f, y1_f, order):
    wa = (x1_f - x) * (y1_f - y)
    wb = (x1_f - x) * (y - y0_f)
    wc = (x - x0_f) * (y1_f - y)
    wd = (x - x0_f) * (y - y0_f)

    def grad(ga, gb, gc, gd):
        # Fenced: grappler would hoist the common factors (ga q - gc q -> (ga - gc) q, exact
        # cancellation where the original keeps a residue) and XLA fuse products into sums.
        def chain(terms):  # ((t0 + t1) + t2) + t3, each term and partial sum rounded alone
            total = _fenced(terms[0])
            for term in terms[1:]:
                total = _fenced(total + _fenced(term))
            return total

        qx, rx = y1_f - y, y - y0_f  # d wa / d(x1 - x), d wb / d(x1 - x), ...
        qy, ry = x1_f - x, x - x0_f
        tx = {"a": -(ga * qx), "b": -(gb * rx), "c": gc * qx, "d": gd * rx}
        ty = {"a": -(ga * qy), "b": gb * qy, "c": -(gc * ry), "d": gd * ry}
        dx = chain([tx[k] for k in order[0]])
        dy = chain([ty[k] for k in order[1]])
        return dx, dy, None, None, None, None

    return (wa, wb, wc, wd), grad


_WEIGHTS = {order: _weights_in_order(order) for order in (EXTRACT_ORDER, RENDER_ORDER)}


def sample_theta(images, theta, out_hw, order=EXTRACT_ORDER):
    """The original's sampler, op for op: ``images`` [N, H, W] under ``theta`` [N, 2, 3] (target
    to source, normalised coordinates) to [N, H', W'].

    See the module docstring; ``order``: the order of the positions' gradient terms,
    EXTRACT_ORDER or RENDER_ORDER."""
    n = tf.shape(images)[0]
    h, w = images.shape[1], images.shape[2]
    out_h, out_w = out_hw
    grid = tf.reshape(tf.tile(tf.reshape(_target_grid(out_h, out_w), [-1]), [n]),
                      tf.stack([n, 3, -1]))  # [N, 3, P]
    source = tf.matmul(theta, grid)  # [N, 2, P]
    x = tf.reshape(source[:, 0], [-1])  # [N*P]
    y = tf.reshape(source[:, 1], [-1])
    x = (x + 1.0) * (tf.constant(float(w)) - 1.001) / 2.0  # source pixels
    y = (y + 1.0) * (tf.constant(float(h)) - 1.001) / 2.0
    x0, x1 = _corner(x, w)
    y0, y1 = _corner(y, h)
    base = tf.repeat(tf.range(n) * (h * w), out_h * out_w)  # [N*P] first pixel of each image
    flat = tf.reshape(images, [-1, 1])  # [N*H*W, 1]
    pick = lambda yy, xx: tf.gather(flat, base + yy * w + xx)  # [N*P, 1]
    ia, ib, ic, id_ = pick(y0, x0), pick(y1, x0), pick(y0, x1), pick(y1, x1)
    corners = [tf.cast(c, tf.float32) for c in (x0, x1, y0, y1)]
    wa, wb, wc, wd = (w[:, None] for w in _weights(x, y, *corners, order))  # [N*P, 1] each
    out = tf.add_n([_fenced(wa * ia), _fenced(wb * ib), _fenced(wc * ic), _fenced(wd * id_)])
    return tf.reshape(out, tf.stack([n, out_h, out_w]))


def _theta(rows):
    """[[a, b, c], [d, e, f]] from six [N] tensors, stacked as the original stacks them."""
    (a, b, c), (d, e, f) = rows
    return tf.stack([tf.concat([tf.stack([a, b], 1), c[:, None]], 1),
                     tf.concat([tf.stack([d, e], 1), f[:, None]], 1)], 1)  # [N, 2, 3]


def sample(images, scale_x, scale_y, offset_x, offset_y, out_hw):
    """:func:`sample_theta` under the axis-aligned affine [[sx, 0, ox], [0, sy, oy]].

    Args:
      images: [N, H, W] source images.
      scale_x, scale_y, offset_x, offset_y: [N] affine entries.
      out_hw: (H', W') output size.
    Returns:
      [N, H', W'] samples, with the original's float32 residues outside the source.
    """
    zeros = tf.zeros_like(scale_x)
    return sample_theta(images, _theta(((scale_x, zeros, offset_x), (zeros, scale_y, offset_y))),
                        out_hw)


def extract_glimpse(canvas, scale, shift, glimpse_px):
    """Cuts the window [x - s, x + s] x [y - s, y + s] out of each canvas (theta [s, 0, x]).

    Args:
      canvas: [N, S, S]; scale: [N]; shift: [N, 2] (x = column, y = row); glimpse_px: int G.
    Returns:
      [N, G, G] glimpses.
    """
    zeros = tf.zeros_like(scale)
    theta = _theta(((scale, zeros, shift[:, 0]), (zeros, scale, shift[:, 1])))
    return sample_theta(canvas, theta, (glimpse_px, glimpse_px))


def render_glimpse(glimpse, scale, shift, canvas_px):
    """Pastes each glimpse onto an S x S canvas with the original's inverse theta
    [1/s, 0, -x/s] (divisions, each written where the original writes one).

    Args:
      glimpse: [N, G, G]; scale: [N]; shift: [N, 2]; canvas_px: int S.
    Returns:
      [N, S, S] canvases (residues left and right of the box).
    """
    # divide_no_nan: the exact division also where grappler would fold 1 / s into a reciprocal
    # (module docstring), and 0, not NaN, at s = 0: the records of glimpse steps a test pass did
    # not execute (weight 0), which the original never renders, would otherwise put 0 * NaN
    # into the canvas.
    zeros = tf.zeros_like(scale)
    theta = _theta(((tf.math.divide_no_nan(1.0, scale), zeros,
                     tf.math.divide_no_nan(-shift[:, 0], scale)),
                    (zeros, tf.math.divide_no_nan(1.0, scale),
                     tf.math.divide_no_nan(-shift[:, 1], scale))))
    return sample_theta(glimpse, theta, (canvas_px, canvas_px), RENDER_ORDER)


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
