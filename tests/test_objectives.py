"""The nELBO terms and the objective: nELBO + weighted constraints (docs/ORIGINAL.md §4.3–4.4,
§6.4; Q18, Q20)."""
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


def _objective(*pairs, monitor=()):
    return O.Objective(constraints=pairs, monitor=monitor, counts=(1, 3),
                       size_range_px=(17.0, 23.0))


def test_total_loss_combines_weighted_terms():
    out = _fake_outputs()
    images = _t(np.full((2, 4, 4, 1), 1.0))
    objective = _objective(("presence_entropy", 0.5), ("area", 20.0), ("overlap", 1.0),
                           ("out_of_image", 1.0), ("size_equality", 10.0), ("count_min", 10.0),
                           ("count_margin", 100.0))
    loss, per_image, batch = O.total_loss(images, out, objective, 50, Quirks())
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
    want_per_image = (nelbo + 0.5 * entropy + 20 * area + 1.0 * (overlap + out_img) + 10 * size
                      + 10 * r1)
    want = want_per_image.mean() + 100 * r2
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert float(batch["count_margin"]) == pytest.approx(r2, rel=1e-5)  # unweighted
    for name, value in (("overlap", overlap), ("area", area), ("count_min", r1),
                        ("presence_entropy", entropy), ("nelbo", nelbo)):
        np.testing.assert_allclose(per_image[name].numpy(), value, rtol=1e-5)
    # One of two replicas of a global batch of 4 whose other half has the same images: its
    # share is half the loss (per-image sum over 4, R2 over 2 replicas).
    share, _, _ = O.total_loss(images, out, objective, 50, Quirks(), global_batch=4,
                               num_replicas=2)
    assert float(share) == pytest.approx(want / 2, rel=1e-5)


def relu(v):
    return max(v, 0.0)


def test_monitored_constraints_are_logged_not_trained():
    out = _fake_outputs()
    images = _t(np.full((2, 4, 4, 1), 1.0))
    plain, _, _ = O.total_loss(images, out, _objective(), 50, Quirks())
    monitored, terms, _ = O.total_loss(images, out, _objective(monitor=("overlap", "area")), 50,
                                       Quirks())
    assert float(monitored) == float(plain)
    np.testing.assert_allclose(terms["overlap"].numpy(), [4.0, 0.0], rtol=1e-5)
    assert "area" in terms and "size_equality" not in terms
    # a monitored name that is also trained is trained (and logged once)
    o = _objective(("overlap", 1.0), monitor=("overlap",))
    assert o.monitor == ()
    trained, _, _ = O.total_loss(images, out, o, 50, Quirks())
    assert float(trained) == pytest.approx(float(plain) + 2.0, rel=1e-6)


def test_objective_rejects_bad_entries():
    # a name no test registers (docs' 'one_row' example is registered by test_constraints)
    with pytest.raises(ValueError, match="unknown constraint 'all_in_a_circle'.*count_margin"):
        _objective(("all_in_a_circle", 1.0))
    with pytest.raises(ValueError, match="finite number"):
        _objective(("overlap", float("nan")))
    with pytest.raises(ValueError, match="pairs"):
        O.Objective(constraints=("overlap",))
    with pytest.raises(ValueError, match="twice"):
        _objective(("overlap", 1.0), ("overlap", 2.0))
    with pytest.raises(ValueError, match="unknown constraint 'bogus'"):
        _objective(monitor=("bogus",))


def test_total_loss_presence_masking_flag():
    out = _fake_outputs()
    images = _t(np.full((2, 4, 4, 1), 1.0))
    o = _objective(("area", 20.0), ("overlap", 1.0), ("out_of_image", 1.0),
                   ("size_equality", 10.0))
    _, faithful, _ = O.total_loss(images, out, o, 50, Quirks())
    _, masked, _ = O.total_loss(images, out, o, 50, Quirks(mask_penalties_by_presence=True))
    # only step 0 is present in both images: no pair terms; area = the single box
    assert float(tf.reduce_mean(faithful["overlap"])) == pytest.approx(2.0)  # mean of (4, 0)
    assert float(tf.reduce_max(masked["overlap"])) == 0.0
    assert float(tf.reduce_max(masked["size_equality"])) == 0.0
    assert float(tf.reduce_mean(masked["area"])) == pytest.approx(
        (relu(23 - 8) + relu(8 - 17) + 6.0) / 2)
    assert float(tf.reduce_mean(faithful["area"])) == pytest.approx((16.0 + 6.0) / 2)


def test_q20_count_min_without_count_margin_is_a_no_op(caplog):
    out = _fake_outputs()
    images = _t(np.full((2, 4, 4, 1), 1.0))
    base, _, _ = O.total_loss(images, out, _objective(), 50, Quirks())
    only_min = _objective(("count_min", 10.0))
    loss, terms, _ = O.total_loss(images, out, only_min, 50, Quirks())
    assert float(loss) == pytest.approx(float(base), rel=1e-7)
    assert "count_min" not in terms
    with caplog.at_level(logging.WARNING):
        assert O.warn_if_count_min_dropped(only_min, Quirks()) is True
    assert "count_min" in caplog.text and "Q20" in caplog.text
    # the fix: count_min_needs_margin=False applies count_min alone
    fixed, terms, _ = O.total_loss(images, out, only_min, 50, Quirks(count_min_needs_margin=False))
    r1 = float(tf.reduce_mean(terms["count_min"]))
    assert float(fixed) == pytest.approx(float(base) + 10.0 * r1, rel=1e-6)
    assert r1 > 0
    assert O.warn_if_count_min_dropped(only_min, Quirks(count_min_needs_margin=False)) is False
    assert O.warn_if_count_min_dropped(_objective(("count_min", 10.0), ("count_margin", 100.0)),
                                       Quirks()) is False
