"""AIR-pPrior, the model under AIR-ASR (docs/ORIGINAL.md §4; ASR = this model + penalties).

Two 256-unit LSTMs. The inference LSTM reads [image, previous z_what, previous
pre-squash where]; the prior LSTM reads the previous *posterior* samples
(teacher forcing, Q14) and gives a learned Gaussian prior over the pre-tanh
shift and the z_pres prior logit (one step late, Q13). The scale prior is fixed
N(-1, 0.05) unless ``Quirks.learned_scale_prior`` (Q12).
"""
import math

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from asr_tf.models.base import (MEAN, GlimpseModel, flat, masked_concrete_kl, masked_normal_kl,
                                unflat)
from asr_tf.models.priors import (SCALE_PRIOR_LOC, SCALE_PRIOR_VAR, fixed_presence_logit,
                                  per_scene_count, stop_rule)
from asr_tf.nn import concrete
from asr_tf.nn import rnn
from asr_tf.nn import transformer
from asr_tf.nn.vae import GlimpseVAE

tfd = tfp.distributions


def _normal_from(loc, log_var):
    return tfd.Normal(loc=loc, scale=tf.exp(0.5 * log_var))


class InferenceRNN(keras.Model):
    """q(z^t | x, z^{<t}): LSTM over [image, z_what_{t-1}, where_{t-1}] and its heads.

    ``call`` returns the new hidden output; the heads return TFP distributions
    (shift, scale | shift) and the z_pres logit.
    """

    def __init__(self, image_dim, z_what_dim=50, units=256, head_units=64,
                 orthogonal_recurrent=False, scale_bias_init=0.0, fused_init=False,
                 name="inference_rnn", **kwargs):
        super().__init__(name=name, **kwargs)
        self.lstm = rnn.LSTMCore(units, (image_dim, z_what_dim + 3), orthogonal_recurrent,
                                 fused_init)
        self.shift_loc = rnn.mlp_head(head_units, 2, units, "shift_loc")
        self.shift_log_var = rnn.mlp_head(head_units, 2, units, "shift_log_var")
        self.scale_hidden_loc = keras.layers.Dense(head_units, activation="relu", name="scale_h_loc")
        self.scale_hidden_log_var = keras.layers.Dense(head_units, activation="relu", name="scale_h_lv")
        self.scale_loc = keras.layers.Dense(
            1, bias_initializer=keras.initializers.Constant(scale_bias_init), name="scale_loc")
        self.scale_log_var = keras.layers.Dense(1, name="scale_log_var")
        for layer in (self.scale_hidden_loc, self.scale_hidden_log_var):
            layer.build((None, units + 2))
        for layer in (self.scale_loc, self.scale_log_var):
            layer.build((None, head_units + 2))
        self.z_pres = rnn.mlp_head(head_units, 1, units, "z_pres")
        self.built = True  # every sub-layer is built above: nothing left for the first call

    def project_image(self, images_flat):
        """[B, S*S*C] -> [B, 4u], computed once per pass (the image is the same at every step)."""
        return self.lstm.project(0, images_flat)

    def call(self, image_proj, z_what_prev, where_prev, state):
        """One LSTM step. Returns (h [B, u], state)."""
        gates = image_proj + self.lstm.project(1, tf.concat([z_what_prev, where_prev], -1))
        return self.lstm(gates, state)

    def shift_posterior(self, h):
        """q(xi | h), xi the pre-tanh shift: Normal [B, 2]."""
        return _normal_from(self.shift_loc(h), self.shift_log_var(h))

    def scale_posterior(self, h, xi):
        """q(zeta | h, xi), zeta the pre-sigmoid scale: Normal [B, 1] (skip-concat of xi)."""
        hx = tf.concat([h, xi], -1)
        loc = self.scale_loc(tf.concat([self.scale_hidden_loc(hx), xi], -1))
        log_var = self.scale_log_var(tf.concat([self.scale_hidden_log_var(hx), xi], -1))
        return _normal_from(loc, log_var)

    def z_pres_logit(self, h):
        return self.z_pres(h)[:, 0]  # [B]


class PriorRNN(keras.Model):
    """p(z^t | z^{<t}): LSTM over [z_what_{t-1}, where_{t-1}] with shift, scale and z_pres heads."""

    def __init__(self, z_what_dim=50, units=256, head_units=64, orthogonal_recurrent=False,
                 fused_init=False, name="prior_rnn", **kwargs):
        super().__init__(name=name, **kwargs)
        self.units = units
        self.lstm = rnn.LSTMCore(units, (z_what_dim + 3,), orthogonal_recurrent, fused_init)
        self.shift_loc = rnn.mlp_head(head_units, 2, units, "shift_loc")
        self.shift_log_var = rnn.mlp_head(head_units, 2, units, "shift_log_var")
        self.scale_loc = rnn.mlp_head(head_units, 1, units, "scale_loc")  # Q12: used only if learned
        self.scale_log_var = rnn.mlp_head(head_units, 1, units, "scale_log_var")
        self.z_pres = rnn.mlp_head(head_units, 1, units, "z_pres")
        self.built = True  # every sub-layer is built above: nothing left for the first call

    def call(self, z_what_prev, where_prev, state):
        """One LSTM step. Returns (g [B, u], state)."""
        return self.lstm(self.lstm.project(0, tf.concat([z_what_prev, where_prev], -1)), state)

    def run(self, fed):
        """All steps from zero state: ``fed`` [T, B, z + 3] the inputs of each step -> g [T, B, u].
        The input projection is one [T*B] product; only the recurrence is step by step."""
        gates = unflat(self.lstm.project(0, flat(fed)), fed.shape[0])  # [T, B, 4u]
        zeros = tf.zeros([tf.shape(fed)[1], self.units])  # [B, u]
        state, outputs = (zeros, zeros), []
        for t in range(fed.shape[0]):
            g, state = self.lstm(gates[t], state)
            outputs.append(g)
        return tf.stack(outputs)

    def shift_prior(self, g):
        return _normal_from(self.shift_loc(g), self.shift_log_var(g))  # [B, 2]

    def scale_prior(self, g, learned):
        if learned:
            return _normal_from(self.scale_loc(g), self.scale_log_var(g))  # [B, 1]
        return tfd.Normal(SCALE_PRIOR_LOC, math.sqrt(SCALE_PRIOR_VAR))

    def z_pres_logit(self, g):
        return self.z_pres(g)[:, 0]  # [B]


class PPriorAIR(GlimpseModel):
    """AIR-pPrior / AIR-ASR (``kind`` 'pprior').

    Args:
      canvas_px: S (50 MNIST, 64 dSprites).
      decoder_noise: std of the N(0, 1) noise on the decoder's logits in a forward pass (the
        original's pPrior: 0, docs/ORIGINAL.md §4); generation draws its pixels instead (Q36).
      fix_steps: if an int k (single allowed count), the z_pres prior logit is
        +100 for t < k and -100 after, instead of the learned prior.
      size_range_px: (c_min, c_max); generation renders the constant scale
        mean(c_min, c_max) / S (Q35).
      channels: C, the images' channels (asr_tf/models/base.py).
    """

    kind = "pprior"

    def __init__(self, canvas_px, max_glimpses=6, z_what_dim=50, lstm_units=256, glimpse_px=28,
                 z_pres_temperature=0.1, stop_threshold=0.9, decoder_noise=0.0, fix_steps=None,
                 size_range_px=(17.0, 23.0), scale_bias_init=0.0, quirks=None, channels=1,
                 name="pprior_air", **kwargs):
        super().__init__(canvas_px, max_glimpses, glimpse_px, z_what_dim, z_pres_temperature,
                         stop_threshold, decoder_noise, quirks=quirks, channels=channels,
                         name=name, **kwargs)
        ortho, fused = self.quirks.lstm_orthogonal_recurrent, self.quirks.lstm_fused_kernel
        self.fix_steps = fix_steps
        self.size_range_px = tuple(float(v) for v in size_range_px)
        self.inference = InferenceRNN(canvas_px * canvas_px * self.channels, z_what_dim,
                                      lstm_units, orthogonal_recurrent=ortho,
                                      scale_bias_init=scale_bias_init, fused_init=fused)
        self.prior = PriorRNN(z_what_dim, lstm_units, orthogonal_recurrent=ortho,
                              fused_init=fused)
        self.vae = GlimpseVAE(z_what_dim, glimpse_px, self.channels)
        self.built = True  # every variable exists (GlimpseModel: all state is made in __init__)

    def lstm_cores(self):
        return [self.inference.lstm, self.prior.lstm]

    def _image_context(self, images_flat):
        return self.inference.project_image(images_flat)  # [B, 4u]

    def _init_carry(self, batch):
        zeros_u = tf.zeros([batch, self.prior.units])
        return {"q_state": (zeros_u, zeros_u), "z_what_prev": tf.zeros([batch, self.z_what_dim]),
                "where_prev": tf.zeros([batch, 3])}

    def _trace_shapes(self):
        z = [self.z_what_dim]
        return {"q_shift_loc": [2], "q_shift_scale": [2], "xi": [2], "q_scale_loc": [1],
                "q_scale_scale": [1], "zeta": [1], "what_loc": z, "what_scale": z, "z_what": z,
                "z_pres_logit": [], "y": [], "z_pres": [], "scale": [], "shift": [2]}

    def _step(self, t, carry, images, image_proj, noise, mode):
        """The inference side of one step: LSTM, where, glimpse encoder (z_what is fed back)."""
        sample = mode != MEAN
        h, q_state = self.inference(image_proj, carry["z_what_prev"], carry["where_prev"],
                                    carry["q_state"])
        q_shift = self.inference.shift_posterior(h)
        xi = q_shift.loc + q_shift.scale * noise["eps_shift"] if sample else q_shift.loc  # [B, 2]
        q_scale = self.inference.scale_posterior(h, xi)
        zeta = q_scale.loc + q_scale.scale * noise["eps_scale"] if sample else q_scale.loc  # [B, 1]
        shift, scale = tf.tanh(xi), tf.sigmoid(zeta[:, 0])  # [B, 2], [B]
        what, z_what = self._encode_glimpse(images, scale, shift, noise["eps_what"], mode)
        alpha_q = self.inference.z_pres_logit(h)  # [B]
        y, z = self._z_pres(alpha_q, noise["u_pres"], mode)
        carry = dict(carry, q_state=q_state, z_what_prev=z_what,
                     where_prev=tf.concat([xi, zeta], -1))
        return carry, {"q_shift_loc": q_shift.loc, "q_shift_scale": q_shift.scale, "xi": xi,
                       "q_scale_loc": q_scale.loc, "q_scale_scale": q_scale.scale, "zeta": zeta,
                       "what_loc": what.loc, "what_scale": what.scale, "z_what": z_what,
                       "z_pres_logit": alpha_q, "y": y, "z_pres": z, "scale": scale,
                       "shift": shift}

    def _readout(self, images, tr, noise, step, mode):
        """The prior LSTM over the posterior samples (teacher forcing, Q14) and the KLs, for all
        steps at once: the prior at step t reads the samples of step t - 1 (zeros at t = 0)."""
        t_max = self.max_glimpses
        fed = tf.concat([tr["z_what"], tr["xi"], tr["zeta"]], -1)  # [T, B, z + 3]
        fed_prev = tf.concat([tf.zeros_like(fed[:1]), fed[:-1]], 0)  # [T, B, z + 3]
        g = self.prior.run(fed_prev)  # [T, B, u]
        g_flat = flat(g)  # [T*B, u]
        p_shift = self.prior.shift_prior(g_flat)
        p_scale = self.prior.scale_prior(g_flat, self.quirks.learned_scale_prior)
        if self.fix_steps is not None:
            logit = fixed_presence_logit(tf.range(t_max), self.fix_steps)  # [T]
            alpha_p = tf.broadcast_to(logit[:, None], tf.shape(tr["y"]))  # [T, B]
        else:
            g_prev = tf.concat([tf.zeros_like(g[:1]), g[:-1]], 0)  # Q13: g_{t-1}, zeros at t=0
            source = g_prev if self.quirks.zpres_prior_lag else g
            alpha_p = unflat(self.prior.z_pres_logit(flat(source)), t_max)  # [T, B]
        f = {k: flat(v) for k, v in tr.items()}
        present = f["present"]
        kl_pres = masked_concrete_kl(f["y"], f["z_pres_logit"], flat(alpha_p),
                                     self.z_pres_temperature, f["active_before"])
        kl_scale = masked_normal_kl(f["q_scale_loc"], f["q_scale_scale"], p_scale.loc,
                                    p_scale.scale, present)
        kl_shift = masked_normal_kl(f["q_shift_loc"], f["q_shift_scale"], p_shift.loc,
                                    p_shift.scale, present)
        kl_what = masked_normal_kl(f["what_loc"], f["what_scale"], 0.0, 1.0, present)
        return {
            "z_pres": tr["z_pres"], "z_pres_prob": tf.sigmoid(tr["z_pres_logit"]),
            "z_pres_logit": tr["z_pres_logit"], "prior_logit": alpha_p,
            "kl_pres": unflat(kl_pres, t_max), "kl_scale": unflat(kl_scale, t_max),
            "kl_shift": unflat(kl_shift, t_max), "kl_what": unflat(kl_what, t_max),
            "scale": tr["scale"], "shift": tr["shift"], "z_what": tr["z_what"],
        }

    # ------------------------------------------------------------ generation
    def generate(self, noise, count=None):
        """Samples scenes from the prior LSTM (docs/ORIGINAL.md §9, Q35/Q36); see :meth:`GlimpseModel.generate`.

        ``count`` None: the prior decides how many objects each scene holds (with a single
        allowed count, ``fix_steps`` fixes it); an int or [N] ints: the z_pres prior logits
        are fixed to that count per scene, as ``fix_steps`` fixes them.
        """
        n = tf.shape(noise["u_pres"])[1]
        s = self.canvas_px
        if count is None and self.fix_steps is not None:
            count = self.fix_steps
        fixed = None if count is None else per_scene_count(count, n, self.max_glimpses)  # [N]
        zeros_u = tf.zeros([n, self.prior.units])
        state, g_prev = (zeros_u, zeros_u), zeros_u
        z_what_prev, where_prev = tf.zeros([n, self.z_what_dim]), tf.zeros([n, 3])
        stop_sum, canvas, total = tf.zeros([n]), tf.zeros([n, s, s, self.channels]), tf.zeros([n])
        const_scale = sum(self.size_range_px) / 2.0 / s
        scales, shifts, presents = [], [], []
        for t in range(self.max_glimpses):  # fixed, short: unrolled
            g, state = self.prior(z_what_prev, where_prev, state)
            p_shift = self.prior.shift_prior(g)
            xi = p_shift.loc + p_shift.scale * noise["eps_shift"][t]  # [N, 2]
            p_scale = self.prior.scale_prior(g, self.quirks.learned_scale_prior)
            zeta = p_scale.loc + p_scale.scale * noise["eps_scale"][t]  # [N, 1]
            scale = (tf.fill([n], const_scale) if self.quirks.gen_fixed_scale
                     else tf.sigmoid(zeta[:, 0]))
            shift = tf.tanh(xi)
            z_what = noise["eps_what"][t]
            probs = self.decode(z_what, None)  # [N, G, G, C]
            if self.quirks.gen_bernoulli_pixels:
                probs = tf.cast(probs > tf.reshape(noise["u_pix"][t], tf.shape(probs)), tf.float32)
            rendered = transformer.render_glimpse(probs, scale, shift, s,
                                                  self.quirks.sampler_edge)  # [N, S, S, C]
            if fixed is None:  # the prior LSTM's head on g_{t-1} (Q13) or g_t
                alpha_p = self.prior.z_pres_logit(g_prev if self.quirks.zpres_prior_lag else g)
            else:
                alpha_p = fixed_presence_logit(t, fixed)  # [N]
            z = tf.cast(alpha_p + concrete.logistic_noise(noise["u_pres"][t]) > 0.0, tf.float32)
            stop_sum, present = stop_rule(stop_sum, z, self.stop_threshold)
            canvas = canvas + (present * z)[:, None, None, None] * rendered
            total = total + present
            scales.append(scale)
            shifts.append(shift)
            presents.append(present)
            z_what_prev, where_prev = z_what, tf.concat([xi, zeta], -1)
            g_prev = g
        return {"images": canvas, "count": tf.cast(total, tf.int32),
                "scale": tf.stack(scales, 1), "shift": tf.stack(shifts, 1),
                "present": tf.stack(presents, 1)}
