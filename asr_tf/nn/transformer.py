"""Spatial transformer for axis-aligned glimpses (docs/ORIGINAL.md §3.1, quirk Q30).

The glimpse affine of AIR is axis-aligned: a source column depends only on the
target column and a source row only on the target row. Bilinear sampling is
therefore separable, ``out = W_y @ U @ W_x^T``, with two interpolation matrices
of one-hot rows. This gives the same values as the classic gather-based sampler
(kept here as :func:`sample_gather` for tests and the benchmark) and runs as two
batched matmuls, which XLA and MKL handle well.

Coordinates follow the original: the target grid is ``linspace(-1, 1)`` on each
axis; a source point ``x_s`` maps to pixels as ``p = (x_s + 1) * (W - 1.001) / 2``.

Three edge modes (gin switch ``sampler_edge``, quirk Q30):
  * ``'four_gathers'`` (the original's arithmetic, :mod:`asr_tf.nn.four_gathers`): four
    gathers of clipped corners summed in float32; outside the source the terms cancel only
    up to rounding, leaving tiny residues of either sign left and right of a rendered box.
    Not separable: :func:`extract_glimpse`, :func:`render_glimpse` and
    :func:`render_glimpses_summed` hand it to that module.
  * ``'hard'`` (exact): corner indices are clipped *before* the weights are computed, so
    any sample with ``p`` outside ``[0, W-1)`` is exactly 0 and carries no gradient; inside
    the source the same values as 'four_gathers' up to rounding.
  * ``'zero_pad'`` (remedy): true bilinear interpolation with zeros outside the
    source; samples near the border blend with zeros, so gradients pull boxes
    back onto the ink.

Channels: :func:`extract_glimpse`, :func:`render_glimpse` and :func:`render_glimpses_summed`
take single-channel images ([N, H, W]) or images with a trailing channel axis ([N, H, W, C],
colour). Every channel of an item is sampled with that item's weights: the C channels are
folded into the batch (item-major, [N*C, H, W]) and the item's scale and shift repeated C
times (their gradients sum over the channels). One channel ([N, H, W, 1]) runs exactly the
single-channel computation, so a grayscale model computes what it computed before colour
was added, bit for bit.
"""
import functools

import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla

from asr_tf.nn import four_gathers
from asr_tf.quirks import SAMPLER_EDGES

SEPARABLE_EDGES = ("hard", "zero_pad")  # the edge modes of the separable sampler


def _check_edge(edge, allowed=SEPARABLE_EDGES):
    if edge in allowed:
        return
    if edge in SAMPLER_EDGES:  # 'four_gathers' asked of the separable sampler
        raise ValueError(f"sampler edge mode {edge!r} is not separable: the separable sampler "
                         f"takes {allowed}; use extract_glimpse / render_glimpse(s_summed)")
    raise ValueError(f"sampler edge mode {edge!r} is not one of {allowed}")


def _source_pixels(target_px, source_px, scale, offset):
    """Source pixel coordinates for one axis.

    Args:
      target_px: int, output length along the axis.
      source_px: int, input length along the axis.
      scale: [N] affine diagonal entry.
      offset: [N] affine translation.
    Returns:
      [N, target_px] float pixel positions in the source.
    """
    grid = tf.linspace(-1.0, 1.0, target_px)  # [P]
    src = scale[:, None] * grid[None, :] + offset[:, None]  # [N, P] normalised
    return (src + 1.0) * (float(source_px) - 1.001) / 2.0


def interpolation_matrix(pos_px, source_px, edge="hard", transposed=False):
    """Bilinear weights along one axis as a dense matrix.

    Args:
      pos_px: [N, P] source pixel positions of the P target pixels.
      source_px: int, source length along this axis.
      edge: 'hard' (Q30) or 'zero_pad'.
      transposed: build the transpose, [N, source_px, P], directly (no transposing copy).
    Returns:
      [N, P, source_px] weights; row p has at most two non-zeros.
    """
    _check_edge(edge)
    lo = tf.floor(pos_px)  # [N, P]
    hi = lo + 1.0
    last = float(source_px - 1)
    if edge == "hard":
        lo_c = tf.clip_by_value(lo, 0.0, last)
        hi_c = tf.clip_by_value(hi, 0.0, last)
        w_lo = hi_c - pos_px  # weights from the *clipped* corners (Q30)
        w_hi = pos_px - lo_c
        lo_i, hi_i = tf.cast(lo_c, tf.int32), tf.cast(hi_c, tf.int32)
    else:
        w_lo = hi - pos_px
        w_hi = pos_px - lo
        # one_hot of an out-of-range index is an all-zero row: zeros outside.
        lo_i, hi_i = tf.cast(lo, tf.int32), tf.cast(hi, tf.int32)
    if transposed:
        return (w_lo[:, None, :] * tf.one_hot(lo_i, source_px, axis=1)
                + w_hi[:, None, :] * tf.one_hot(hi_i, source_px, axis=1))  # [N, source_px, P]
    return (w_lo[..., None] * tf.one_hot(lo_i, source_px)
            + w_hi[..., None] * tf.one_hot(hi_i, source_px))  # [N, P, source_px]


def _transposed(x):
    """x [N, A, B] -> [N, B, A] as a tensor of its own. The optimization barrier keeps XLA
    from folding the transpose into the next dot: XLA:CPU runs a batched dot that contracts
    an operand's rows 1.6x slower (25 against 40-50 GFLOP/s at these sizes) than copying the
    operand transposed first. Used in gradients only: the forward graphs (and so the
    SavedModels) hold no barrier."""
    return xla.optimization_barrier(tf.transpose(x, [0, 2, 1]))[0]  # it returns a list


@tf.autograph.experimental.do_not_convert  # autograph would wrap the custom gradient
@tf.custom_gradient
def batched_matmul(a, b):
    """``tf.matmul(a, b)`` of [N, M, K] and [N, K, P] whose gradient never contracts a
    batched operand's rows in place (see :func:`_transposed`): da = dc b^T, db = a^T dc
    with a^T copied. Same values as tf.matmul's gradient."""
    def grad(dc):
        return tf.matmul(dc, b, transpose_b=True), tf.matmul(_transposed(a), dc)
    return tf.matmul(a, b), grad


@tf.autograph.experimental.do_not_convert  # autograph would wrap the custom gradient
@tf.custom_gradient
def batched_matmul_nt(a, b):
    """``tf.matmul(a, b, transpose_b=True)`` of [N, M, K] and [N, P, K], with the gradient
    of :func:`batched_matmul`'s kind: da = dc b, db = dc^T a with dc^T copied."""
    def grad(dc):
        return tf.matmul(dc, b), tf.matmul(_transposed(dc), a)
    return tf.matmul(a, b, transpose_b=True), grad


def sample_separable(images, scale_x, scale_y, offset_x, offset_y, out_hw, edge="hard"):
    """Samples ``images`` under an axis-aligned affine with separable bilinear weights.

    Args:
      images: [N, H, W] source images.
      scale_x, scale_y, offset_x, offset_y: [N] affine entries, A = [[sx, 0, ox], [0, sy, oy]].
      out_hw: (H', W') output size.
      edge: 'hard' or 'zero_pad'.
    Returns:
      [N, H', W'] sampled images.
    """
    src_h, src_w = images.shape[1], images.shape[2]
    out_h, out_w = out_hw
    w_y = interpolation_matrix(_source_pixels(out_h, src_h, scale_y, offset_y), src_h, edge)  # [N, H', H]
    w_x = interpolation_matrix(_source_pixels(out_w, src_w, scale_x, offset_x), src_w, edge)  # [N, W', W]
    rows = batched_matmul(w_y, images)  # [N, H', W]
    return batched_matmul_nt(rows, w_x)  # [N, H', W']


def sample_gather(images, theta, out_hw):
    """Reference gather-based bilinear sampler: the original's formula with hard edges, not
    its float32 rounding (that is :func:`asr_tf.nn.four_gathers.sample`).

    Args:
      images: [N, H, W] source images.
      theta: [N, 2, 3] affine maps from target to source (normalised coordinates).
      out_hw: (H', W') output size.
    Returns:
      [N, H', W'] sampled images.
    """
    n = tf.shape(images)[0]
    src_h, src_w = images.shape[1], images.shape[2]
    out_h, out_w = out_hw
    ys, xs = tf.meshgrid(tf.linspace(-1.0, 1.0, out_h), tf.linspace(-1.0, 1.0, out_w), indexing="ij")
    grid = tf.stack([tf.reshape(xs, [-1]), tf.reshape(ys, [-1]), tf.ones([out_h * out_w])])  # [3, P]
    src = tf.einsum("nij,jp->nip", theta, grid)  # [N, 2, P]
    px = (src[:, 0] + 1.0) * (float(src_w) - 1.001) / 2.0  # [N, P]
    py = (src[:, 1] + 1.0) * (float(src_h) - 1.001) / 2.0
    x0 = tf.clip_by_value(tf.floor(px), 0.0, float(src_w - 1))
    x1 = tf.clip_by_value(tf.floor(px) + 1.0, 0.0, float(src_w - 1))
    y0 = tf.clip_by_value(tf.floor(py), 0.0, float(src_h - 1))
    y1 = tf.clip_by_value(tf.floor(py) + 1.0, 0.0, float(src_h - 1))
    flat = tf.reshape(images, [n, src_h * src_w])

    def pick(yy, xx):
        idx = tf.cast(yy, tf.int32) * src_w + tf.cast(xx, tf.int32)
        return tf.gather(flat, idx, batch_dims=1)  # [N, P]

    out = ((x1 - px) * (y1 - py) * pick(y0, x0) + (x1 - px) * (py - y0) * pick(y1, x0)
           + (px - x0) * (y1 - py) * pick(y0, x1) + (px - x0) * (py - y0) * pick(y1, x1))
    return tf.reshape(out, [n, out_h, out_w])


def glimpse_theta(scale, shift):
    """Forward affine (canvas <- glimpse) for a window of half-width ``scale`` at ``shift``.

    Args:
      scale: [N] in (0, 1).
      shift: [N, 2] in (-1, 1); component 0 is horizontal (column), 1 vertical (row).
    Returns:
      [N, 2, 3] affine A_fwd = [[s, 0, x], [0, s, y]].
    """
    zeros = tf.zeros_like(scale)
    return tf.stack([tf.stack([scale, zeros, shift[:, 0]], -1),
                     tf.stack([zeros, scale, shift[:, 1]], -1)], 1)


def inverse_theta(scale, shift):
    """Inverse affine A_bwd = [[1/s, 0, -x/s], [0, 1/s, -y/s]] (glimpse -> canvas)."""
    return glimpse_theta(1.0 / scale, -shift / scale[:, None])


def per_channel(sample, images, plane_rank, *params):
    """``sample(planes, *params)``, a sampler of single-channel ``planes`` (rank ``plane_rank``,
    batch first) with per-item ``params`` ([N, ...] each), applied to ``images``: of rank
    ``plane_rank`` (one channel) as they are; of rank ``plane_rank + 1`` (a trailing channel
    axis C) every channel with its item's params, C folded into the batch.

    Returns the sampled planes, with the trailing channel axis if ``images`` had one.
    """
    rank = images.shape.rank
    if rank == plane_rank:
        return sample(images, *params)
    if rank != plane_rank + 1:
        raise ValueError(f"expected images of rank {plane_rank} (one channel) or {plane_rank + 1}"
                         f" (channels last), got shape {images.shape}")
    channels = images.shape[-1]
    if channels == 1:  # the single-channel computation itself
        return sample(images[..., 0], *params)[..., None]
    planes = tf.transpose(images, [0, rank - 1] + list(range(1, rank - 1)))  # [N, C, ...]
    planes = tf.reshape(planes, [-1] + images.shape[1:-1].as_list())  # [N*C, ...], item-major
    out = sample(planes, *[tf.repeat(p, channels, axis=0) for p in params])  # [N*C, ...]
    out = tf.reshape(out, [-1, channels] + out.shape[1:].as_list())  # [N, C, ...]
    return tf.transpose(out, [0] + list(range(2, out.shape.rank)) + [1])  # [N, ..., C]


def extract_glimpse(canvas, scale, shift, glimpse_px=28, edge="hard"):
    """Cuts a square window out of each canvas.

    Args:
      canvas: [N, S, S] images, or [N, S, S, C] (:func:`per_channel`).
      scale: [N] window half-width in normalised units (window side = scale * S px).
      shift: [N, 2] window centre in [-1, 1] (x = column, y = row).
      glimpse_px: output side.
      edge: one of quirks.SAMPLER_EDGES (Q30).
    Returns:
      [N, glimpse_px, glimpse_px] glimpses ([N, G, G, C] from [N, S, S, C]).
    """
    _check_edge(edge, SAMPLER_EDGES)

    def sample(planes, scale, shift):
        if edge == "four_gathers":
            return four_gathers.extract_glimpse(planes, scale, shift, glimpse_px)
        return sample_separable(planes, scale, scale, shift[:, 0], shift[:, 1],
                                (glimpse_px, glimpse_px), edge)
    return per_channel(sample, canvas, 3, scale, shift)


def render_glimpse(glimpse, scale, shift, canvas_px, edge="hard"):
    """Pastes each glimpse back onto an empty S x S canvas (the exact inverse map).

    Args:
      glimpse: [N, G, G] windows, or [N, G, G, C] (:func:`per_channel`).
      scale, shift: as in :func:`extract_glimpse`.
      canvas_px: int S.
      edge: one of quirks.SAMPLER_EDGES (Q30).
    Returns:
      [N, S, S] canvases ([N, S, S, C] from [N, G, G, C]), zero outside the box (up to
      rounding residues with 'four_gathers').
    """
    _check_edge(edge, SAMPLER_EDGES)

    def sample(planes, scale, shift):
        if edge == "four_gathers":
            return four_gathers.render_glimpse(planes, scale, shift, canvas_px)
        inv = 1.0 / scale
        return sample_separable(planes, inv, inv, -shift[:, 0] * inv, -shift[:, 1] * inv,
                                (canvas_px, canvas_px), edge)
    return per_channel(sample, glimpse, 3, scale, shift)


def render_glimpses_summed(glimpses, weights, scale, shift, canvas_px, edge="hard"):
    """Renders K weighted glimpses per canvas and sums them: the canvas of a glimpse loop,
    ``sum_k weights[:, k] * render_glimpse(glimpses[:, k], scale[:, k], shift[:, k])``.

    The sum over k is carried by the second product: per canvas, the K column-interpolated
    glimpses are stacked along the contraction, [S, K*G] x [K*G, S], so no stack of single
    renderings [B, K, S, S] is formed (nor its gradient). The row interpolation is built
    directly as [B, S, K*G] (its positions transposed to [B, S, K] first, a small tensor) and
    the column one transposed, [B*K, G, S], so every reshape is free (batch-major inputs).

    Args:
      glimpses: [B, K, G, G] windows, or [B, K, G, G, C] (:func:`per_channel`).
      weights: [B, K] factor of each rendering (e.g. present * z_pres).
      scale: [B, K]; shift: [B, K, 2], as in :func:`render_glimpse`.
      canvas_px: int S.
      edge: one of quirks.SAMPLER_EDGES (Q30); 'four_gathers' renders K glimpses and sums the
        weighted renderings step by step, as the original's running canvas.
    Returns:
      [B, S, S] canvases ([B, S, S, C] from [B, K, G, G, C]).
    """
    _check_edge(edge, SAMPLER_EDGES)
    return per_channel(functools.partial(_render_summed, canvas_px=canvas_px, edge=edge),
                       glimpses, 4, weights, scale, shift)


def _render_summed(glimpses, weights, scale, shift, canvas_px, edge):
    """:func:`render_glimpses_summed` of single-channel glimpses [B, K, G, G] -> [B, S, S]."""
    if edge == "four_gathers":
        return four_gathers.render_glimpses_summed(glimpses, weights, scale, shift, canvas_px)
    g = glimpses.shape[-1]
    k = tf.shape(glimpses)[1]
    inv = tf.reshape(1.0 / scale, [-1])  # [B*K]
    shift = tf.reshape(shift, [-1, 2])  # [B*K, 2]
    b = tf.shape(glimpses)[0]
    pos_y = tf.reshape(_source_pixels(canvas_px, g, inv, -shift[:, 1] * inv), [b, k, canvas_px])
    pos_y = tf.reshape(tf.transpose(pos_y, [0, 2, 1]), [b, canvas_px * k])  # [B, S*K], k minor
    w_y = tf.reshape(interpolation_matrix(pos_y, g, edge),
                     tf.stack([b, canvas_px, k * g]))  # [B, S, K*G]
    w_x_t = interpolation_matrix(_source_pixels(canvas_px, g, inv, -shift[:, 0] * inv), g, edge,
                                 transposed=True)  # [B*K, G, S]
    weighted = tf.reshape(weights[..., None, None] * glimpses, [-1, g, g])  # [B*K, G, G]
    cols = batched_matmul(weighted, w_x_t)  # [B*K, G, S]: each glimpse times W_x^T
    return batched_matmul(w_y, tf.reshape(cols, tf.stack([b, k * g, canvas_px])))  # [B, S, S]
