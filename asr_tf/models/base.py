"""The glimpse loop shared by AIR and AIR-pPrior/ASR (docs/ORIGINAL.md §4.2, Q15-Q17).

The loop runs at most ``max_glimpses`` steps and continues while *any* item of the
batch is still active (running stop sum below the threshold), as the original's
batch-dependent ``while``. Stopped items keep being computed; their
contributions are masked per item.

A forward pass has two parts (the split is a speed measure, the values are those of one
loop doing everything, as the original):

* the **recurrent part** (``_step``), run step by step: only what the next step or the
  stopping rule needs (the inference LSTM, the where and z_pres heads and, where z_what is
  fed back, the glimpse encoder);
* the **readout** (``_readout`` and :meth:`GlimpseModel._render_canvas`), run once over all
  T steps as [T*B] batches after the loop: whatever no later step reads (the glimpse
  decoder and renderer, the canvas, pPrior's prior LSTM, the KLs). Its matrix products have
  T times more rows, and their gradients need no per-step accumulation.

Two drivers run the recurrent part. Training (``training=True``) unrolls all T steps
(no ``tf.while_loop``: its gradient pushes every loop value on stacks, much of a step's
time under XLA) and zeroes the records after the executed steps, as the loop leaves them.
The test model (``training=False``: evaluation, serving) runs a ``tf.while_loop`` that
stops as soon as every item has stopped.

All randomness enters through a ``noise`` dict drawn outside the model
(:meth:`GlimpseModel.sample_noise`), so a forward pass is a pure function of the
weights, the images and the noise: jit and non-jit steps agree, and tests can
fix the noise.

Channels: a model is built for C channels (``channels``, 1 for grayscale, 3 for RGB) and
refuses any other C. Images, glimpses and the canvas carry C last ([B, S, S, C]); the inference
LSTM reads S*S*C values, the glimpse VAE G*G*C (one Bernoulli per pixel and channel), and each
channel is cut and rendered with the same window (``transformer.per_channel``). With C = 1
every layer has the shapes and the computation it had before colour.
"""
import keras
import tensorflow as tf
import tensorflow_probability as tfp

from asr_tf.models.priors import stop_rule
from asr_tf.nn import concrete
from asr_tf.nn import transformer
from asr_tf.quirks import Quirks

tfd = tfp.distributions

# Per-step records stacked to [B, T, ...] after the loop (trailing shape per key).
RECORD_KEYS = ("z_pres", "z_pres_prob", "z_pres_logit", "prior_logit", "kl_pres",
               "kl_scale", "kl_shift", "kl_what", "present", "scale", "shift", "z_what")

# The three kinds of forward pass (``GlimpseModel.pass_mode``).
TRAIN, SAMPLE, MEAN = "train", "sample", "mean"


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


def flat(x):
    """[T, B, ...] -> [T*B, ...] (the readout's batch of every step's items)."""
    return tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], 0))


def unflat(x, steps):
    """[T*B, ...] -> [T, B, ...]."""
    return tf.reshape(x, tf.concat([[steps, -1], tf.shape(x)[1:]], 0))


def batch_major(x):
    """[T, B, ...] -> [B, T, ...]."""
    return tf.transpose(x, [1, 0] + list(range(2, x.shape.rank)))


class GlimpseModel(keras.Model):
    """Base class: the stopping loop, canvas, masks and records.

    Both models answer the same calls: ``model(images, noise, ...)`` (one inference pass,
    :meth:`call`), ``sample_noise`` / ``generation_noise`` and ``generate(noise, count=None)``
    (scenes from the prior), and say which model they are by ``kind`` ('air' or 'pprior',
    the names of ``asr_tf.models.build_model``).

    Subclasses define:

    * ``_image_context(images_flat)``: per-pass work on the image (its LSTM projection);
    * ``_init_carry(batch)``: the recurrent state (a dict of [B, ...] tensors);
    * ``_trace_shapes()``: trailing shapes of what ``_step`` records per step;
    * ``_step(t, carry, images, image_ctx, noise_t, mode) -> (carry, trace)``: one step
      of the recurrent part; ``trace`` holds the keys of ``_trace_shapes`` ([B, ...] each),
      among them ``z_pres`` (the sample the stopping rule reads), ``scale``, ``shift``;
    * ``_readout(images, traces, noise, step, mode) -> records``: from ``traces``
      ([T, B, ...], plus ``present`` and ``active_before`` of the stopping rule) every record
      of RECORD_KEYS except ``present`` as [T, B, ...], batched over the T steps;
    * ``generate(noise, count=None)``.

    ``mode`` is the kind of pass (:meth:`pass_mode`): TRAIN (relaxed z_pres), SAMPLE (the test
    pass: hard z_pres and sampled latents, Q25-Q27) or MEAN (the test pass from the posterior
    means, z_pres thresholded at 0.5).

    All state is created in ``__init__`` (every sub-layer built there: no variable may be
    created inside the glimpse loop), so a subclass ends its ``__init__`` with
    ``self.built = True``: Keras then has nothing to build on the first call (no warning about
    a missing ``build()``, no symbolic trace of ``call``).
    """

    kind = None  # 'air' or 'pprior' in the subclasses

    def __init__(self, canvas_px, max_glimpses=6, glimpse_px=28, z_what_dim=50,
                 z_pres_temperature=0.1, stop_threshold=0.9, decoder_noise=0.0,
                 quirks=None, channels=1, name="glimpse_model", **kwargs):
        super().__init__(name=name, **kwargs)
        if max_glimpses < 1:
            raise ValueError(f"max_glimpses={max_glimpses} must be >= 1")
        self.channels = int(channels)  # C, the images' (build_model checks it)
        self.canvas_px = int(canvas_px)
        self.max_glimpses = int(max_glimpses)
        self.glimpse_px = int(glimpse_px)
        self.glimpse_dim = self.glimpse_px ** 2 * self.channels  # G*G*C: the VAE's width
        self.z_what_dim = int(z_what_dim)
        self.z_pres_temperature = float(z_pres_temperature)
        self.stop_threshold = float(stop_threshold)
        self.decoder_noise = float(decoder_noise)
        self.quirks = quirks or Quirks()

    def lstm_cores(self):
        """The model's LSTM cores (asr_tf/nn/rnn.py): subclasses list theirs."""
        raise NotImplementedError

    def clip_groups(self):
        """Variables whose gradients are clipped as one tensor (Q45): each LSTM's kernel blocks,
        the original's one kernel, under ``Quirks.lstm_fused_kernel``; else none."""
        if not self.quirks.lstm_fused_kernel:
            return []
        return [core.kernel_blocks for core in self.lstm_cores()]

    def pass_mode(self, training, deterministic=None):
        """The kind of pass: TRAIN if ``training``; else MEAN if ``deterministic`` (None: the
        configured ``Quirks.deterministic_eval``), SAMPLE otherwise."""
        if training:
            return TRAIN
        if deterministic is None:
            deterministic = self.quirks.deterministic_eval
        return MEAN if deterministic else SAMPLE

    def generate(self, noise, count=None):
        """Scenes drawn from the model's prior.

        Args:
          noise: dict from :meth:`generation_noise`.
          count: None, the model's own rule for how many objects a scene holds; or an int,
            or [N] ints (one per scene, ``priors.generation_counts``): exactly that many.
        Returns:
          dict ``images`` [N, S, S, C] (sum of objects, not clipped), ``count`` [N] int32,
          ``scale`` [N, T], ``shift`` [N, T, 2], ``present`` [N, T].
        """
        raise NotImplementedError

    # ----------------------------------------------------------------- noise
    def noise_shapes(self, batch):
        """Shapes of the per-pass noise, leading [T, B]."""
        t = self.max_glimpses
        shapes = {"u_pres": [t, batch], "eps_shift": [t, batch, 2], "eps_scale": [t, batch, 1],
                  "eps_what": [t, batch, self.z_what_dim]}
        if self.decoder_noise > 0:
            shapes["eps_pix"] = [t, batch, self.glimpse_dim]
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
        t, g2 = self.max_glimpses, self.glimpse_dim
        key, kind = self.GEN_PIXEL_NOISE
        return {"u_pres": generator.uniform([t, num]), "eps_shift": generator.normal([t, num, 2]),
                "eps_scale": generator.normal([t, num, 1]),
                "eps_what": generator.normal([t, num, self.z_what_dim]),
                key: getattr(generator, kind)([t, num, g2])}

    # ------------------------------------------------------------ components
    def _encode_glimpse(self, images, scale, shift, eps_what, mode):
        """Cuts the window and encodes it.

        Args:
          images: [N, S, S, C]; scale [N]; shift [N, 2]; eps_what [N, z].
        Returns:
          (q(z_what) Normal [N, z], z_what [N, z])
        """
        window = transformer.extract_glimpse(images, scale, shift, self.glimpse_px,
                                             self.quirks.sampler_edge)  # [N, G, G, C]
        if mode == MEAN:
            eps_what = tf.zeros_like(eps_what)
        q_what, z_what = self.vae.encode(tf.reshape(window, [-1, self.glimpse_dim]), eps_what)
        return q_what.distribution, z_what

    def _z_pres(self, alpha_q, u, mode):
        """Relaxed (train) or hard (test, Q25) z_pres and its relaxed logit y, all [B]."""
        y = concrete.sample_logit(alpha_q, self.z_pres_temperature, u)
        if mode == TRAIN:
            z = tf.sigmoid(y)
        else:
            z = concrete.hard_z(y, alpha_q, mode == MEAN)
        return y, z

    def _advance(self, carry, z):
        """The stopping rule on the carry: stop-sum, presence mask and count.

        Returns (carry, present [B], active_before [B]).
        """
        active_before = tf.cast(carry["stop_sum"] < self.stop_threshold, tf.float32)  # [B]
        stop_sum, present = stop_rule(carry["stop_sum"], z, self.stop_threshold)
        carry = dict(carry, stop_sum=stop_sum, count=carry["count"] + present)
        return carry, present, active_before

    def decode(self, z_what, eps_pix):
        """Decoded glimpses [N, G, G, C] (pixel probabilities) from z_what [N, z]; AIR adds
        logit noise eps_pix [N, G*G*C] (Q32), None elsewhere."""
        logits = self.vae.decoder(z_what).distribution.logits  # [N, G*G*C]
        if eps_pix is not None:
            logits = logits + self.decoder_noise * eps_pix
        g = self.glimpse_px
        return tf.reshape(tf.sigmoid(logits), [-1, g, g, self.channels])

    def _render_canvas(self, records, step_mask, eps_pix):
        """The canvas [B, S, S, C]: sum over steps of present * z_pres * the rendered glimpse.

        Decodes all T steps as one [B*T] batch and renders them summed
        (``transformer.render_glimpses_summed``). Steps not executed (present = 0 for every
        item there) are rendered at a unit scale, which keeps the zero records of the while
        loop (scale 0) away from 1 / scale.
        """
        t_max = self.max_glimpses
        ran = step_mask[:, None] > 0  # [T, 1]
        scale = tf.where(ran, records["scale"], tf.ones_like(records["scale"]))  # [T, B]
        shift = tf.where(ran[..., None], records["shift"], tf.zeros_like(records["shift"]))
        weight = records["present"] * records["z_pres"]  # [T, B]
        z_what = batch_major(records["z_what"])  # [B, T, z]
        glimpses = self.decode(tf.reshape(z_what, [-1, self.z_what_dim]),
                                None if eps_pix is None else
                                tf.reshape(batch_major(eps_pix), [-1, self.glimpse_dim]))
        glimpses = tf.reshape(glimpses, [-1, t_max] + glimpses.shape[1:].as_list())  # [B,T,G,G,C]
        return transformer.render_glimpses_summed(glimpses, batch_major(weight),
                                                  batch_major(scale), batch_major(shift),
                                                  self.canvas_px, self.quirks.sampler_edge)

    # ------------------------------------------------------------------ loop
    def _step_traces(self, t, carry, images, image_ctx, noise_t, mode):
        carry, trace = self._step(t, carry, images, image_ctx, noise_t, mode)
        carry, present, active_before = self._advance(carry, trace["z_pres"])
        return carry, dict(trace, present=present, active_before=active_before)

    def _trace_shapes_all(self):
        return dict(self._trace_shapes(), present=[], active_before=[])

    def _unrolled(self, carry, images, image_ctx, noise, mode):
        """All T steps, unrolled. Returns traces [T, B, ...] and the final carry."""
        traces = []
        for t in range(self.max_glimpses):
            noise_t = {k: v[t] for k, v in noise.items()}
            carry, trace = self._step_traces(t, carry, images, image_ctx, noise_t, mode)
            traces.append(trace)
        return {k: tf.stack([tr[k] for tr in traces]) for k in traces[0]}, carry

    def _while_loop(self, carry, images, image_ctx, noise, mode, batch):
        """tf.while_loop while any item is active. Returns (steps run, traces [T, B, ...]
        with zeros at the steps not run, final carry)."""
        t_max = self.max_glimpses
        traces = {k: tf.zeros([t_max, batch] + shape)
                  for k, shape in self._trace_shapes_all().items()}

        def body(t, carry, traces):
            noise_t = {k: v[t] for k, v in noise.items()}
            carry, trace = self._step_traces(t, carry, images, image_ctx, noise_t, mode)
            traces = {k: tf.tensor_scatter_nd_update(traces[k], [[t]], trace[k][None])
                      for k in traces}
            return t + 1, carry, traces

        # The weights are read once, before the loop: a variable read inside the body is a
        # new tensor at every step (a gradient would push each one on a stack).
        weights = [(v, tf.convert_to_tensor(v)) for v in self.variables]
        with keras.StatelessScope(state_mapping=weights):
            t_exec, carry, traces = tf.while_loop(
                lambda t, c, r: tf.reduce_any(c["stop_sum"] < self.stop_threshold), body,
                (tf.constant(0), carry, traces), maximum_iterations=t_max)
        return t_exec, traces, carry

    def _start(self, images):
        """The pass's start: images [B, S, S, C], the image context and the zero carry."""
        s, c = self.canvas_px, self.channels
        if images.shape.rank != 4 or tuple(images.shape[1:]) != (s, s, c):
            raise ValueError(f"images must be [B, {s}, {s}, {c}] (this model was built for {c} "
                             f"channel{'s' if c > 1 else ''}), got {images.shape}")
        images = tf.convert_to_tensor(images)  # [B, S, S, C]
        batch = tf.shape(images)[0]
        image_ctx = self._image_context(tf.reshape(images, [batch, s * s * c]))
        carry = self._init_carry(batch)
        carry.update(stop_sum=tf.zeros([batch]), count=tf.zeros([batch]))
        return images, image_ctx, carry

    def call(self, images, noise, step=0, training=True, all_steps=False, deterministic=None):
        """One inference pass.

        Args:
          images: [B, S, S, C] float in [0, 1], C = ``channels`` (else a ValueError).
          noise: dict from :meth:`sample_noise`.
          step: global training step (AIR's annealed prior uses it).
          training: relaxed z_pres if True, hard z_pres (test model) if False.
          all_steps: keep the records of all ``max_glimpses`` steps, also after every item has
            stopped (stopped items stay masked as usual). For asr_tf.run.distribute, where the
            executed steps are decided over the global batch: ``step_mask`` and
            ``steps_executed`` still give the steps this batch alone runs, min(T, 1 + max
            count), but the records after them are not zero; the caller masks them.
          deterministic: test pass only (:meth:`pass_mode`): True, from the posterior means
            with z_pres thresholded at 0.5; False, one stochastic pass; None, as
            ``Quirks.deterministic_eval`` says.
        Returns:
          dict with ``canvas`` [B, S, S, C] (unclipped), ``recon`` [B, S, S, C] clipped to [0,1],
          ``count`` [B] int32, ``step_mask`` [T] float (1 for executed steps),
          ``steps_executed`` scalar int32, and the records of RECORD_KEYS, each [B, T, ...].
        """
        images, image_ctx, carry = self._start(images)
        mode = self.pass_mode(training, deterministic)
        step = tf.cast(step, tf.float32)
        t_max = self.max_glimpses
        if training or all_steps:
            traces, carry = self._unrolled(carry, images, image_ctx, noise, mode)
            # the loop's own stopping point: item b needs steps 0..count_b
            t_exec = tf.minimum(t_max, 1 + tf.cast(tf.reduce_max(carry["count"]), tf.int32))
        else:
            t_exec, traces, carry = self._while_loop(carry, images, image_ctx, noise, mode,
                                                     tf.shape(images)[0])
        step_mask = tf.cast(tf.range(t_max) < t_exec, tf.float32)  # [T]
        records = self._readout(images, traces, noise, step, mode)
        records["present"] = traces["present"]
        canvas = self._render_canvas(records, step_mask, noise.get("eps_pix"))
        if not all_steps:  # zeros at the steps not executed, as the loop leaves them
            ran = step_mask > 0
            records = {k: tf.where(tf.reshape(ran, [t_max] + [1] * (v.shape.rank - 1)), v,
                                   tf.zeros_like(v)) for k, v in records.items()}
        out = {k: batch_major(records[k]) for k in RECORD_KEYS}  # each [B, T, ...]
        s = self.canvas_px  # the recon clipped as rows [B, S, S*C]: objectives.bernoulli_nll
        rows = tf.clip_by_value(tf.reshape(canvas, [-1, s, s * self.channels]), 0.0, 1.0)
        out.update(canvas=canvas, recon=tf.reshape(rows, tf.shape(canvas)),
                   count=tf.cast(carry["count"], tf.int32), step_mask=step_mask,
                   steps_executed=t_exec)
        return out

    def proposals(self, images, noise, step=0, deterministic=None):
        """Every step's proposal as the test pass makes it, used by the stopping rule or not:
        all T steps run and each is priced as present (its KLs unmasked).

        Args: as :meth:`call` (a test pass).
        Returns:
          the readout's records [T, B, ...] (the keys of RECORD_KEYS but ``present``).
        """
        images, image_ctx, carry = self._start(images)
        mode = self.pass_mode(False, deterministic)
        traces, _ = self._unrolled(carry, images, image_ctx, noise, mode)
        ones = tf.ones_like(traces["present"])  # [T, B]
        traces = dict(traces, present=ones, active_before=ones)
        return self._readout(images, traces, noise, tf.cast(step, tf.float32), mode)
