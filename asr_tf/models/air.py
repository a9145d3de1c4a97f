"""Plain AIR baseline (docs/ORIGINAL.md §5, quirks Q32-Q34).

One 256-unit LSTM that sees only the image at every step (no feedback of z,
Q33); scale and shift are independent given h; fixed priors scale N(-1, 0.05),
shift N(0, 1), what N(0, I); decoder logit noise 0.3 at train and test (Q32);
z_pres prior log-odds annealed with the global step (``PresencePriorSchedule``, gin),
plus the +-100 per-step biases of ``-ap`` that fix the count (Q34).
"""
import dataclasses
import math

import gin

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from asr_tf.models.base import (MEAN, GlimpseModel, flat, masked_concrete_kl, masked_normal_kl,
                                unflat)
from asr_tf.models.priors import (FIXED_LOGIT, SCALE_PRIOR_LOC, SCALE_PRIOR_VAR, generation_counts,
                                  per_scene_count)
from asr_tf.nn import rnn
from asr_tf.nn import transformer
from asr_tf.nn.vae import GlimpseVAE

tfd = tfp.distributions


ANNEAL_EPS = 1e-9  # the original adds it to the odds before the log


def annealed_prior_logit(step, start_odds=1e4, steps_per_decade=3000.0, floor_odds=1e-9):
    """AIR's z_pres prior log-odds at global step k (docs/ORIGINAL.md §5):
    ln(max(start_odds * 0.1^(k / steps_per_decade), floor_odds) + 1e-9).

    Smooth in k. The original's values: 9.2103 at k=0, 0 at k=12,000, floored at
    ln(2e-9) = -20.03 from k ~ 39,000.
    """
    step = tf.cast(step, tf.float32)
    odds = tf.maximum(start_odds * tf.pow(0.1, step / steps_per_decade), floor_odds)
    return tf.math.log(odds + ANNEAL_EPS)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class PresencePriorSchedule:
    """The annealed z_pres prior of plain AIR: its odds fall tenfold every ``steps_per_decade``
    iterations from ``start_odds`` until they reach ``floor_odds`` (docs/ORIGINAL.md §5; the
    original's ``annealing_schedules`` entry: init 1e4, factor 0.1, iters 3000, min 1e-9, log).

    Attributes:
      start_odds: prior odds of presence at step 0 (1e4: log-odds 9.21).
      steps_per_decade: iterations per tenfold fall of the odds (3000).
      floor_odds: the lowest odds (1e-9: log-odds ln(2e-9) = -20.03, from step 39,000).
    """
    start_odds: float = 1e4
    steps_per_decade: float = 3000.0
    floor_odds: float = 1e-9

    def __post_init__(self):
        for name in ("start_odds", "steps_per_decade", "floor_odds"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"PresencePriorSchedule.{name}={value!r} must be a finite number > 0")

    @property
    def floor_step(self):
        """The first step at which the odds sit on the floor (0 if they start there)."""
        return max(0.0, self.steps_per_decade * math.log10(self.start_odds / self.floor_odds))

    def logit(self, step):
        """The prior log-odds at global step ``step`` (scalar float32 tensor)."""
        return annealed_prior_logit(step, self.start_odds, self.steps_per_decade, self.floor_odds)


def count_prior_bias(counts, max_glimpses):
    """Per-step ``-ap`` biases from the allowed counts (docs/ORIGINAL.md §5).

    The target at step t is P(count > t | count > t-1) over the allowed counts;
    1 becomes +100, 0 becomes -100 and a fraction q becomes ln(q / (1 - q)).
    [3] -> [+100, +100, +100, -100, -100, -100]; [1, 3] -> [+100, 0, +100, -100, ...].

    Returns:
      [max_glimpses] float32 numpy array.
    """
    counts = np.asarray(sorted(counts))
    bias = np.zeros(max_glimpses, np.float32)
    for t in range(max_glimpses):
        alive = counts > t - 1 if t > 0 else np.ones_like(counts, bool)
        q = float(np.mean(counts[alive] > t)) if alive.any() else 0.0
        if q >= 1.0:
            bias[t] = FIXED_LOGIT
        elif q <= 0.0:
            bias[t] = -FIXED_LOGIT
        else:
            bias[t] = math.log(q / (1.0 - q))
    return bias


class AIRNet(keras.Model):
    """The AIR LSTM over the image only, with independent scale/shift/z_pres heads."""

    def __init__(self, image_dim, units=256, head_units=64, orthogonal_recurrent=False,
                 scale_bias_init=0.0, fused_init=False, name="air_rnn", **kwargs):
        super().__init__(name=name, **kwargs)
        self.units = units
        self.lstm = rnn.LSTMCore(units, (image_dim,), orthogonal_recurrent, fused_init)
        self.scale_loc = rnn.mlp_head(head_units, 1, units, "scale_loc", out_bias=scale_bias_init)
        self.scale_log_var = rnn.mlp_head(head_units, 1, units, "scale_log_var")
        self.shift_loc = rnn.mlp_head(head_units, 2, units, "shift_loc")
        self.shift_log_var = rnn.mlp_head(head_units, 2, units, "shift_log_var")
        self.z_pres = rnn.mlp_head(head_units, 1, units, "z_pres")
        self.built = True  # every sub-layer is built above: nothing left for the first call

    def project_image(self, images_flat):
        return self.lstm.project(0, images_flat)  # [B, 4u]

    def call(self, image_proj, state):
        return self.lstm(image_proj, state)

    def where_posterior(self, h):
        """(q(zeta) Normal [B, 1], q(xi) Normal [B, 2]) from h only."""
        scale = tfd.Normal(self.scale_loc(h), tf.exp(0.5 * self.scale_log_var(h)))
        shift = tfd.Normal(self.shift_loc(h), tf.exp(0.5 * self.shift_log_var(h)))
        return scale, shift

    def z_pres_logit(self, h):
        return self.z_pres(h)[:, 0]


class AIR(GlimpseModel):
    """Plain AIR (``kind`` 'air').

    ``counts``: the data set's allowed object counts (default 1..max_glimpses): the scenes of
    :meth:`generate` hold them in turn, and ``add_prior`` (the ``-ap`` flag) fixes the count
    to them with +-100 biases. ``zpres_prior`` (a PresencePriorSchedule, default the
    original's) anneals the prior. ``channels``: C, the images' (asr_tf/models/base.py).
    """

    kind = "air"
    GEN_PIXEL_NOISE = ("eps_pix", "normal")

    def __init__(self, canvas_px, max_glimpses=6, z_what_dim=50, lstm_units=256, glimpse_px=28,
                 z_pres_temperature=1.0, stop_threshold=0.99, decoder_noise=0.3, counts=None,
                 add_prior=False, zpres_prior=None, scale_bias_init=0.0, quirks=None, channels=1,
                 name="air", **kwargs):
        super().__init__(canvas_px, max_glimpses, glimpse_px, z_what_dim, z_pres_temperature,
                         stop_threshold, decoder_noise, quirks, channels=channels, name=name,
                         **kwargs)
        self.net = AIRNet(canvas_px * canvas_px * self.channels, lstm_units,
                          orthogonal_recurrent=self.quirks.lstm_orthogonal_recurrent,
                          scale_bias_init=scale_bias_init,
                          fused_init=self.quirks.lstm_fused_kernel)
        self.vae = GlimpseVAE(z_what_dim, glimpse_px, self.channels)
        self.counts = tuple(int(c) for c in (counts or range(1, max_glimpses + 1)))
        bad = [c for c in self.counts if not 1 <= c <= max_glimpses]
        if bad:
            raise ValueError(f"AIR counts {self.counts}: each must be in 1..{max_glimpses}")
        self.add_prior = bool(add_prior)
        self.prior_bias = tf.constant(
            count_prior_bias(self.counts, max_glimpses) if self.add_prior
            else np.zeros(max_glimpses, np.float32))  # [T]
        self.zpres_prior = zpres_prior or PresencePriorSchedule(1e4, 3000.0, 1e-9)  # the original's
        self.built = True  # every variable exists (GlimpseModel: all state is made in __init__)

    def lstm_cores(self):
        return [self.net.lstm]

    def _image_context(self, images_flat):
        return self.net.project_image(images_flat)

    def _init_carry(self, batch):
        zeros = tf.zeros([batch, self.net.units])
        return {"state": (zeros, zeros)}

    def _trace_shapes(self):
        return {"q_scale_loc": [1], "q_scale_scale": [1], "q_shift_loc": [2],
                "q_shift_scale": [2], "z_pres_logit": [], "y": [], "z_pres": [], "scale": [],
                "shift": [2]}

    def _step(self, t, carry, images, image_proj, noise, mode):
        """The LSTM over the image, the where and z_pres heads (nothing is fed back, Q33)."""
        sample = mode != MEAN
        h, state = self.net(image_proj, carry["state"])
        q_scale, q_shift = self.net.where_posterior(h)
        zeta = q_scale.loc + q_scale.scale * noise["eps_scale"] if sample else q_scale.loc  # [B, 1]
        xi = q_shift.loc + q_shift.scale * noise["eps_shift"] if sample else q_shift.loc  # [B, 2]
        alpha_q = self.net.z_pres_logit(h)  # [B]
        y, z = self._z_pres(alpha_q, noise["u_pres"], mode)
        return dict(carry, state=state), {
            "q_scale_loc": q_scale.loc, "q_scale_scale": q_scale.scale,
            "q_shift_loc": q_shift.loc, "q_shift_scale": q_shift.scale, "z_pres_logit": alpha_q,
            "y": y, "z_pres": z, "scale": tf.sigmoid(zeta[:, 0]), "shift": tf.tanh(xi)}

    def _readout(self, images, tr, noise, step, mode):
        """Glimpse encoder (z_what is not fed back in AIR) and the KLs, for all steps at once."""
        t_max = self.max_glimpses
        f = {k: flat(v) for k, v in tr.items()}
        tiled = flat(tf.broadcast_to(images[None], tf.concat([[t_max], tf.shape(images)], 0)))
        what, z_what = self._encode_glimpse(tiled, f["scale"], f["shift"],
                                            flat(noise["eps_what"]), mode)  # [T*B, z]
        logit = self.prior_logit(step)  # [T]
        alpha_p = tf.broadcast_to(logit[:, None], tf.shape(tr["y"]))  # [T, B]
        kl_pres = masked_concrete_kl(f["y"], f["z_pres_logit"], flat(alpha_p),
                                     self.z_pres_temperature, f["active_before"])
        if self.add_prior:  # Q34: after stopping, a KL against a -100 prior
            kl_pres += masked_concrete_kl(f["y"], f["z_pres_logit"],
                                          tf.fill(tf.shape(f["y"]), -FIXED_LOGIT),
                                          self.z_pres_temperature, 1.0 - f["active_before"])
        present = f["present"]
        return {
            "z_pres": tr["z_pres"], "z_pres_prob": tf.sigmoid(tr["z_pres_logit"]),
            "z_pres_logit": tr["z_pres_logit"], "prior_logit": alpha_p,
            "kl_pres": unflat(kl_pres, t_max),
            "kl_scale": unflat(masked_normal_kl(f["q_scale_loc"], f["q_scale_scale"],
                                                SCALE_PRIOR_LOC, math.sqrt(SCALE_PRIOR_VAR),
                                                present), t_max),
            "kl_shift": unflat(masked_normal_kl(f["q_shift_loc"], f["q_shift_scale"], 0.0, 1.0,
                                                present), t_max),
            "kl_what": unflat(masked_normal_kl(what.loc, what.scale, 0.0, 1.0, present), t_max),
            "scale": tr["scale"], "shift": tr["shift"], "z_what": unflat(z_what, t_max),
        }

    def prior_logit(self, step):
        """The z_pres prior log-odds [T] at global step ``step``: the annealed prior plus any
        -ap bias."""
        return self.zpres_prior.logit(step) + self.prior_bias

    def generate(self, noise, count=None):
        """Draws exactly ``count`` objects per scene from the fixed priors; see
        :meth:`GlimpseModel.generate`. AIR's prior does not model the count: ``count`` None
        gives scene n the count ``counts[n % len(counts)]`` (``priors.generation_counts``)."""
        n = tf.shape(noise["u_pres"])[1]
        count = (generation_counts(self.counts, n) if count is None
                 else per_scene_count(count, n, self.max_glimpses))  # [N]
        s = self.canvas_px
        present = tf.cast(tf.range(self.max_glimpses)[None] < count[:, None], tf.float32)  # [N, T]
        canvas = tf.zeros([n, s, s, self.channels])
        scales, shifts = [], []
        for t in range(self.max_glimpses):
            scale = tf.sigmoid(SCALE_PRIOR_LOC + math.sqrt(SCALE_PRIOR_VAR) * noise["eps_scale"][t][:, 0])
            shift = tf.tanh(noise["eps_shift"][t])
            window = self.decode(noise["eps_what"][t], noise["eps_pix"][t])  # [N, G, G, C]
            canvas += present[:, t, None, None, None] * transformer.render_glimpse(
                window, scale, shift, s, self.quirks.sampler_edge)
            scales.append(scale)
            shifts.append(shift)
        return {"images": canvas, "count": count, "scale": tf.stack(scales, 1),
                "shift": tf.stack(shifts, 1), "present": present}
