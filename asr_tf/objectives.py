"""The training objective (docs/ORIGINAL.md §4.3–4.4, §6.4): the nELBO plus weighted structural
constraints.

Pure functions, tensors in and out. The constraints themselves are named entries of
asr_tf/constraints.py; a run lists the ones it trains with, and their weights, in gin:

    Objective.constraints = [('count_min', 10.0), ('count_margin', 100.0)]   # count ASR
    Objective.monitor = ['overlap', 'size_equality']   # logged every step, not in the loss

loss = sum_b [nELBO_b + sum_i w_i C_i(b)] / B  +  sum_j w_j C_j(batch)

(per-image constraints C_i, batch constraints C_j such as R2). Under tf.distribute each replica
computes its share (its images' sum over the *global* B, and the batch terms over the number of
replicas, their batch means all-reduced), so that the replicas' losses and gradients add up to
the single-process ones: training.train_step.
"""
import dataclasses
import logging
import math

import gin
import tensorflow as tf

from asr_tf import constraints as constraints_lib
from asr_tf.constraints import _log_eps

BCE_EPS = 1e-10  # inside the logs of the reconstruction BCE
MARGIN_EPS = 1e-8  # the code's threshold on -gm below which R2 (and R1, Q20) are off


def bernoulli_nll(images, recon):
    """-sum_pixels [x ln(r + e) + (1 - x) ln(1 - r + e)] on grayscale x (Q9); with C channels
    one Bernoulli per pixel and channel, summed over both.

    Both are read as rows of S*C values ([B, S, S*C]), the layout in which the models clip their
    canvas: with C = 1 that is the [B, S, S] of the grayscale-only code, and XLA:CPU sums each
    image's terms in the same order as it did (a [B, S, S, 1] layout sums them in another order:
    the same weights, logged losses a few float32 ulps apart).

    Args:
      images: [B, S, S, C] in [0, 1] (or any shape with as many values per image as recon).
      recon: [B, S, S, C], already clipped to [0, 1] (Q31).
    Returns:
      [B] per-image negative log-likelihood.
    """
    rows = tf.concat([tf.shape(recon)[:2], [-1]], 0)
    r = tf.reshape(recon, rows)  # [B, S, S*C]
    x = tf.reshape(images, rows)
    nll = -(x * _log_eps(r, BCE_EPS) + (1.0 - x) * _log_eps(1.0 - r, BCE_EPS))
    return tf.reduce_sum(tf.reshape(nll, [tf.shape(nll)[0], -1]), -1)


def squared_error(images, recon):
    """[B] sum over pixels (and channels) of (x - r)^2."""
    d = tf.reshape(images, tf.shape(recon)) - recon
    return tf.reduce_sum(tf.reshape(d * d, [tf.shape(d)[0], -1]), -1)


def negative_elbo(images, outputs):
    """Per-image nELBO (docs/ORIGINAL.md §4.4): BCE + sum_t KL_pres (gated)
    + sum_t m_t (KL_scale + KL_shift + KL_what).

    Returns:
      dict of [B] tensors: ``nelbo``, ``nll``, ``kl_pres``, ``kl_scale``, ``kl_shift``, ``kl_what``.
    """
    terms = {"nll": bernoulli_nll(images, outputs["recon"])}
    for k in ("kl_pres", "kl_scale", "kl_shift", "kl_what"):
        terms[k] = tf.reduce_sum(outputs[k], -1)  # masks were applied per step in the model
    terms["nelbo"] = tf.add_n(list(terms.values()))
    return terms


@gin.configurable
@dataclasses.dataclass(frozen=True)
class Objective:
    """Which constraints a run trains with, and with which weights.

    Attributes:
      constraints: ((name, weight), ...): registered constraints (asr_tf/constraints.py) and
        their weights, summed in this order. Empty: AIR and AIR-pPrior.
      monitor: names of further constraints computed and logged, not in the loss.
      counts: the data set's allowed counts (given by the run, not bound in gin).
      size_range_px: the data set's (c_min, c_max) (given by the run).
    """
    constraints: tuple = ()
    monitor: tuple = ()
    counts: tuple = (1, 3)
    size_range_px: tuple = (17.0, 23.0)

    def __post_init__(self):
        pairs = []
        for item in self.constraints:
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise ValueError(f"Objective.constraints entries are (name, weight) pairs, got "
                                 f"{item!r}")
            name, weight = item
            constraints_lib.get(name)  # a clear error for an unknown name
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise ValueError(f"the weight of constraint {name!r} must be a finite number, "
                                 f"got {weight!r}")
            pairs.append((name, float(weight)))
        names = [n for n, _ in pairs]
        if len(set(names)) != len(names):
            raise ValueError(f"a constraint is listed twice in Objective.constraints: {names}")
        for name in self.monitor:
            constraints_lib.get(name)
        object.__setattr__(self, "constraints", tuple(pairs))
        object.__setattr__(self, "monitor", tuple(n for n in self.monitor if n not in names))
        object.__setattr__(self, "counts", tuple(int(c) for c in self.counts))
        object.__setattr__(self, "size_range_px", tuple(float(v) for v in self.size_range_px))

    def weight(self, name):
        """The weight of constraint ``name`` in the loss (0 if it is not listed)."""
        return dict(self.constraints).get(name, 0.0)

    def in_loss(self, quirks):
        """The (name, weight) pairs that enter the loss. Q20 (``Quirks.count_min_needs_margin``):
        the code builds R1 only when R2's weight exceeds 1e-8, so R1 alone is dropped."""
        pairs = [(n, w) for n, w in self.constraints]
        if quirks.count_min_needs_margin and self.weight("count_margin") <= MARGIN_EPS:
            pairs = [(n, w) for n, w in pairs if n != "count_min"]
        if self.weight("count_margin") <= MARGIN_EPS:  # the code: no R2 below 1e-8
            pairs = [(n, w) for n, w in pairs if n != "count_margin"]
        return pairs


def objective_for(spec):
    """The run's Objective (the constraints gin binds) for the data set ``spec``: its allowed
    counts and size range."""
    return Objective(counts=tuple(spec.counts), size_range_px=tuple(spec.size_range_px))


def total_loss(images, outputs, objective, canvas_px, quirks, batch_mean=None,
               global_batch=None, num_replicas=1):
    """The training loss of docs/ORIGINAL.md §6.4 and every term, unweighted, for logging.

    Single process: ``loss = mean_b [nELBO_b + sum_i w_i C_i(b)] + sum_j w_j C_j``. One of
    ``num_replicas`` replicas of a global batch of ``global_batch`` images (``batch_mean`` the
    all-reduced mean): this replica's share, ``sum_b [...] / global_batch + sum_j w_j C_j /
    num_replicas``, so that the replicas' losses add up to the global-batch loss.

    Args:
      images: [B, S, S, C]; outputs: the model's dict (records [B, T, ...], ``step_mask`` [T]).
    Returns:
      (loss scalar, dict of per-image terms [B] (nELBO parts, per-image constraints),
       dict of batch terms (batch constraints, scalars)).
    """
    per_image_terms = negative_elbo(images, outputs)
    boxes = constraints_lib.boxes_from_outputs(outputs, canvas_px, objective.counts,
                                               objective.size_range_px, quirks, batch_mean)
    batch_terms = {}
    per_image = per_image_terms["nelbo"]  # [B]
    batch_loss = tf.constant(0.0)
    in_loss = objective.in_loss(quirks)
    for name, weight in in_loss + [(n, None) for n in objective.monitor]:
        constraint = constraints_lib.get(name)
        value = constraint.fn(boxes)
        (batch_terms if constraint.batch else per_image_terms)[name] = value
        if weight is None:
            continue
        if constraint.batch:
            batch_loss += weight * value
        else:
            per_image += weight * value
    batch = global_batch or tf.shape(per_image)[0]
    loss = tf.reduce_sum(per_image) / tf.cast(batch, tf.float32) + batch_loss / num_replicas
    return loss, per_image_terms, batch_terms


def warn_if_count_min_dropped(objective, quirks):
    """Q20: count_min without count_margin is a no-op in the original; say so."""
    if (objective.weight("count_min") > 0 and objective.weight("count_margin") <= MARGIN_EPS
            and quirks.count_min_needs_margin):
        logging.warning("constraint count_min (weight %g) has no effect without count_margin "
                        "(Q20, Quirks.count_min_needs_margin=True).",
                        objective.weight("count_min"))
        return True
    return False
