"""Binary Concrete z_pres (docs/ORIGINAL.md §3.3, quirks Q24, Q25)."""
import math

import numpy as np
import pytest
import tensorflow as tf

from asr_tf.nn import concrete as C


def _softplus(v):
    return np.logaddexp(0.0, v)


def test_logistic_log_density_closed_form():
    # Logistic(alpha/lam, 1/lam) at y: ln lam + (alpha - lam y) - 2 softplus(alpha - lam y)
    # (the original's -(lam+1) y is wrong by -y; Q24)
    alpha = np.array([-3.0, -0.5, 0.0, 0.7, 4.0])
    y = np.array([-20.0, 1.3, 0.0, -4.0, 35.0])
    for lam in (0.1, 0.5, 1.0):
        got = C.logit_distribution(tf.constant(alpha, tf.float32), lam).log_prob(
            tf.constant(y, tf.float32)).numpy()
        a = alpha - lam * y
        want = math.log(lam) + a - 2.0 * _softplus(a)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_logistic_density_integrates_to_one():
    lam, alpha = 0.1, 0.8
    y = np.linspace(-400, 400, 200001)
    a = alpha - lam * y
    dens = np.exp(math.log(lam) + a - 2.0 * _softplus(a))
    assert np.trapezoid(dens, y) == pytest.approx(1.0, abs=1e-4)
    got = np.exp(C.logit_distribution(tf.constant(alpha), lam).log_prob(
        tf.constant(y[::1000], tf.float32)).numpy())
    np.testing.assert_allclose(got, dens[::1000], rtol=1e-4, atol=1e-9)


def test_kl_estimate_equals_original_formula():
    rng = np.random.default_rng(0)
    n = 200
    alpha_q = rng.uniform(-6, 6, n)
    alpha_p = np.concatenate([rng.uniform(-6, 6, n - 4), [100.0, -100.0, 9.21, -20.03]])
    for lam in (0.1, 1.0):
        y = (alpha_q + rng.logistic(size=n)) / lam
        got = C.kl_estimate(tf.constant(y, tf.float32), tf.constant(alpha_q, tf.float32),
                            tf.constant(alpha_p, tf.float32), lam).numpy()
        want = ((alpha_q - alpha_p) - 2.0 * _softplus(alpha_q - lam * y)
                + 2.0 * _softplus(alpha_p - lam * y))
        # float32 loc/scale arithmetic at |alpha/lam| = 1000 costs ~1e-3 absolute
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-3)


def test_kl_estimate_zero_for_equal_logits_and_gradient_through_y():
    y = tf.Variable([0.3, -2.0, 5.0])
    a = tf.constant([0.1, -1.0, 2.0])
    with tf.GradientTape() as tape:
        kl = C.kl_estimate(y, a, a, 0.1)
    np.testing.assert_allclose(kl.numpy(), 0.0, atol=1e-6)
    y2 = tf.Variable([0.3])
    with tf.GradientTape() as tape:
        kl = C.kl_estimate(y2, tf.constant([1.0]), tf.constant([-1.0]), 0.5)
    g = tape.gradient(kl, y2).numpy()[0]
    # d/dy [-2 sp(aq - lam y) + 2 sp(ap - lam y)]
    #   = 2 lam (sigmoid(aq - lam y) - sigmoid(ap - lam y))
    sig = lambda v: 1.0 / (1.0 + math.exp(-v))
    assert g == pytest.approx(2 * 0.5 * (sig(1.0 - 0.15) - sig(-1.0 - 0.15)), rel=1e-5)


def test_logistic_noise_and_sample_logit():
    u = np.array([0.0, 0.1, 0.5, 0.9, 1.0], np.float32)
    L = C.logistic_noise(tf.constant(u)).numpy()
    np.testing.assert_allclose(L[1:4], np.log(u[1:4] / (1 - u[1:4])), atol=1e-5)
    # the 1e-9 epsilon keeps the ends finite: ln(1e-9) = -20.723
    assert L[0] == pytest.approx(-20.7233, abs=1e-3)
    assert L[4] == pytest.approx(20.7233, abs=1e-3)
    y = C.sample_logit(tf.constant([1.0, 1.0]), 0.1, tf.constant([0.5, 0.9])).numpy()
    np.testing.assert_allclose(y, [10.0, (1.0 + math.log(9.0)) / 0.1], rtol=1e-5)


def test_hard_z_round_versus_threshold():
    y = tf.constant([-2.0, 0.5, 3.0, -0.1])
    alpha = tf.constant([1.0, -1.0, 0.2, -4.0])
    stochastic = C.hard_z(y, alpha).numpy()
    np.testing.assert_array_equal(stochastic, [0.0, 1.0, 1.0, 0.0])
    np.testing.assert_array_equal(stochastic, np.round(1.0 / (1.0 + np.exp(-y.numpy()))))
    np.testing.assert_array_equal(C.hard_z(y, alpha, deterministic=True).numpy(),
                                  [1.0, 0.0, 1.0, 0.0])


def test_sample_is_a_relaxed_bernoulli():
    # P(y > 0) = P(L > -alpha) = sigmoid(alpha) for every temperature (Q25: round = Bernoulli)
    rng = np.random.default_rng(3)
    n = 200_000
    alpha = np.array([-2.0, 0.0, 1.5], np.float32)
    u = rng.uniform(size=(n, 3)).astype(np.float32)
    p = 1.0 / (1.0 + np.exp(-alpha))
    for lam in (0.1, 1.0):
        y = C.sample_logit(tf.constant(alpha)[None], lam, tf.constant(u)).numpy()
        frac = np.mean(y > 0, 0)
        np.testing.assert_allclose(frac, p, atol=0.005)  # sd ~ 0.0011
        hard = C.hard_z(tf.constant(y), tf.constant(alpha)[None]).numpy()
        np.testing.assert_allclose(hard.mean(0), p, atol=0.005)
    # at low temperature sigmoid(y) is nearly binary, so its mean is close to sigmoid(alpha)
    y = C.sample_logit(tf.constant(alpha)[None], 0.1, tf.constant(u)).numpy()
    z = tf.sigmoid(y).numpy()
    np.testing.assert_allclose(z.mean(0), p, atol=0.01)
    assert np.mean((z > 0.01) & (z < 0.99)) < 0.25  # |alpha + L| < 0.46 only
