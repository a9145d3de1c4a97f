"""ELBO terms and the ASR penalties (spec §4.3-4.4, §6). Pure functions: tensors in, tensors out.

Boxes are in pixels: centre c = (shift + 1) * S / 2, side d = scale * S.
Unless ``presence`` is given (``Quirks.mask_penalties_by_presence``), every
penalty runs over all *executed* steps of the batch (``step_mask``), unmasked
by z_pres (Q16, Q17), so a stopping step's "ghost" box is penalised too.
"""
import dataclasses
import logging

import gin
import tensorflow as tf

BCE_EPS = 1e-10  # inside the logs of the reconstruction BCE
CE_EPS = 1e-8  # inside the logit of the count CEs
SIZE_EPS_PX = 3.0  # F7 tolerance


def _log_eps(v, eps):
    """ln(v + eps) for v >= 0. The max() keeps XLA/Grappler from folding ``(1 - r) + eps`` into
    ``(1 + eps) - r``, which rounds to ln(0) = -inf at r = 1."""
    return tf.math.log(tf.maximum(v, 0.0) + eps)


def bernoulli_nll(images, recon):
    """-sum_pixels [x ln(r + e) + (1 - x) ln(1 - r + e)] on grayscale x (Q9).

    Args:
      images: [B, S, S] or [B, S, S, 1] in [0, 1].
      recon: same shape as images, already clipped to [0, 1] (Q31).
    Returns:
      [B] per-image negative log-likelihood.
    """
    x = tf.reshape(images, tf.shape(recon))
    nll = -(x * _log_eps(recon, BCE_EPS) + (1.0 - x) * _log_eps(1.0 - recon, BCE_EPS))
    return tf.reduce_sum(tf.reshape(nll, [tf.shape(nll)[0], -1]), -1)


def squared_error(images, recon):
    """[B] sum over pixels of (x - r)^2."""
    d = tf.reshape(images, tf.shape(recon)) - recon
    return tf.reduce_sum(tf.reshape(d * d, [tf.shape(d)[0], -1]), -1)


def negative_elbo(images, outputs):
    """Per-image nELBO (spec §4.4): BCE + sum_t KL_pres (gated) + sum_t m_t (KL_scale+shift+what).

    Returns:
      dict of [B] tensors: ``nelbo``, ``nll``, ``kl_pres``, ``kl_scale``, ``kl_shift``, ``kl_what``.
    """
    terms = {"nll": bernoulli_nll(images, outputs["recon"])}
    for k in ("kl_pres", "kl_scale", "kl_shift", "kl_what"):
        terms[k] = tf.reduce_sum(outputs[k], -1)  # masks were applied per step in the model
    terms["nelbo"] = tf.add_n(list(terms.values()))
    return terms


def boxes_px(scale, shift, canvas_px):
    """Centres [B, T, 2] (x, y) and sides [B, T] in pixels."""
    s = float(canvas_px)
    return (shift + 1.0) * s / 2.0, scale * s


def _pair_mask(step_mask, presence):
    """[B, T] weights for single-box terms and [B, T, T] for pairs (diagonal included)."""
    w = step_mask[None, :]  # [1, T]
    if presence is not None:
        w = w * presence  # [B, T]
    return w, w[:, :, None] * w[:, None, :]


def overlap_penalty(centers, sides, step_mask, presence=None):
    """F1: sum_{i != j} relu((d_i + d_j)/2 - max(|dx|, |dy|)) over ordered pairs. Returns [B]."""
    _, pw = _pair_mask(step_mask, presence)
    t = tf.shape(sides)[1]
    off_diag = 1.0 - tf.eye(t)
    dist = tf.reduce_max(tf.abs(centers[:, :, None, :] - centers[:, None, :, :]), -1)  # [B, T, T]
    reach = (sides[:, :, None] + sides[:, None, :]) / 2.0
    return tf.reduce_sum(tf.nn.relu(reach - dist) * pw * off_diag, [1, 2])


def out_of_image_penalty(centers, sides, step_mask, canvas_px, presence=None):
    """F2-F5: how far each box crosses the four canvas edges, summed. Returns [B]."""
    w, _ = _pair_mask(step_mask, presence)
    half = sides[..., None] / 2.0  # [B, T, 1]
    s = float(canvas_px)
    out = tf.nn.relu(half - centers) + tf.nn.relu(centers + half - s)  # [B, T, 2]
    return tf.reduce_sum(tf.reduce_sum(out, -1) * w, -1)


def size_penalty(sides, step_mask, presence=None, eps_px=SIZE_EPS_PX):
    """F7: sum_{i,j} relu(|d_i - d_j| - eps). Returns [B]."""
    _, pw = _pair_mask(step_mask, presence)
    diff = tf.abs(sides[:, :, None] - sides[:, None, :])
    return tf.reduce_sum(tf.nn.relu(diff - eps_px) * pw, [1, 2])


def area_penalty(sides, step_mask, size_range_px, presence=None, mode="mean_offset"):
    """F6, the box-side range [c_min, c_max]. Returns [B].

    mode 'mean_offset' (Q19): mean over boxes of relu(c_max - d) + relu(d - c_min), i.e. the
    paper's hinge plus the constant (c_max - c_min). mode 'paper': sum of relu(c_min - d) +
    relu(d - c_max).
    """
    c_min, c_max = (float(v) for v in size_range_px)
    w, _ = _pair_mask(step_mask, presence)
    w = tf.broadcast_to(w, tf.shape(sides))
    if mode == "mean_offset":
        per_box = tf.nn.relu(c_max - sides) + tf.nn.relu(sides - c_min)
        return tf.reduce_sum(per_box * w, -1) / tf.maximum(tf.reduce_sum(w, -1), 1.0)
    per_box = tf.nn.relu(c_min - sides) + tf.nn.relu(sides - c_max)
    return tf.reduce_sum(per_box * w, -1)


def count_targets(counts, max_steps):
    """u[k, t] = 1[t < c_k]: [K, T] target z_pres patterns of the allowed counts."""
    c = tf.constant(sorted(counts), tf.float32)[:, None]
    return tf.cast(tf.range(max_steps, dtype=tf.float32)[None, :] < c, tf.float32)


def _ce(labels, probs):
    """Bernoulli CE of target ``labels`` under ``probs`` via the original's logit (broadcasts)."""
    logits = _log_eps(probs, CE_EPS) - _log_eps(1.0 - probs, CE_EPS)
    return tf.nn.softplus(logits) - labels * logits


def count_min_penalty(z_pres_prob, step_mask, counts):
    """R1 (gamma_ne): per image, min over allowed counts of sum_t CE(u_{k,t}, p_{b,t}) over
    executed steps (Q22). Args: z_pres_prob [B, T]; step_mask [T]. Returns [B]."""
    u = count_targets(counts, z_pres_prob.shape[1])  # [K, T]
    ce = _ce(u[None], z_pres_prob[:, None, :]) * step_mask  # [B, K, T]
    return tf.reduce_min(tf.reduce_sum(ce, -1), -1)


def count_margin_penalty(z_pres_prob, step_mask, counts):
    """R2 (gamma_m): sum_t CE(mean_k u_{k,t}, mean_b p_{b,t}) once per batch (Q21); includes
    the entropy constant sum_t H(mean_k u_{k,t}). Returns a scalar."""
    u_bar = tf.reduce_mean(count_targets(counts, z_pres_prob.shape[1]), 0)  # [T]
    p_bar = tf.reduce_mean(z_pres_prob, 0)  # [T]
    return tf.reduce_sum(_ce(u_bar, p_bar) * step_mask)


def zpres_entropy(z_pres_logit, step_mask):
    """-gn: sum_t H(Bernoulli(sigmoid(alpha))) over executed steps. Returns [B]."""
    p = tf.sigmoid(z_pres_logit)
    h = p * tf.nn.softplus(-z_pres_logit) + (1.0 - p) * tf.nn.softplus(z_pres_logit)
    return tf.reduce_sum(h * step_mask, -1)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class PenaltyWeights:
    """The ASR weights (spec §6.5 flags). All zero = AIR-pPrior.

    Attributes:
      gamma_ne: R1, per-image min count CE (paper lambda_1^num; 10 in count ASR).
      gamma_m: R2, batch marginal count CE (lambda_2^num; 100 in count ASR).
      gamma_b: F1 overlap AND F2-F5 out-of-image, tied (Q18; 1 in overlap ASR).
      gamma_s: F7 size equality (10 in overlap ASR).
      gamma_a: F6 side range (20 in overlap ASR).
      gamma_n: z_pres entropy (-gn, not in the paper; 0).
      counts: allowed counts for R1/R2, e.g. (1, 3).
      size_range_px: (c_min, c_max) for F6.
    """
    gamma_ne: float = 0.0
    gamma_m: float = 0.0
    gamma_b: float = 0.0
    gamma_s: float = 0.0
    gamma_a: float = 0.0
    gamma_n: float = 0.0
    counts: tuple = (1, 3)
    size_range_px: tuple = (17.0, 23.0)


def per_image_loss(images, outputs, weights, canvas_px, quirks):
    """The per-image part of the loss, nELBO + g_n H + g_a A + g_b (O + Out) + g_s Sz + g_ne R1.

    Returns:
      (per_image [B], dict of the unweighted per-image terms, each [B]).
    """
    terms = negative_elbo(images, outputs)
    step_mask = outputs["step_mask"]  # [T]
    presence = outputs["present"] if quirks.mask_penalties_by_presence else None
    centers, sides = boxes_px(outputs["scale"], outputs["shift"], canvas_px)
    terms["overlap"] = overlap_penalty(centers, sides, step_mask, presence)
    terms["out_of_image"] = out_of_image_penalty(centers, sides, step_mask, canvas_px, presence)
    terms["size"] = size_penalty(sides, step_mask, presence)
    terms["area"] = area_penalty(sides, step_mask, weights.size_range_px, presence,
                                 quirks.area_penalty)
    terms["entropy"] = zpres_entropy(outputs["z_pres_logit"], step_mask)
    per_image = (terms["nelbo"] + weights.gamma_n * terms["entropy"]
                 + weights.gamma_a * terms["area"]
                 + weights.gamma_b * (terms["overlap"] + terms["out_of_image"])
                 + weights.gamma_s * terms["size"])
    if uses_count_margin(weights) or not quirks.count_min_needs_margin:
        terms["count_min"] = count_min_penalty(outputs["z_pres_prob"], step_mask, weights.counts)
        per_image += weights.gamma_ne * terms["count_min"]
    return per_image, terms


def uses_count_margin(weights):
    """Whether the batch-level R2 term is in the loss (gamma_m > 0)."""
    return weights.gamma_m > 1e-8


def total_loss(images, outputs, weights, canvas_px, quirks):
    """The training loss of spec §6.4 and every term, unweighted, for logging.

    Loss = mean_b [nELBO + g_n H + g_a A + g_b (O + Out) + g_s Sz + g_ne R1] + g_m R2.

    Returns:
      (loss scalar, dict of scalar terms: batch means of each per-image term, ``count_margin``
       the batch R2, and ``loss``).
    """
    per_image, terms = per_image_loss(images, outputs, weights, canvas_px, quirks)
    margin = tf.constant(0.0)
    if uses_count_margin(weights):
        margin = count_margin_penalty(outputs["z_pres_prob"], outputs["step_mask"],
                                      weights.counts)
    loss = tf.reduce_mean(per_image) + weights.gamma_m * margin
    scalars = {k: tf.reduce_mean(v) for k, v in terms.items()}
    scalars["count_margin"] = margin
    scalars["loss"] = loss
    return loss, scalars


def warn_if_count_min_dropped(weights, quirks):
    """Q20: gamma_ne without gamma_m is a no-op in the original; say so."""
    if weights.gamma_ne > 0 and weights.gamma_m <= 1e-8 and quirks.count_min_needs_margin:
        logging.warning("gamma_ne=%g has no effect because gamma_m=0 (Q20, "
                        "Quirks.count_min_needs_margin=True).", weights.gamma_ne)
        return True
    return False
