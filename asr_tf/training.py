"""The optimisation step (docs/ORIGINAL.md §7, Q42): one train step for every tf.distribute
strategy.

``train_step`` is a module-level ``tf.function``. One process is the default strategy (the
same code, no special case): the replica function then runs alone and, with
``jit_compile=True``, XLA-compiled. Under MirroredStrategy / MultiWorkerMirroredStrategy
(asr_tf/run/distribute.py) the step is the single-process step on the global batch B, computed by
n replicas of B/n images each:

* Noise. The global noise [T, B, ...] is drawn once from the run's generator in cross-replica
  context (the single-process draws); each replica keeps the rows of its data shard.
* Glimpse steps. The loop runs while *any* image of the batch is active, and the constraints
  run over every executed step (Q16, Q17): both are properties of the global batch. With
  several replicas each runs all T steps (``all_steps``), the executed steps of the global
  batch are all-reduced and every record after them is zeroed (an all-reduce in the loop
  condition is refused by tf.distribute: no collectives in control flow).
* Loss. Each replica's loss is its per-image sum over the *global* B plus the batch
  constraints over n, whose batch means (``Boxes.batch_mean``) are all-reduced; the gradient
  of an all-reduce is the all-reduce of the gradient, so the replicas' gradients add up to
  the single-process gradient (R2 included).
* Update. The replica gradients are all-reduced (SUM) first, then ``apply_update`` zeroes
  NaN/Inf and clips per variable (Q42) on the global gradient, identically on every replica,
  and applies Adam. Keras would all-reduce again inside ``apply_gradients`` in a replica
  context; distribute.Distributed turns that off for our optimizer.

Hence the loss and update equal the single-process ones on the same weights, data and noise up
to float summation order (tests/test_distribute.py). All model randomness is drawn outside the
compiled part from a checkpointable ``tf.random.Generator``.
"""
import gin
import keras
import tensorflow as tf

from asr_tf import objectives
from asr_tf.models.base import RECORD_KEYS


def rate_schedule(learning_rate, decay_steps=(), decay_factors=()):
    """The piecewise-constant rate as a Keras schedule of the optimizer's ``iterations`` (the
    updates done before this one): ``learning_rate`` until ``decay_steps[0]``, then
    ``learning_rate * decay_factors[0]`` until ``decay_steps[1]``, and so on."""
    steps, factors = tuple(int(s) for s in decay_steps), tuple(float(f) for f in decay_factors)
    if len(steps) != len(factors) or list(steps) != sorted(set(steps)):
        raise ValueError(f"learning-rate decay steps {steps} must increase and match the "
                         f"factors {factors} one to one")
    rate = float(learning_rate)
    if not steps:  # PiecewiseConstantDecay needs a boundary
        return keras.optimizers.schedules.PiecewiseConstantDecay([0], [rate, rate])
    # rates[i + 1] once iterations > boundaries[i]: from update number decay_steps[i] on
    return keras.optimizers.schedules.PiecewiseConstantDecay(
        [s - 1 for s in steps], [rate] + [rate * f for f in factors])


@gin.configurable
def make_optimizer(model, learning_rate=1e-4, epsilon=1e-8, decay_steps=(), decay_factors=()):
    """Adam(lr 1e-4 as the code, Q11; the paper says 1e-3), beta (0.9, 0.999), eps 1e-8 (TF1).

    ``decay_steps`` / ``decay_factors``: an optional schedule (neither the paper nor the code
    has one), the rate times ``decay_factors[i]`` from step ``decay_steps[i]`` on
    (``rate_schedule``). The rate is a Keras schedule of the checkpointed ``iterations``, and
    nothing of the schedule is checkpointed: on resume the configured rate and schedule hold,
    whatever the earlier invocations used (tests/test_training_step.py). Built on the model's
    variables here: no optimizer slot may be created inside a tf.function.
    """
    schedule = rate_schedule(learning_rate, decay_steps, decay_factors)
    optimizer = keras.optimizers.Adam(learning_rate=schedule, beta_1=0.9, beta_2=0.999,
                                      epsilon=epsilon)
    optimizer.build(model.trainable_variables)
    optimizer.rate_schedule = schedule
    return optimizer


def update_rate(optimizer, step):
    """The learning rate of the update that made training step ``step`` (1-based)."""
    return float(optimizer.rate_schedule(step - 1))


# Tensors of at least this many elements get their squared norm from a matrix-vector product.
MATVEC_NORM_MIN_SIZE = 1 << 16


def squared_norm(g):
    """sum(g ** 2), a scalar. A tensor of rank >= 2 and at least MATVEC_NORM_MIN_SIZE elements
    sums its rows as a product with a vector of ones, [-1, n] x [n]: XLA:CPU emits a full
    reduction as one sequential loop (2.2 ms for the 2.56 M gradient of the image projection)
    and a dot as a vectorized, threaded kernel (0.5 ms, square included; docs/PERFORMANCE.md,
    "Clip norms as a matrix-vector product"). The same sum in another order."""
    if g.shape.rank is None or g.shape.rank < 2 or g.shape.num_elements() is None or \
            g.shape.num_elements() < MATVEC_NORM_MIN_SIZE:
        return tf.reduce_sum(tf.square(g))
    rows = tf.reshape(tf.square(g), [-1, g.shape[-1]])  # [m, n]
    return tf.reduce_sum(tf.linalg.matvec(rows, tf.ones([g.shape[-1]], g.dtype)))


def clip_by_norm(g, clip_norm):
    """``tf.clip_by_norm`` (the same formula: g * clip_norm / max(|g|, clip_norm), |g| = 0 kept
    safe) with the norm of :func:`squared_norm`."""
    l2sum = squared_norm(g)
    positive = l2sum > 0
    l2norm = tf.where(positive, tf.sqrt(tf.where(positive, l2sum, tf.ones_like(l2sum))), l2sum)
    return g * clip_norm / tf.maximum(l2norm, clip_norm)


def process_gradients(grads, per_variable=True, clip_norm=1.0, groups=()):
    """Inf -> 0, NaN -> 0 elementwise, then clip by norm per variable (Q42) or by global norm.

    ``groups``: tuples of indices into ``grads`` clipped per variable as one tensor (their
    joint norm, Q45: the original's one LSTM kernel held here as blocks)."""
    clean = [tf.where(tf.math.is_finite(g), g, tf.zeros_like(g)) for g in grads]
    if per_variable:
        out = [clip_by_norm(g, clip_norm) for g in clean]
        for group in groups:
            norm = tf.sqrt(tf.add_n([squared_norm(clean[i]) for i in group]))
            for i in group:
                out[i] = clean[i] * clip_norm / tf.maximum(norm, clip_norm)
        return out
    global_norm = tf.sqrt(tf.add_n([squared_norm(g) for g in clean]))
    clipped, _ = tf.clip_by_global_norm(clean, clip_norm, use_norm=global_norm)
    return clipped


def apply_update(optimizer, grads, variables, per_variable_clip=True, clip_groups=()):
    """The update: NaN/Inf zeroing and clipping (``process_gradients``), then Adam. ``grads``
    holds None for variables without a gradient (unused heads, Q12): they are left alone.
    ``clip_groups``: lists of variables clipped as one tensor (``GlimpseModel.clip_groups``)."""
    pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
    index = {id(v): i for i, (_, v) in enumerate(pairs)}
    groups = [tuple(index[id(v)] for v in group) for group in clip_groups]
    clipped = process_gradients([g for g, _ in pairs], per_variable_clip, groups=groups)
    optimizer.apply_gradients(zip(clipped, [v for _, v in pairs]))


def _mask_to_steps(outputs, step_mask):
    """Zeroes the per-step records [B, T, ...] after the global batch's executed steps."""
    out = dict(outputs)
    for k in RECORD_KEYS:
        v = outputs[k]
        out[k] = v * tf.reshape(step_mask, [1, -1] + [1] * (v.shape.rank - 2))
    out["step_mask"] = step_mask
    out["steps_executed"] = tf.cast(tf.reduce_sum(step_mask), tf.int32)
    return out


def _replica_update(model, optimizer, batch, noise, step, objective, global_batch, num_replicas):
    """One replica's share of the update on the global batch; returns global-batch logs."""
    ctx = tf.distribute.get_replica_context()
    images = batch["image"]  # [B/n, S, S, C]
    replica_batch = global_batch // num_replicas
    shard = batch.get("shard", 0)  # one process: a plain pipeline batch will do
    noise = {k: tf.reshape(v, [v.shape[0], num_replicas, replica_batch] + v.shape[2:].as_list())[
        :, shard] for k, v in noise.items()}  # [T, B/n, ...]: this replica's rows

    def all_sum(value):
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM, value)

    def batch_mean(value):  # [B/n, ...] -> [...], the mean over the global batch
        return all_sum(tf.reduce_sum(value, 0)) / global_batch

    variables = model.trainable_variables
    several = num_replicas > 1
    with tf.GradientTape() as tape:
        outputs = model(images, noise, step=step, training=True, all_steps=several)
        if several:
            with tape.stop_recording():
                ran = tf.cast(tf.range(model.max_glimpses) < outputs["steps_executed"], tf.float32)
                step_mask = tf.cast(all_sum(ran) > 0, tf.float32)  # [T], the global batch's
            outputs = _mask_to_steps(outputs, step_mask)
        loss, per_image, batch_terms = objectives.total_loss(
            images, outputs, objective, model.canvas_px, model.quirks, batch_mean=batch_mean,
            global_batch=global_batch, num_replicas=num_replicas)
    grads = tape.gradient(loss, variables)  # None for unused heads (Q12)
    present = [g for g in grads if g is not None]
    sums = {k: tf.reduce_sum(v) for k, v in per_image.items()}
    sums["count_mean"] = tf.reduce_sum(tf.cast(outputs["count"], tf.float32))
    reduced, sums, loss = all_sum((present, sums, loss))
    # Non-finite entries of the raw (global) gradient, which the update's guard zeroes (Q42):
    # a run that keeps producing them has locked up, as the original can.
    nonfinite = tf.add_n([tf.reduce_sum(tf.cast(~tf.math.is_finite(g), tf.float32))
                          for g in reduced])
    it = iter(reduced)
    apply_update(optimizer, [None if g is None else next(it) for g in grads], variables,
                 model.quirks.per_variable_clip, model.clip_groups())
    logs = {k: v / global_batch for k, v in sums.items()}
    logs.update(batch_terms)
    logs["loss"] = loss
    logs["steps_executed"] = tf.cast(outputs["steps_executed"], tf.float32)
    logs["nonfinite_grad_entries"] = nonfinite
    logs["nonfinite_grad_steps"] = tf.cast(nonfinite > 0, tf.float32)  # its mean: the share
    return logs


_replica_update_jit = tf.function(_replica_update, jit_compile=True)


@tf.function
def train_step(model, optimizer, generator, batch, step, objective, strategy=None,
               global_batch=None, jit_compile=False):
    """One update on the global batch of ``global_batch`` images.

    Args:
      batch: this process's per-replica batches (dicts with ``image`` [B/n, S, S, C] and
        ``shard``, the replica's rows of the global batch; distribute.Distributed.dataset).
        One process: any dict with ``image`` [B, S, S, C].
      step: int64 scalar, the training step before this update.
      objective: objectives.Objective.
      strategy: a tf.distribute.Strategy; None: this process alone (the default strategy).
      global_batch: B (None: one process, the batch's size).
      jit_compile: XLA-compile the replica step (one process only).
    Returns:
      per-replica dicts of scalar logs (global-batch values; ``distribute.local_value``).
    """
    strategy = strategy or tf.distribute.get_strategy()
    n = strategy.num_replicas_in_sync
    if global_batch is None:
        if n > 1:
            raise ValueError("train_step: give global_batch under a strategy with several replicas")
        global_batch = int(batch["image"].shape[0])
    with strategy.scope():  # cross-replica draws: the single-process noise
        noise = model.sample_noise(global_batch, generator)
    update = _replica_update_jit if jit_compile else _replica_update
    return strategy.run(
        lambda b, z, s: update(model, optimizer, b, z, s, objective, global_batch, n),
        args=(batch, noise, step))


@tf.function
def eval_step(model, images, noise, step, deterministic=False):
    """One test pass (hard z_pres, Q25-Q27) with the given noise. Returns (outputs, terms [B]).

    ``deterministic`` (a Python bool: one trace each): means and z_pres thresholded at 0.5
    instead of one stochastic pass, whatever ``Quirks.deterministic_eval`` says."""
    outputs = model(images, noise, step=step, training=False, deterministic=deterministic)
    terms = objectives.negative_elbo(images, outputs)
    terms["se"] = objectives.squared_error(images, outputs["recon"])
    return outputs, terms
