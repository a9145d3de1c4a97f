"""Structural constraints: what we know about scenes, as named penalty terms (paper §4;
docs/ORIGINAL.md §6).

ASR's idea is that human knowledge about the objects in a scene ("there are 1 or 3 of them",
"they do not overlap", "they are all about the same size") becomes a penalty on the inferred
boxes and presences, added to the nELBO. Here each such piece of knowledge is a *constraint*:
a pure function of the inferred :class:`Boxes` of a batch, registered under a name. A run's
loss is the nELBO plus a weighted sum of constraints named in gin (asr_tf/objectives.py):

    Objective.constraints = [('count_min', 10.0), ('count_margin', 100.0)]

Adding one of your own takes one function and one gin line, no change to the training code
(docs/CONSTRAINTS.md has the worked example, ``docs/constraints/one_row.py``):

    @constraints.register("one_row")
    def one_row(boxes):
        '''All boxes on one horizontal row: spread of the box centres' y, in px.'''
        ...
        return per_image  # [B]

    # gin:  import one_row
    #       Objective.constraints = [('count_min', 10.0), ('count_margin', 100.0), ('one_row', 1.0)]

A constraint returns either one value per image, [B] (averaged over the batch by the
objective), or, registered with ``batch=True``, one scalar for the whole batch computed from
batch means taken with ``boxes.batch_mean`` (R2 below), so that under ``tf.distribute`` it is
the mean over the *global* batch and its gradient is the single-process one. Every registered
function is also gin-configurable under its name (``size_equality.eps_px = 3.0``).

The paper's constraints, as the original code computes them:

| name | paper | per | what |
|---|---|---|---|
| ``overlap`` | F1 | image | sum over ordered pairs of relu((d_i + d_j)/2 - max(abs dx, abs dy)) |
| ``out_of_image`` | F2-F5 | image | how far each box crosses each canvas edge, summed |
| ``area`` | F6 | image | the box side outside [c_min, c_max] (``Quirks.area_penalty``, Q19) |
| ``size_equality`` | F7 | image | sum over pairs of relu(abs(d_i - d_j) - eps), eps 3 px |
| ``count_min`` | R1 | image | min over allowed counts of the presence CE (Q22; Q20 gating) |
| ``count_margin`` | R2 | batch | CE of the mean allowed pattern under the batch-mean presence (Q21) |
| ``presence_entropy`` | - | image | entropy of q(z_pres) (the code's ``-gn``; not in the paper) |

The original ties F1 and F2-F5 to one weight (``-gb``, Q18): the overlap configs give both the
same weight. Boxes are in pixels (``metrics.where_px``): centre c = (shift + 1) * S / 2, side
d = scale * S. Every constraint runs over the *executed* glimpse steps of the batch, unmasked
by presence (Q16, Q17): ``boxes.weight`` is the step mask, or the presence with
``Quirks.mask_penalties_by_presence``.
"""
import dataclasses
from typing import Callable

import gin
import tensorflow as tf

from asr_tf import metrics

CE_EPS = 1e-8  # inside the logit of the count CEs
SIZE_EPS_PX = 3.0  # F7 tolerance


@dataclasses.dataclass(frozen=True)
class Boxes:
    """What a constraint sees: the inferred boxes of a batch of B scenes over T glimpse steps.

    Attributes:
      centers_px: [B, T, 2] box centres (x, y), pixels.
      sides_px: [B, T] box sides, pixels.
      weight: [B, T] which boxes count (1/0): the executed steps (Q16, Q17) or, with
        ``Quirks.mask_penalties_by_presence``, the present objects among them.
      step_mask: [T] 1 for the glimpse steps executed in this batch.
      z_pres_prob: [B, T] presence probabilities q(z_pres = 1) along the sampled trajectory.
      z_pres_logit: [B, T] their logits.
      canvas_px: S.
      counts: the data set's allowed object counts, e.g. (1, 3).
      size_range_px: (c_min, c_max) object sides of the data set, pixels.
      quirks: the run's Quirks.
      batch_mean: [B, ...] -> [...], the mean over the (global) batch; for batch constraints.
    """
    centers_px: tf.Tensor
    sides_px: tf.Tensor
    weight: tf.Tensor
    step_mask: tf.Tensor
    z_pres_prob: tf.Tensor
    z_pres_logit: tf.Tensor
    canvas_px: int
    counts: tuple
    size_range_px: tuple
    quirks: object
    batch_mean: Callable = lambda v: tf.reduce_mean(v, 0)

    @property
    def pair_weight(self):
        """[B, T, T] weight of each ordered pair of boxes (the diagonal included)."""
        return self.weight[:, :, None] * self.weight[:, None, :]


def boxes_from_outputs(outputs, canvas_px, counts, size_range_px, quirks, batch_mean=None):
    """The :class:`Boxes` of a model's outputs (the dict of ``GlimpseModel.call``)."""
    step_mask = outputs["step_mask"]  # [T]
    weight = step_mask[None, :]  # [1, T]
    if quirks.mask_penalties_by_presence:
        weight = weight * outputs["present"]
    weight = tf.broadcast_to(weight, tf.shape(outputs["scale"]))  # [B, T]
    extra = {} if batch_mean is None else {"batch_mean": batch_mean}
    centers_px, sides_px = metrics.where_px(outputs["scale"], outputs["shift"], canvas_px)
    return Boxes(centers_px=centers_px, sides_px=sides_px, weight=weight, step_mask=step_mask,
                 z_pres_prob=outputs["z_pres_prob"], z_pres_logit=outputs["z_pres_logit"],
                 canvas_px=int(canvas_px),
                 counts=tuple(counts), size_range_px=tuple(float(v) for v in size_range_px),
                 quirks=quirks, **extra)


@dataclasses.dataclass(frozen=True)
class Constraint:
    """A registered constraint: ``fn(boxes)`` -> [B] (``batch=False``) or a scalar."""
    name: str
    fn: Callable
    batch: bool
    doc: str


_REGISTRY = {}


def register(name, batch=False):
    """Decorator: registers ``fn(boxes: Boxes)`` as the constraint ``name`` (and as a gin
    configurable of that name, so its keyword arguments are bindable). Returns the
    gin-wrapped function."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a constraint name must be a Python identifier, got {name!r}")

    def decorate(fn):
        if name in _REGISTRY:
            raise ValueError(f"constraint {name!r} is already registered "
                             f"({_REGISTRY[name].fn.__module__})")
        wrapped = gin.configurable(name, module="constraints")(fn)
        doc = (fn.__doc__ or "").strip()
        _REGISTRY[name] = Constraint(name, wrapped, bool(batch), doc.splitlines()[0] if doc else "")
        return wrapped

    return decorate


def get(name):
    """The registered constraint ``name``; a ValueError lists the registered ones otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown constraint {name!r}; registered: {', '.join(registered())}. "
                         "A constraint of your own must be imported before it is named (a gin "
                         "`import my_module` line does that).")
    return _REGISTRY[name]


def registered():
    """Names of every registered constraint, sorted."""
    return sorted(_REGISTRY)


# ------------------------------------------------------------------ the paper's box terms
@register("overlap")
def overlap(boxes):
    """F1: sum over ordered pairs i != j of relu((d_i + d_j)/2 - max(|dx|, |dy|)), px. [B]"""
    c, d = boxes.centers_px, boxes.sides_px
    off_diag = 1.0 - tf.eye(tf.shape(d)[1])
    dist = tf.reduce_max(tf.abs(c[:, :, None, :] - c[:, None, :, :]), -1)  # [B, T, T]
    reach = (d[:, :, None] + d[:, None, :]) / 2.0
    return tf.reduce_sum(tf.nn.relu(reach - dist) * boxes.pair_weight * off_diag, [1, 2])


@register("out_of_image")
def out_of_image(boxes):
    """F2-F5: how far each box crosses the four canvas edges, summed, px. [B]"""
    half = boxes.sides_px[..., None] / 2.0  # [B, T, 1]
    c, s = boxes.centers_px, float(boxes.canvas_px)
    out = tf.nn.relu(half - c) + tf.nn.relu(c + half - s)  # [B, T, 2]
    return tf.reduce_sum(tf.reduce_sum(out, -1) * boxes.weight, -1)


@register("size_equality")
def size_equality(boxes, eps_px=SIZE_EPS_PX):
    """F7: sum over ordered pairs of relu(|d_i - d_j| - eps_px), px. [B]"""
    d = boxes.sides_px
    diff = tf.abs(d[:, :, None] - d[:, None, :])  # [B, T, T]
    return tf.reduce_sum(tf.nn.relu(diff - eps_px) * boxes.pair_weight, [1, 2])


@register("area")
def area(boxes):
    """F6: box sides outside [c_min, c_max], px. [B]

    ``Quirks.area_penalty`` 'mean_offset' (Q19, the code): mean over boxes of relu(c_max - d)
    + relu(d - c_min), the paper's hinge plus the constant (c_max - c_min); 'paper': sum of
    relu(c_min - d) + relu(d - c_max).
    """
    c_min, c_max = boxes.size_range_px
    d, w = boxes.sides_px, boxes.weight
    if boxes.quirks.area_penalty == "mean_offset":
        per_box = tf.nn.relu(c_max - d) + tf.nn.relu(d - c_min)
        return tf.reduce_sum(per_box * w, -1) / tf.maximum(tf.reduce_sum(w, -1), 1.0)
    per_box = tf.nn.relu(c_min - d) + tf.nn.relu(d - c_max)
    return tf.reduce_sum(per_box * w, -1)


# ------------------------------------------------------------------ counts
def _log_eps(v, eps):
    """ln(v + eps) for v >= 0. The max() keeps XLA/Grappler from folding ``(1 - r) + eps`` into
    ``(1 + eps) - r``, which rounds to ln(0) = -inf at r = 1."""
    return tf.math.log(tf.maximum(v, 0.0) + eps)


def count_targets(counts, num_glimpses):
    """u[k, t] = 1[t < c_k]: [K, T] target z_pres patterns of the allowed counts."""
    c = tf.constant(sorted(counts), tf.float32)[:, None]
    return tf.cast(tf.range(num_glimpses, dtype=tf.float32)[None, :] < c, tf.float32)


def presence_ce(labels, probs):
    """Bernoulli CE of target ``labels`` under ``probs`` via the original's logit
    ln(p + 1e-8) - ln(1 - p + 1e-8) (broadcasts)."""
    logits = _log_eps(probs, CE_EPS) - _log_eps(1.0 - probs, CE_EPS)
    return tf.nn.softplus(logits) - labels * logits


@register("count_min")
def count_min(boxes):
    """R1: per image, min over the allowed counts of sum_t CE(u_{k,t}, p_{b,t}) over the
    executed steps (Q22), nats. [B]"""
    p = boxes.z_pres_prob  # [B, T]
    u = count_targets(boxes.counts, p.shape[1])  # [K, T]
    ce = presence_ce(u[None], p[:, None, :]) * boxes.step_mask  # [B, K, T]
    return tf.reduce_min(tf.reduce_sum(ce, -1), -1)


@register("count_margin", batch=True)
def count_margin(boxes):
    """R2: sum_t CE(mean_k u_{k,t}, mean_b p_{b,t}), once per batch (Q21); includes the
    entropy constant sum_t H(mean_k u_{k,t}), nats. Scalar."""
    u_bar = tf.reduce_mean(count_targets(boxes.counts, boxes.z_pres_prob.shape[1]), 0)  # [T]
    p_bar = boxes.batch_mean(boxes.z_pres_prob)  # [T]
    return tf.reduce_sum(presence_ce(u_bar, p_bar) * boxes.step_mask)


@register("presence_entropy")
def presence_entropy(boxes):
    """The code's -gn term: sum_t H(Bernoulli(sigmoid(alpha))) over executed steps, nats. [B]"""
    a = boxes.z_pres_logit
    p = tf.sigmoid(a)
    h = p * tf.nn.softplus(-a) + (1.0 - p) * tf.nn.softplus(a)
    return tf.reduce_sum(h * boxes.step_mask, -1)
