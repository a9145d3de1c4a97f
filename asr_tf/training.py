"""The optimisation step (spec §7, Q42): Adam, per-variable NaN/Inf zeroing and clipping.

``train_step`` is a module-level ``tf.function``; ``jit_compile=True`` compiles
the forward/backward/update with XLA and gives the same numbers (the noise is
drawn outside the compiled part, from a checkpointable ``tf.random.Generator``).
"""
import gin
import keras
import numpy as np
import tensorflow as tf

from asr_tf import objectives


class RateSchedule:
    """Piecewise-constant learning rate: ``base`` until step ``steps[0]``, then ``base *
    factors[0]`` until ``steps[1]``, ... (a plain object: nothing of it is checkpointed)."""

    def __init__(self, base, steps=(), factors=()):
        self.base, self.steps = float(base), tuple(int(s) for s in steps)
        self.factors = tuple(float(f) for f in factors)
        if len(self.steps) != len(self.factors) or list(self.steps) != sorted(set(self.steps)):
            raise ValueError(f"learning-rate decay steps {self.steps} must increase and match the "
                             f"factors {self.factors} one to one")

    def __call__(self, step):
        """The rate for the update that makes training step ``step + 1`` (after ``step`` done)."""
        k = sum(int(step) >= s for s in self.steps)
        return self.base * (self.factors[k - 1] if k else 1.0)


@gin.configurable
def make_optimizer(model, learning_rate=1e-4, epsilon=1e-8, decay_steps=(), decay_factors=()):
    """Adam(lr 1e-4 as the code, Q11; the paper says 1e-3), beta (0.9, 0.999), eps 1e-8 (TF1).

    ``decay_steps`` / ``decay_factors``: an optional schedule (neither the paper nor the code
    has one), the rate times ``decay_factors[i]`` from step ``decay_steps[i]`` on. The training
    loop sets the rate from ``optimizer.rate_schedule`` before every update, so the configured
    rate (and schedule) holds on resume whatever rate the checkpoint holds. Built on the
    model's variables here: no optimizer slot may be created inside a tf.function.
    """
    schedule = RateSchedule(learning_rate, decay_steps, decay_factors)
    optimizer = keras.optimizers.Adam(learning_rate=learning_rate, beta_1=0.9, beta_2=0.999,
                                      epsilon=epsilon)
    optimizer.build(model.trainable_variables)
    optimizer.rate_schedule = schedule
    return optimizer


def set_learning_rate(optimizer, step):
    """Assigns ``optimizer.rate_schedule(step)`` if it differs (a variable: no retracing)."""
    rate = optimizer.rate_schedule(step)
    if float(optimizer.learning_rate.numpy()) != np.float32(rate):
        optimizer.learning_rate.assign(rate)


def process_gradients(grads, per_variable=True, clip_norm=1.0):
    """Inf -> 0, NaN -> 0 elementwise, then clip_by_norm per variable (Q42) or by global norm."""
    clean = [tf.where(tf.math.is_finite(g), g, tf.zeros_like(g)) for g in grads]
    if per_variable:
        return [tf.clip_by_norm(g, clip_norm) for g in clean]
    clipped, _ = tf.clip_by_global_norm(clean, clip_norm)
    return clipped


def _loss_and_grads(model, images, noise, step, weights):
    with tf.GradientTape() as tape:
        outputs = model(images, noise, step=step, training=True)
        loss, scalars = objectives.total_loss(images, outputs, weights, model.canvas_px,
                                              model.quirks)
    grads = tape.gradient(loss, model.trainable_variables)  # None for unused heads (Q12)
    return grads, scalars, outputs


def _apply(model, optimizer, images, noise, step, weights):
    grads, scalars, outputs = _loss_and_grads(model, images, noise, step, weights)
    pairs = [(g, v) for g, v in zip(grads, model.trainable_variables) if g is not None]
    grads = process_gradients([g for g, _ in pairs], model.quirks.per_variable_clip)
    optimizer.apply_gradients(zip(grads, [v for _, v in pairs]))
    scalars["steps_executed"] = tf.cast(outputs["steps_executed"], tf.float32)
    scalars["count_mean"] = tf.reduce_mean(tf.cast(outputs["count"], tf.float32))
    return scalars


_apply_jit = tf.function(_apply, jit_compile=True)


@tf.function
def train_step(model, optimizer, generator, batch, step, weights, jit_compile=False):
    """One update on ``batch['image']`` [B, S, S, 1]. Returns a dict of scalar logs."""
    images = batch["image"]
    noise = model.sample_noise(images.shape[0], generator)
    fn = _apply_jit if jit_compile else _apply
    return fn(model, optimizer, images, noise, step, weights)


@tf.function
def eval_step(model, images, noise, step):
    """One test pass (hard z_pres, Q25-Q27) with the given noise. Returns (outputs, terms [B])."""
    outputs = model(images, noise, step=step, training=False)
    terms = objectives.negative_elbo(images, outputs)
    terms["se"] = objectives.squared_error(images, outputs["recon"])
    return outputs, terms
