"""Model factory: ``build_model`` is the gin-configurable entry (Keras classes are not
gin-decorated directly: that crashes with Keras 3)."""
import gin

from asr_tf.models.air import AIR, PresencePriorSchedule
from asr_tf.models.pprior import PPriorAIR
from asr_tf.nn import precision
from asr_tf.quirks import Quirks

MODEL_KINDS = ("air", "pprior")


@gin.configurable
def build_model(kind, canvas_px, counts, size_range_px=(17.0, 23.0), max_glimpses=6,
                z_what_dim=50, lstm_units=256, glimpse_px=28, z_pres_temperature=gin.REQUIRED,
                stop_threshold=gin.REQUIRED, decoder_noise=gin.REQUIRED, add_prior=False,
                scale_bias_init=0.0, matmul_dtype="float32", quirks=None, zpres_prior=None):
    """Builds AIR ('air') or AIR-pPrior/ASR ('pprior') for a dataset.

    Args:
      kind: 'air' or 'pprior' (ASR is 'pprior' plus structural constraints).
      max_glimpses: T_max, the most glimpse steps (objects + the stopping step) per image.
      canvas_px: S.
      counts: allowed object counts of the data. pPrior: a single count k fixes the
        z_pres prior (fix_steps = k). AIR: used by ``add_prior`` (-ap).
      size_range_px: (c_min, c_max) px; pPrior generation renders their mean (Q35).
      z_pres_temperature: lambda, the Binary Concrete temperature of z_pres.
      stop_threshold: tau: an item stops once its running sum of (1 - z_pres) reaches it.
      decoder_noise: sigma: std of the N(0, 1) noise added to the glimpse decoder's logits,
        at training and test time (Q32).
        These three are required, bound per model in configs/air.gin (the original's
        1.0 / 0.99 / 0.3) and configs/pprior.gin (0.1 / 0.9 / 0.0); gin names any missing.
      add_prior: AIR's -ap: +-100 per-step prior biases from ``counts``.
      scale_bias_init: initial bias of the scale posterior's location head (pre-sigmoid).
        The original: 0 (boxes start at half the canvas). A learning remedy, not a quirk:
        negative values start every box small (-1.0: the scale prior's mean, 27% of S).
      matmul_dtype: 'float32' (default) or 'bfloat16': the big matrix products in bfloat16,
        everything else in float32, on CPUs with native bfloat16 (asr_tf/nn/precision.py;
        not the default: slower on this project's machines, docs/PERFORMANCE.md).
      quirks: a Quirks (default: gin-configured Quirks()).
      zpres_prior: AIR only: the annealed z_pres prior, a PresencePriorSchedule (default: the
        gin-configured PresencePriorSchedule(); configs/air.gin binds the original's values).
    """
    quirks = quirks or Quirks()
    matmul_dtype = precision.resolve(matmul_dtype)
    counts = tuple(int(c) for c in counts)
    if kind == "air":
        return AIR(canvas_px, max_glimpses, z_what_dim, lstm_units, glimpse_px,
                   z_pres_temperature=z_pres_temperature, stop_threshold=stop_threshold,
                   decoder_noise=decoder_noise, add_prior_counts=counts if add_prior else None,
                   zpres_prior=zpres_prior or PresencePriorSchedule(),
                   scale_bias_init=scale_bias_init, matmul_dtype=matmul_dtype, quirks=quirks)
    if kind == "pprior":
        return PPriorAIR(canvas_px, max_glimpses, z_what_dim, lstm_units, glimpse_px,
                         z_pres_temperature=z_pres_temperature, stop_threshold=stop_threshold,
                         decoder_noise=decoder_noise,
                         fix_steps=counts[0] if len(counts) == 1 else None,
                         size_range_px=size_range_px, scale_bias_init=scale_bias_init,
                         matmul_dtype=matmul_dtype, quirks=quirks)
    raise ValueError(f"model kind {kind!r} is not one of {MODEL_KINDS}")
