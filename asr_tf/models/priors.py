"""What the priors of both models share: the fixed scale prior, the logit that fixes presence,
the stopping rule, and how a batch of generated scenes is spread over object counts.

Below ``base``, ``air`` and ``pprior``: each model imports these, neither imports the other.
"""
import numpy as np
import tensorflow as tf

SCALE_PRIOR_LOC = -1.0  # the fixed scale prior N(-1, 0.05) over the pre-sigmoid scale (Q12)
SCALE_PRIOR_VAR = 0.05
FIXED_LOGIT = 100.0  # a z_pres prior logit that fixes presence: +100 present, -100 absent


def stop_rule(stop_sum, z_pres, threshold):
    """One step of the stopping rule: the running sum of (1 - z_pres) after this step, and
    whether this step's object is present (the sum still below ``threshold``); all [B].
    Returns (stop_sum, present)."""
    stop_sum = stop_sum + (1.0 - z_pres)
    return stop_sum, tf.cast(stop_sum < threshold, tf.float32)


def generation_counts(counts, num):
    """The one rule that spreads a batch of generated scenes over object counts (evaluation
    grids, figures and the exported ``generate`` alike): scene n gets ``counts[n % K]``.

    Args:
      counts: K allowed counts (Python ints); num: N, a Python int or a scalar int tensor.
    Returns:
      [N] int32.
    """
    counts = tf.constant([int(c) for c in counts], tf.int32)  # [K]
    return tf.gather(counts, tf.math.floormod(tf.range(num), tf.size(counts)))


def per_scene_count(count, num, max_glimpses):
    """``generate``'s ``count`` argument as [num] int32: an int for every scene (ValueError
    outside 1..max_glimpses), or [num] ints as they are."""
    if isinstance(count, (int, np.integer)):
        if not 1 <= count <= max_glimpses:
            raise ValueError(f"count={count} must be in 1..{max_glimpses}")
        return tf.fill([num], tf.constant(int(count), tf.int32))
    return tf.cast(count, tf.int32)


def fixed_presence_logit(t, count):
    """The prior logit that fixes presence at glimpse step ``t``: +FIXED_LOGIT where ``t <
    count`` (present), -FIXED_LOGIT after; the shape of ``count`` (or of ``t``)."""
    return tf.where(t < count, FIXED_LOGIT, -FIXED_LOGIT)
