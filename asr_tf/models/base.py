"""The glimpse loop shared by AIR and AIR-pPrior/ASR (spec §4.2 loop control, Q15-Q17).

The loop runs at most ``max_steps`` steps and continues while *any* item of the
batch is still active (running stop sum below the threshold), as the original's
batch-dependent ``while``. Stopped items keep being computed; their
contributions are masked per item. Everything is a ``tf.while_loop`` with fixed
shapes, so it traces once and compiles with XLA.

All randomness enters through a ``noise`` dict drawn outside the model
(:meth:`GlimpseModel.sample_noise`), so a forward pass is a pure function of the
weights, the images and the noise: jit and non-jit steps agree, and tests can
fix the noise.
"""
import keras
import tensorflow as tf
import tensorflow_probability as tfp

from asr_tf.nn import concrete
from asr_tf.nn import transformer
from asr_tf.quirks import Quirks

tfd = tfp.distributions

# Per-step records stacked to [B, T, ...] after the loop (trailing shape per key).
RECORD_KEYS = ("z_pres", "z_pres_prob", "z_pres_logit", "prior_logit", "kl_pres",
               "kl_scale", "kl_shift", "kl_what", "present", "scale", "shift", "z_what")


def masked_normal_kl(q_loc, q_scale, p_loc, p_scale, mask):
    """Analytic KL(N(q) || N(p)) summed over the last axis, zero where ``mask`` is 0.

    Masked items get their inputs replaced by N(0,1) before the KL is computed,
    so a diverged posterior of a stopped item cannot produce inf (and 0 x inf =
    NaN in the gradient).

    Args:
      q_loc, q_scale, p_loc, p_scale: [B, D] (p may broadcast).
      mask: [B] float in {0, 1}.
    Returns:
      [B] KL values.
    """
    on = tf.cast(mask, tf.bool)[:, None]  # [B, 1]
    shape = tf.shape(q_loc)

    def safe(v, fill):
        return tf.where(on, tf.broadcast_to(v, shape), fill)

    kl = tfd.kl_divergence(tfd.Normal(safe(q_loc, 0.0), safe(q_scale, 1.0)),
                           tfd.Normal(safe(p_loc, 0.0), safe(p_scale, 1.0)))  # [B, D]
    return tf.reduce_sum(kl, -1) * tf.cast(mask, kl.dtype)


def masked_concrete_kl(y, alpha_q, alpha_p, temperature, mask):
    """One-sample z_pres KL at relaxed logit ``y`` [B], zero (with safe inputs) where mask is 0."""
    on = tf.cast(mask, tf.bool)
    zeros = tf.zeros_like(y)
    kl = concrete.kl_estimate(tf.where(on, y, zeros), tf.where(on, alpha_q, zeros),
                              tf.where(on, alpha_p, zeros), temperature)
    return kl * tf.cast(mask, kl.dtype)


class GlimpseModel(keras.Model):
    """Base class: the stopping loop, canvas, masks and records.

    Subclasses define ``_init_carry(images_flat)`` and
    ``_step(t, carry, images, image_ctx, noise_t, step, training) -> (carry, record)``;
    ``carry`` must hold ``stop_sum`` [B], ``canvas`` [B, S, S] and ``count`` [B].
    """

    def __init__(self, canvas_px, max_steps=6, glimpse_px=28, z_what_dim=50,
                 z_pres_temperature=0.1, stop_threshold=0.9, decoder_noise=0.0,
                 quirks=None, name="glimpse_model", **kwargs):
        super().__init__(name=name, **kwargs)
        if max_steps < 1:
            raise ValueError(f"max_steps={max_steps} must be >= 1")
        self.canvas_px = int(canvas_px)
        self.max_steps = int(max_steps)
        self.glimpse_px = int(glimpse_px)
        self.z_what_dim = int(z_what_dim)
        self.z_pres_temperature = float(z_pres_temperature)
        self.stop_threshold = float(stop_threshold)
        self.decoder_noise = float(decoder_noise)
        self.quirks = quirks or Quirks()

    # ----------------------------------------------------------------- noise
    def noise_shapes(self, batch):
        """Shapes of the per-pass noise, leading [T, B]."""
        t = self.max_steps
        shapes = {"u_pres": [t, batch], "eps_shift": [t, batch, 2], "eps_scale": [t, batch, 1],
                  "eps_what": [t, batch, self.z_what_dim]}
        if self.decoder_noise > 0:
            shapes["eps_pix"] = [t, batch, self.glimpse_px ** 2]
        return shapes

    def sample_noise(self, batch, generator):
        """Draws the noise for one forward pass from a ``tf.random.Generator``."""
        out = {}
        for key, shape in self.noise_shapes(batch).items():
            if key == "u_pres":
                out[key] = generator.uniform(shape)
            else:
                out[key] = generator.normal(shape)
        return out

    # Generation draws its glimpse-pixel noise under this key: Bernoulli thresholds (pPrior/ASR,
    # Q36) or decoder logit noise (AIR, Q32).
    GEN_PIXEL_NOISE = ("u_pix", "uniform")

    def generation_noise(self, num, generator):
        """Noise for :meth:`generate` of ``num`` scenes, leading [T, num]."""
        t, g2 = self.max_steps, self.glimpse_px ** 2
        key, kind = self.GEN_PIXEL_NOISE
        return {"u_pres": generator.uniform([t, num]), "eps_shift": generator.normal([t, num, 2]),
                "eps_scale": generator.normal([t, num, 1]),
                "eps_what": generator.normal([t, num, self.z_what_dim]),
                key: getattr(generator, kind)([t, num, g2])}

    # ------------------------------------------------------------ components
    def _glimpse_and_render(self, images, scale, shift, eps_what, eps_pix, training):
        """Cuts the window, encodes it, decodes and renders it back.

        Args:
          images: [B, S, S]; scale [B]; shift [B, 2]; eps_what [B, z]; eps_pix [B, G*G] or None.
        Returns:
          (q(z_what), z_what [B, z], rendered [B, S, S])
        """
        edge = self.quirks.sampler_edge
        window = transformer.extract_glimpse(images, scale, shift, self.glimpse_px, edge)  # [B, G, G]
        window_flat = tf.reshape(window, [-1, self.glimpse_px ** 2])
        if self.quirks.deterministic_eval and not training:
            eps_what = tf.zeros_like(eps_what)
        q_what, z_what, p_glimpse = self.vae(window_flat, eps_what)
        logits = p_glimpse.distribution.logits  # [B, G*G]
        if eps_pix is not None:
            logits = logits + self.decoder_noise * eps_pix  # Q32 (AIR)
        out = tf.reshape(tf.sigmoid(logits), [-1, self.glimpse_px, self.glimpse_px])
        rendered = transformer.render_glimpse(out, scale, shift, self.canvas_px, edge)  # [B, S, S]
        return q_what, z_what, rendered

    def _z_pres(self, alpha_q, u, training):
        """Relaxed (train) or hard (test, Q25) z_pres and its relaxed logit y, all [B]."""
        y = concrete.sample_logit(alpha_q, self.z_pres_temperature, u)
        if training:
            z = tf.sigmoid(y)
        else:
            z = concrete.hard_z(y, alpha_q, self.quirks.deterministic_eval)
        return y, z

    def _advance(self, carry, z, rendered):
        """Stop-sum, presence mask, count and canvas update (spec §4.2 steps 13-14).

        Returns (carry, present [B], active_before [B]).
        """
        active_before = tf.cast(carry["stop_sum"] < self.stop_threshold, tf.float32)  # [B]
        stop_sum = carry["stop_sum"] + (1.0 - z)
        present = tf.cast(stop_sum < self.stop_threshold, tf.float32)  # [B]
        canvas = carry["canvas"] + (present * z)[:, None, None] * rendered
        carry = dict(carry, stop_sum=stop_sum, canvas=canvas, count=carry["count"] + present)
        return carry, present, active_before

    def _record_shapes(self):
        """Trailing shape of each per-step record (after [T, B])."""
        extra = {"shift": [2], "z_what": [self.z_what_dim]}
        return {k: extra.get(k, []) for k in RECORD_KEYS}

    # ------------------------------------------------------------------ loop
    def _active(self, carry):
        return tf.reduce_any(carry["stop_sum"] < self.stop_threshold)

    def _while_loop(self, carry, images2d, image_ctx, noise, step, training, batch, active):
        """tf.while_loop over steps; records [T, B, ...] scattered per step, returned [B, T, ...]."""
        t_max = self.max_steps
        records = {k: tf.zeros([t_max, batch] + shape) for k, shape in self._record_shapes().items()}

        def body(t, carry, records):
            noise_t = {k: v[t] for k, v in noise.items()}
            carry, rec = self._step(t, carry, images2d, image_ctx, noise_t, step, training)
            records = {k: tf.tensor_scatter_nd_update(records[k], [[t]], rec[k][None])
                       for k in records}
            return t + 1, carry, records

        t_exec, carry, records = tf.while_loop(lambda t, c, r: active(c), body,
                                               (tf.constant(0), carry, records),
                                               maximum_iterations=t_max)
        records = {k: tf.transpose(v, [1, 0] + list(range(2, v.shape.rank)))
                   for k, v in records.items()}
        return t_exec, carry, records

    def call(self, images, noise, step=0, training=True, all_steps=False):
        """One inference pass.

        Args:
          images: [B, S, S, 1] float in [0, 1].
          noise: dict from :meth:`sample_noise`.
          step: global training step (AIR's annealed prior uses it).
          training: relaxed z_pres if True, hard z_pres (test model) if False.
          all_steps: run all ``max_steps`` steps even once every item has stopped (stopped
            items stay masked as usual). For asr_tf.distribute, where the executed steps are
            decided over the global batch: ``step_mask`` and ``steps_executed`` still give the
            steps this batch alone runs, min(T, 1 + max count), but the records after them are
            not zero; the caller masks them.
        Returns:
          dict with ``canvas`` [B, S, S] (unclipped), ``recon`` [B, S, S] clipped to [0,1],
          ``count`` [B] int32, ``step_mask`` [T] float (1 for executed steps),
          ``steps_executed`` scalar int32, and the records of RECORD_KEYS, each [B, T, ...].
        """
        s = self.canvas_px
        if images.shape.rank != 4 or images.shape[1] != s or images.shape[2] != s:
            raise ValueError(f"images must be [B, {s}, {s}, 1], got {images.shape}")
        images2d = images[..., 0]  # [B, S, S]
        batch = tf.shape(images)[0]
        image_ctx = self._image_context(tf.reshape(images2d, [batch, s * s]))
        carry = self._init_carry(batch)
        carry.update(stop_sum=tf.zeros([batch]), canvas=tf.zeros([batch, s, s]),
                     count=tf.zeros([batch]))
        step = tf.cast(step, tf.float32)
        t_max = self.max_steps
        active = (lambda c: tf.constant(True)) if all_steps else self._active
        t_exec, carry, records = self._while_loop(carry, images2d, image_ctx, noise, step,
                                                  training, batch, active)
        if all_steps:  # the loop's own stopping point: item b needs steps 0..count_b
            t_exec = tf.minimum(t_max, 1 + tf.cast(tf.reduce_max(carry["count"]), tf.int32))
        step_mask = tf.cast(tf.range(t_max) < t_exec, tf.float32)  # [T]
        out = dict(records)  # each [B, T, ...], zeros at steps not executed
        out.update(canvas=carry["canvas"], recon=tf.clip_by_value(carry["canvas"], 0.0, 1.0),
                   count=tf.cast(carry["count"], tf.int32), step_mask=step_mask,
                   steps_executed=t_exec)
        return out
