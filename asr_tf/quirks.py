"""The original code's numerically relevant quirks, one named switch each.

Every field defaults to the original behaviour (spec §10, Q-numbers); gin binds
them as ``Quirks.<field> = ...``. The table in WORKSPACE.md is generated from
this docstring's fields; this is the only place a quirk is documented.
Data-side quirks (Q1 ``bbox_overlap_mode``, Q7 ``num_test``) live in
``asr_tf.data.scenes.DatasetSpec``.
"""
import dataclasses

import gin

# Q30's values: the samplers of asr_tf/nn/transformer.py and asr_tf/nn/four_gathers.py.
SAMPLER_EDGES = ("four_gathers", "hard", "zero_pad")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class Quirks:
    """Switches between the original's behaviour (default) and the fix.

    Attributes:
      sampler_edge: Q30. 'four_gathers': the original's float32 arithmetic, four
        gathered clipped corners summed (canvas summed step by step); outside the source
        the terms cancel only up to rounding, so tiny residues of either sign (|r| up to
        ~1e-5) sit left and right of each rendered box, where the BCE's 1/(r + 1e-10)
        gives large gradients. 'hard': the exact clipped-corner sampler, exactly 0 and no
        gradient outside the source (inside, the same values up to rounding). 'zero_pad':
        true bilinear with zeros outside (boxes that leave the ink still get a gradient).
        The run configs use 'zero_pad' (base.gin); the ``faithful`` overlay 'four_gathers'.
      learned_scale_prior: Q12. False: fixed scale prior N(-1, 0.05) (pre-sigmoid).
        True: the paper's learned p(scale | previous objects) from the prior LSTM.
      zpres_prior_lag: Q13. True: the z_pres prior at step t reads the prior-LSTM
        output of step t-1. False: the paper's p(z_pres^t | z^{<t}) from step t.
      mask_penalties_by_presence: Q16/Q17. False: overlap, out-of-image, size and
        area penalties run over every executed step, unmasked. True: only over the
        present objects of each image. (The count CEs always run over every executed
        step: the stopping step's z_pres is what they teach.)
      count_min_needs_margin: Q20. True: the per-image count term (gamma_ne) is
        only built when gamma_m > 0, as in the original (a warning is logged).
      area_penalty: Q19. 'mean_offset': mean over steps of relu(c_max-d)+relu(d-c_min)
        (the paper's hinge plus the constant c_max-c_min). 'paper': the paper's
        sum of relu(c_min-d)+relu(d-c_max).
      deterministic_eval: Q25-Q27. False: one stochastic pass (Bernoulli z_pres via
        rounding, sampled where/what). True: posterior means and z_pres threshold 0.5.
      gen_fixed_scale: Q35. True: pPrior/ASR generation renders every object at the
        constant scale mean(c_min, c_max)/S. False: the prior-sampled scale.
      gen_bernoulli_pixels: Q36. True: pPrior/ASR generation Bernoulli-samples the
        glimpse pixels. False: the decoder's mean.
      per_variable_clip: Q42. True: NaN/Inf -> 0 then clip_by_norm(1.0) per variable.
        False: the same zeroing, then one global-norm clip.
      lstm_orthogonal_recurrent: Q43. False: Glorot-uniform recurrent kernel as TF1.
        True: the Keras default orthogonal recurrent kernel.
      lstm_fused_kernel: Q45. True: each LSTM's kernel is one tensor as in the original (its
        input blocks and recurrent block initialised with the Glorot limit of the whole
        [inputs + units, 4 units] kernel, their gradients clipped by one norm). False: each
        block initialised by its own shape's limit and clipped on its own (the runs of the
        tables, base.gin).
      tight_gt: Q4. False: GT box [x, y, x+w, y+h] under the "+1" IoU. True: [x, y, x+w-1, y+h-1].
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
        if self.sampler_edge not in SAMPLER_EDGES:
            raise ValueError(f"Quirks.sampler_edge={self.sampler_edge!r}: use one of "
                             + ", ".join(repr(e) for e in SAMPLER_EDGES))
        if self.area_penalty not in ("mean_offset", "paper"):
            raise ValueError(f"Quirks.area_penalty={self.area_penalty!r}: use 'mean_offset' or 'paper'")
