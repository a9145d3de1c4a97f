"""Model factory: ``build_model`` is the gin-configurable entry (Keras classes are not
gin-decorated directly: that crashes with Keras 3); ``model_for`` builds a run's model for its
data set."""
import numbers

import gin

from asr_tf.data import DataError
from asr_tf.models.air import AIR, PresencePriorSchedule
from asr_tf.models.pprior import PPriorAIR
from asr_tf.quirks import Quirks

MODEL_KINDS = (AIR.kind, PPriorAIR.kind)


@gin.configurable
def build_model(kind, canvas_px, counts, size_range_px=(17.0, 23.0), max_glimpses=6,
                z_what_dim=50, lstm_units=256, glimpse_px=28, z_pres_temperature=gin.REQUIRED,
                stop_threshold=gin.REQUIRED, decoder_noise=gin.REQUIRED, add_prior=False,
                scale_bias_init=0.0, quirks=None, zpres_prior=None, channels=1):
    """Builds AIR ('air') or AIR-pPrior/ASR ('pprior') for a dataset.

    Args:
      kind: 'air' or 'pprior' (ASR is 'pprior' plus structural constraints).
      max_glimpses: T_max, the most glimpse steps (objects + the stopping step) per image.
      canvas_px: S.
      counts: allowed object counts of the data. pPrior: a single count k fixes the
        z_pres prior (fix_steps = k). AIR: the counts its generated scenes hold in turn, and
        those ``add_prior`` (-ap) fixes.
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
      quirks: a Quirks (default: gin-configured Quirks()).
      zpres_prior: AIR only: the annealed z_pres prior, a PresencePriorSchedule (default: the
        gin-configured PresencePriorSchedule(); configs/air.gin binds the original's values).
      channels: C, the images' channels (1 grayscale, 3 RGB): the data set's, which
        ``model_for`` passes. The model takes images [B, S, S, C] of this C only.
    """
    if isinstance(channels, bool) or not isinstance(channels, numbers.Integral) or channels < 1:
        raise ValueError(f"build_model: channels={channels!r}, the images' channel count, must "
                         "be an int >= 1")
    quirks = quirks or Quirks()
    counts = tuple(int(c) for c in counts)
    if kind == "air":
        return AIR(canvas_px, max_glimpses, z_what_dim, lstm_units, glimpse_px,
                   z_pres_temperature=z_pres_temperature, stop_threshold=stop_threshold,
                   decoder_noise=decoder_noise, counts=counts, add_prior=add_prior,
                   zpres_prior=zpres_prior or PresencePriorSchedule(),
                   scale_bias_init=scale_bias_init, quirks=quirks, channels=channels)
    if kind == "pprior":
        return PPriorAIR(canvas_px, max_glimpses, z_what_dim, lstm_units, glimpse_px,
                         z_pres_temperature=z_pres_temperature, stop_threshold=stop_threshold,
                         decoder_noise=decoder_noise,
                         fix_steps=counts[0] if len(counts) == 1 else None,
                         size_range_px=size_range_px, scale_bias_init=scale_bias_init,
                         quirks=quirks, channels=channels)
    raise ValueError(f"model kind {kind!r} is not one of {MODEL_KINDS}")


def model_for(spec, quirks=None):
    """The run's model (``build_model`` as gin binds it) for the data set ``spec``: its canvas,
    allowed counts, size range and channels. Raises DataError for data it cannot take: a scene
    from files with more boxes than the model has glimpse steps (``max_glimpses``)."""
    model = build_model(canvas_px=spec.canvas_px, counts=spec.counts,
                        size_range_px=spec.size_range_px, quirks=quirks, channels=spec.channels)
    if spec.data is not None and spec.has_boxes:
        most, name = spec.most_boxes()
        if most > model.max_glimpses:
            raise DataError(f"{name}: {most} boxes, more than build_model.max_glimpses = "
                            f"{model.max_glimpses}, the most objects the model can find in a "
                            "scene; raise build_model.max_glimpses or leave such scenes out")
    return model
