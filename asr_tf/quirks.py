"""The original code's numerically relevant quirks, one named switch each.

Every field defaults to the original's behaviour; gin binds them as ``Quirks.<field> = ...``.
docs/ORIGINAL.md explains each one (§10: what the original does, what the other values do, why)
and tests/test_original_page.py holds its switch table and this class to each other.
Data-side quirks (Q1 ``bbox_overlap_mode``, Q7 ``num_test``) live in
``asr_tf.data.scenes.DatasetSpec``.
"""
import dataclasses

import gin

# The values of the fields that are not booleans.
SAMPLER_EDGES = ("four_gathers", "hard", "zero_pad")  # asr_tf/nn/transformer.py, four_gathers.py
AREA_PENALTIES = ("mean_offset", "paper")
CHOICES = {"sampler_edge": SAMPLER_EDGES, "area_penalty": AREA_PENALTIES}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class Quirks:
    """Switches between the original's behaviour (default) and the fix (docs/ORIGINAL.md §10.1).

    Attributes:
      sampler_edge: Q30, the glimpse sampler: the original's float32 arithmetic, the exact
        sampler, or bilinear with zeros outside (the runs' remedy, base.gin).
      learned_scale_prior: Q12, a learned scale prior instead of the fixed N(-1, 0.05).
      zpres_prior_lag: Q13, the presence prior of step t from the prior LSTM at t-1.
      mask_penalties_by_presence: Q16/Q17, the box constraints only on present boxes.
      count_min_needs_margin: Q20, R1 only where R2 is on.
      area_penalty: Q19, F6 as the original's offset mean or the paper's sum.
      deterministic_eval: Q25-Q27, posterior means and presence > 0.5 at evaluation.
      gen_fixed_scale: Q35, generation at the constant scale mean(c_min, c_max)/S.
      gen_bernoulli_pixels: Q36, generated glimpse pixels drawn, not the decoder's mean.
      per_variable_clip: Q42, each gradient tensor clipped on its own, not by the global norm.
      lstm_orthogonal_recurrent: Q43, Keras' orthogonal recurrent kernel, not TF1's Glorot.
      lstm_fused_kernel: Q45, each LSTM kernel one tensor (init limit, gradient clip) as TF1.
      tight_gt: Q4, true boxes [x, y, x+w-1, y+h-1], not [x, y, x+w, y+h].
    """
    sampler_edge: str = "four_gathers"
    learned_scale_prior: bool = False
    zpres_prior_lag: bool = True
    mask_penalties_by_presence: bool = False
    count_min_needs_margin: bool = True
    area_penalty: str = "mean_offset"
    deterministic_eval: bool = False
    gen_fixed_scale: bool = True
    gen_bernoulli_pixels: bool = True
    per_variable_clip: bool = True
    lstm_orthogonal_recurrent: bool = False
    lstm_fused_kernel: bool = True
    tight_gt: bool = False

    def __post_init__(self):
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"Quirks.{name}={getattr(self, name)!r}: use one of "
                                 + ", ".join(repr(v) for v in allowed))
