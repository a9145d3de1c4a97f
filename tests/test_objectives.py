"""ELBO terms and ASR penalties on hand-built boxes (spec sections 4.3-4.4, 6; Q16-Q22)."""
import logging
import math

import numpy as np
import pytest
import tensorflow as tf

from asr_tf import objectives as O
from asr_tf.quirks import Quirks

LN2 = math.log(2.0)


def _t(a):
    return tf.constant(np.asarray(a, np.float32))


# Three boxes on a 50-px canvas (centre x, centre y, side):
#   A (10, 10, 8), B (15, 12, 6), C (14, 16, 10)
# A-B: reach (8+6)/2 = 7, dist max(5, 2) = 5 -> 2
# A-C: reach 9,           dist max(4, 6) = 6 -> 3
# B-C: reach 8,           dist max(1, 4) = 4 -> 4
CENTERS3 = [[[10.0, 10.0], [15.0, 12.0], [14.0, 16.0]]]
SIDES3 = [[8.0, 6.0, 10.0]]


def test_boxes_px():
    c, d = O.boxes_px(_t([[0.4, 0.2]]), _t([[[0.0, 0.0], [0.2, -0.4]]]), 50)
    np.testing.assert_allclose(c.numpy(), [[[25, 25], [30, 15]]], atol=1e-5)
    np.testing.assert_allclose(d.numpy(), [[20, 10]], atol=1e-5)


def test_overlap_two_boxes_counts_ordered_pairs_twice():
    v = O.overlap_penalty(_t([CENTERS3[0][:2]]), _t([SIDES3[0][:2]]), _t([1, 1]))
    np.testing.assert_allclose(v.numpy(), [2 * 2.0])


def test_overlap_three_boxes():
    v = O.overlap_penalty(_t(CENTERS3), _t(SIDES3), _t([1, 1, 1]))
    np.testing.assert_allclose(v.numpy(), [2 * (2.0 + 3.0 + 4.0)])


def test_overlap_disjoint_boxes_zero_and_touching_zero():
    # two side-10 boxes whose centres are 10 apart in x only touch: relu(10 - 10) = 0
    v = O.overlap_penalty(_t([[[10, 10], [20, 10], [40, 40]]]), _t([[10, 10, 10]]), _t([1, 1, 1]))
    np.testing.assert_allclose(v.numpy(), [0.0])


def test_overlap_step_mask_and_presence():
    c, d = _t(CENTERS3), _t(SIDES3)
    # step 2 (C) not executed: only A-B
    np.testing.assert_allclose(O.overlap_penalty(c, d, _t([1, 1, 0])).numpy(), [4.0])
    # presence [1, 0, 1]: only A-C
    np.testing.assert_allclose(O.overlap_penalty(c, d, _t([1, 1, 1]), _t([[1, 0, 1]])).numpy(),
                               [6.0])


def test_out_of_image_f2_to_f5():
    # S = 50.
    # (3, 48, 10): half 5 -> left relu(5-3)=2, top 0, right relu(3+5-50)=0,
    #              bottom relu(48+5-50)=3 -> 5
    # (25, 25, 10): inside -> 0
    # (-1, 52, 4): half 2 -> left relu(2+1)=3, top 0, right 0, bottom relu(52+2-50)=4 -> 7
    c = _t([[[3, 48], [25, 25], [-1, 52]]])
    d = _t([[10, 10, 4]])
    np.testing.assert_allclose(O.out_of_image_penalty(c, d, _t([1, 1, 1]), 50).numpy(), [12.0])
    np.testing.assert_allclose(O.out_of_image_penalty(c, d, _t([1, 1, 0]), 50).numpy(), [5.0])
    np.testing.assert_allclose(
        O.out_of_image_penalty(c, d, _t([1, 1, 1]), 50, _t([[0, 1, 1]])).numpy(), [7.0])
    # top edge: (25, 2, 10) -> relu(5 - 2) = 3
    np.testing.assert_allclose(
        O.out_of_image_penalty(_t([[[25, 2]]]), _t([[10]]), _t([1]), 50).numpy(), [3.0])


def test_size_f7_eps_3():
    # sides 10, 12, 20: |10-12| = 2 -> 0; |10-20| = 10 -> 7; |12-20| = 8 -> 5; ordered: 2 (7 + 5)
    d = _t([[10, 12, 20]])
    np.testing.assert_allclose(O.size_penalty(d, _t([1, 1, 1])).numpy(), [24.0])
    np.testing.assert_allclose(O.size_penalty(d, _t([1, 1, 0])).numpy(), [0.0])
    np.testing.assert_allclose(O.size_penalty(d, _t([1, 1, 1]), _t([[1, 0, 1]])).numpy(), [14.0])
    # exactly eps apart: 0
    np.testing.assert_allclose(O.size_penalty(_t([[10, 13]]), _t([1, 1])).numpy(), [0.0])


def test_area_f6_both_modes():
    # [c_min, c_max] = [17, 23]; sides 10, 20, 30.
    # paper: relu(17-d) + relu(d-23) = 7, 0, 7 -> sum 14
    # mean_offset: relu(23-d) + relu(d-17) = 13, 6, 13 = paper + (23-17) per box -> mean 32/3
    d = _t([[10, 20, 30]])
    rng = (17.0, 23.0)
    paper = O.area_penalty(d, _t([1, 1, 1]), rng, mode="paper").numpy()
    offset = O.area_penalty(d, _t([1, 1, 1]), rng, mode="mean_offset").numpy()
    np.testing.assert_allclose(paper, [14.0])
    np.testing.assert_allclose(offset, [32.0 / 3.0], rtol=1e-6)
    np.testing.assert_allclose(offset, (paper + 3 * (23 - 17)) / 3, rtol=1e-6)
    # step mask [1, 1, 0]: paper 7; mean_offset (13 + 6) / 2
    np.testing.assert_allclose(O.area_penalty(d, _t([1, 1, 0]), rng, mode="paper").numpy(), [7.0])
    np.testing.assert_allclose(O.area_penalty(d, _t([1, 1, 0]), rng).numpy(), [9.5])
    # presence [0, 1, 1] (mean over present boxes): (6 + 13) / 2
    np.testing.assert_allclose(O.area_penalty(d, _t([1, 1, 1]), rng, _t([[0, 1, 1]])).numpy(),
                               [9.5])
    # a side inside the range costs exactly c_max - c_min in mean_offset mode
    np.testing.assert_allclose(O.area_penalty(_t([[18.5]]), _t([1]), rng).numpy(), [6.0])


def test_count_targets():
    np.testing.assert_array_equal(O.count_targets((3, 1), 4).numpy(),
                                  [[1, 0, 0, 0], [1, 1, 1, 0]])


def test_count_min_r1_hand_values():
    # counts (1, 3), T = 4; targets u1 = 1000, u3 = 1110.
    p = _t([[0.9, 0.2, 0.3, 0.1],     # closer to count 1
            [0.9, 0.8, 0.7, 0.1]])    # closer to count 3
    got = O.count_min_penalty(p, _t([1, 1, 1, 1]), (1, 3)).numpy()
    ce1_a = -(math.log(0.9) + math.log(0.8) + math.log(0.7) + math.log(0.9))
    ce3_a = -(math.log(0.9) + math.log(0.2) + math.log(0.3) + math.log(0.9))
    assert ce1_a < ce3_a
    ce3_b = -(math.log(0.9) + math.log(0.8) + math.log(0.7) + math.log(0.9))
    np.testing.assert_allclose(got, [ce1_a, ce3_b], rtol=1e-5)


def test_count_min_step_mask_excludes_non_executed_steps():
    # steps 2, 3 were not executed; their records are 0 (p = 0 would cost -ln(1e-8) for u = 1)
    p = _t([[0.9, 0.8, 0.0, 0.0],
            [0.9, 0.2, 0.0, 0.0]])
    got = O.count_min_penalty(p, _t([1, 1, 0, 0]), (1, 3)).numpy()
    want = [min(-(math.log(0.9) + math.log(0.2)), -(math.log(0.9) + math.log(0.8))),
            min(-(math.log(0.9) + math.log(0.8)), -(math.log(0.9) + math.log(0.2)))]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    got = O.count_min_penalty(p, _t([1, 1, 0, 0]), (3,)).numpy()
    np.testing.assert_allclose(got, [-(math.log(0.9) + math.log(0.8)),
                                     -(math.log(0.9) + math.log(0.2))], rtol=1e-5)
    unmasked = O.count_min_penalty(p, _t([1, 1, 1, 1]), (3,)).numpy()
    np.testing.assert_allclose(unmasked - got, -math.log(1e-8), rtol=1e-4)  # step 2, u = 1, p = 0


def test_count_margin_r2_entropy_constant():
    # counts (1, 3): u_bar = (1, .5, .5, 0). p_bar matches: R2 = sum_t H(u_bar_t) = 2 ln 2
    p = _t([[1.0, 0.3, 0.8, 0.0],
            [1.0, 0.7, 0.2, 0.0]])
    got = float(O.count_margin_penalty(p, _t([1, 1, 1, 1]), (1, 3)))
    assert got == pytest.approx(2 * LN2, abs=1e-5)


def test_count_margin_r2_hand_value_and_mask():
    # p_bar = (0.8, 0.5, 0.25, 0.1) against u_bar = (1, .5, .5, 0)
    p = _t([[0.7, 0.6, 0.3, 0.2],
            [0.9, 0.4, 0.2, 0.0]])
    want = (-math.log(0.8) + LN2 + (-0.5 * math.log(0.25) - 0.5 * math.log(0.75))
            - math.log(0.9))
    got = float(O.count_margin_penalty(p, _t([1, 1, 1, 1]), (1, 3)))
    assert got == pytest.approx(want, rel=1e-5)
    got = float(O.count_margin_penalty(p, _t([1, 1, 0, 0]), (1, 3)))
    assert got == pytest.approx(-math.log(0.8) + LN2, rel=1e-5)


def test_zpres_entropy():
    a = _t([[0.0, 2.0, -1.0]])
    p = 1 / (1 + math.exp(-2.0))
    h2 = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    got = O.zpres_entropy(a, _t([1, 1, 0])).numpy()
    np.testing.assert_allclose(got, [LN2 + h2], rtol=1e-5)


def test_bernoulli_nll_hand_value():
    x = _t([[[0.2, 1.0], [0.0, 0.5]]])
    r = _t([[[0.5, 0.9], [0.0, 0.25]]])
    want = (-(0.2 * math.log(0.5) + 0.8 * math.log(0.5)) - math.log(0.9) + 0.0
            - (0.5 * math.log(0.25) + 0.5 * math.log(0.75)))
    np.testing.assert_allclose(O.bernoulli_nll(x, r).numpy(), [want], rtol=1e-5)
    # [B, S, S, 1] images against [B, S, S] recon
    np.testing.assert_allclose(O.bernoulli_nll(x[..., None], r).numpy(), [want], rtol=1e-5)
    # x = 1 where r = 0 costs -ln(1e-10), finite; also at r = 1, x = 0
    v = O.bernoulli_nll(_t([[[1.0, 0.0]]]), _t([[[0.0, 1.0]]])).numpy()
    np.testing.assert_allclose(v, [2 * -math.log(1e-10)], rtol=1e-4)
    np.testing.assert_allclose(O.squared_error(x, r).numpy(), [0.09 + 0.01 + 0 + 0.0625], rtol=1e-5)


def test_bernoulli_nll_finite_at_r_one_under_jit():
    # _log_eps's max() guards against XLA folding (1 - r) + eps into (1 + eps) - r.
    f = tf.function(O.bernoulli_nll, jit_compile=True)
    v = f(_t([[[0.0, 0.3]]]), _t([[[1.0, 1.0]]])).numpy()
    assert np.all(np.isfinite(v))


# ----------------------------------------------------------------- total loss

def _fake_outputs(presence_ok=True):
    """B = 2, T = 3 model outputs with hand-chosen boxes; step 2 not executed."""
    s = 50.0
    # image 0: A (10, 10, 8) B (15, 12, 6) and an unexecuted step; image 1: two far boxes
    centers = np.array([[[10, 10], [15, 12], [0, 0]],
                        [[10, 10], [40, 40], [0, 0]]], np.float32)
    sides = np.array([[8, 6, 0], [20, 20, 0]], np.float32)
    shift = centers * 2.0 / s - 1.0
    scale = sides / s
    logit = np.array([[2.0, -1.0, 0.0], [0.5, 0.5, 0.0]], np.float32)
    prob = 1.0 / (1.0 + np.exp(-logit))
    prob[:, 2] = 0.0
    return {
        "recon": _t(np.full((2, 4, 4), 0.5)),
        "kl_pres": _t([[0.5, 0.25, 0.0], [0.1, 0.2, 0.0]]),
        "kl_scale": _t([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]]),
        "kl_shift": _t([[0.3, 0.0, 0.0], [0.4, 0.0, 0.0]]),
        "kl_what": _t([[5.0, 0.0, 0.0], [7.0, 0.0, 0.0]]),
        "present": _t([[1, 0, 0], [1, 0, 0]]),
        "step_mask": _t([1, 1, 0]),
        "scale": _t(scale), "shift": _t(shift),
        "z_pres_logit": _t(logit), "z_pres_prob": _t(prob),
    }


def test_negative_elbo_sums_terms():
    out = _fake_outputs()
    images = _t(np.full((2, 4, 4, 1), 1.0))
    terms = O.negative_elbo(images, out)
    nll = 16 * LN2
    np.testing.assert_allclose(terms["nll"].numpy(), [nll, nll], rtol=1e-5)
    np.testing.assert_allclose(terms["nelbo"].numpy(),
                               [nll + 0.75 + 1.0 + 0.3 + 5.0, nll + 0.3 + 2.0 + 0.4 + 7.0],
                               rtol=1e-5)


def test_total_loss_combines_weighted_terms():
    out = _fake_outputs()
    images = _t(np.full((2, 4, 4, 1), 1.0))
    w = O.PenaltyWeights(gamma_ne=10.0, gamma_m=100.0, gamma_b=1.0, gamma_s=10.0, gamma_a=20.0,
                         gamma_n=0.5, counts=(1, 3), size_range_px=(17.0, 23.0))
    loss, scalars = O.total_loss(images, out, w, 50, Quirks())
    nll = 16 * LN2
    nelbo = np.array([nll + 7.05, nll + 9.7])
    # hand values over the two executed steps
    overlap = np.array([4.0, 0.0])                      # A-B twice; (10,10,20)-(40,40,20) apart
    out_img = np.array([0.0, 0.0])  # image 1: (10,10,20) and (40,40,20) just touch the edges
    size = np.array([0.0, 0.0])                         # |8 - 6| = 2 < 3; 20 = 20
    area = np.array([(relu(23 - 8) + relu(8 - 17) + relu(23 - 6) + relu(6 - 17)) / 2,
                     (relu(23 - 20) + relu(20 - 17)) * 2 / 2])  # (15 + 17) / 2, 6
    sig = lambda v: 1 / (1 + math.exp(-v))
    ent = lambda a: -(sig(a) * math.log(sig(a)) + (1 - sig(a)) * math.log(1 - sig(a)))
    entropy = np.array([ent(2.0) + ent(-1.0), 2 * ent(0.5)])
    p = np.array([[sig(2.0), sig(-1.0)], [sig(0.5), sig(0.5)]])
    ce = lambda u, q: -(u * math.log(q) + (1 - u) * math.log(1 - q))
    r1 = np.array([min(ce(1, p[b, 0]) + ce(0, p[b, 1]), ce(1, p[b, 0]) + ce(1, p[b, 1]))
                   for b in range(2)])
    pbar = p.mean(0)
    r2 = ce(1.0, pbar[0]) + ce(0.5, pbar[1])
    per_image = nelbo + 0.5 * entropy + 20 * area + 1.0 * (overlap + out_img) + 10 * size + 10 * r1
    want = per_image.mean() + 100 * r2
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert float(scalars["loss"]) == pytest.approx(want, rel=1e-5)
    assert float(scalars["count_margin"]) == pytest.approx(r2, rel=1e-5)  # unweighted
    assert float(scalars["overlap"]) == pytest.approx(overlap.mean(), rel=1e-5)
    assert float(scalars["area"]) == pytest.approx(area.mean(), rel=1e-5)
    assert float(scalars["count_min"]) == pytest.approx(r1.mean(), rel=1e-5)
    assert float(scalars["entropy"]) == pytest.approx(entropy.mean(), rel=1e-5)


def relu(v):
    return max(v, 0.0)


def test_total_loss_presence_masking_flag():
    out = _fake_outputs()
    images = _t(np.full((2, 4, 4, 1), 1.0))
    w = O.PenaltyWeights(gamma_b=1.0, gamma_s=10.0, gamma_a=20.0)
    _, faithful = O.total_loss(images, out, w, 50, Quirks())
    _, masked = O.total_loss(images, out, w, 50, Quirks(mask_penalties_by_presence=True))
    # only step 0 is present in both images: no pair terms; area = the single box
    assert float(faithful["overlap"]) == pytest.approx(2.0)  # mean of (4, 0)
    assert float(masked["overlap"]) == 0.0
    assert float(masked["size"]) == 0.0
    assert float(masked["area"]) == pytest.approx((relu(23 - 8) + relu(8 - 17) + 6.0) / 2)
    assert float(faithful["area"]) == pytest.approx((16.0 + 6.0) / 2)


def test_q20_gamma_ne_without_gamma_m_is_a_no_op(caplog):
    out = _fake_outputs()
    images = _t(np.full((2, 4, 4, 1), 1.0))
    base, _ = O.total_loss(images, out, O.PenaltyWeights(), 50, Quirks())
    w = O.PenaltyWeights(gamma_ne=10.0, gamma_m=0.0)
    only_ne, scalars = O.total_loss(images, out, w, 50, Quirks())
    assert float(only_ne) == pytest.approx(float(base), rel=1e-7)
    assert "count_min" not in scalars
    with caplog.at_level(logging.WARNING):
        assert O.warn_if_count_min_dropped(w, Quirks()) is True
    assert "gamma_ne" in caplog.text
    # the fix: count_min_needs_margin=False applies gamma_ne alone
    fixed, scalars = O.total_loss(images, out, w, 50, Quirks(count_min_needs_margin=False))
    assert float(fixed) == pytest.approx(float(base) + 10.0 * float(scalars["count_min"]), rel=1e-6)
    assert float(scalars["count_min"]) > 0
    assert O.warn_if_count_min_dropped(w, Quirks(count_min_needs_margin=False)) is False
    assert O.warn_if_count_min_dropped(O.PenaltyWeights(gamma_ne=10.0, gamma_m=100.0),
                                       Quirks()) is False
