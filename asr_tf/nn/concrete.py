"""Binary Concrete z_pres in logit space (docs/ORIGINAL.md §3.3, quirks Q24, Q25).

A relaxed Bernoulli with logit ``alpha`` and temperature ``lam`` is sampled in
logit space, ``y = (alpha + logistic noise) / lam``, and ``z = sigmoid(y)``.
``y`` then has the density of ``tfd.Logistic(alpha / lam, 1 / lam)``; the KL
between posterior and prior is estimated from one sample as the log-density
ratio at ``y`` (reparameterised, gradients flow through ``y``).

Q24: the original's density has ``-(lam+1) y`` where the logistic density has
``-lam y``; the extra term cancels in the ratio because both sides share ``lam``.
We use the correct density and require equal temperatures.
"""
import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

NOISE_EPS = 1e-9  # the original's epsilon inside the logistic noise


def logistic_noise(u):
    """Maps U(0,1) draws to standard logistic noise, as the original: ln(u+e) - ln(1-u+e)."""
    return tf.math.log(u + NOISE_EPS) - tf.math.log(1.0 - u + NOISE_EPS)


def logit_distribution(alpha, temperature):
    """The distribution of the relaxed logit y: Logistic(alpha / lam, 1 / lam).

    Args:
      alpha: [...] Bernoulli logits.
      temperature: float lam > 0.
    Returns:
      tfd.Logistic with the batch shape of ``alpha``.
    """
    return tfd.Logistic(loc=alpha / temperature, scale=1.0 / temperature)


def sample_logit(alpha, temperature, u):
    """Reparameterised relaxed logit y = (alpha + L(u)) / lam. Shapes follow ``alpha``."""
    return (alpha + logistic_noise(u)) / temperature


def kl_estimate(y, alpha_q, alpha_p, temperature):
    """One-sample MC estimate of KL(q(y) || p(y)) = ln q(y) - ln p(y), elementwise."""
    return (logit_distribution(alpha_q, temperature).log_prob(y)
            - logit_distribution(alpha_p, temperature).log_prob(y))


def hard_z(y, alpha_q, deterministic=False):
    """Test-time z_pres in {0, 1}.

    Q25 (default): round(sigmoid(y)), i.e. a Bernoulli(sigmoid(alpha_q)) draw.
    ``deterministic``: threshold the posterior probability at 0.5 instead.
    """
    if deterministic:
        return tf.cast(alpha_q > 0.0, alpha_q.dtype)
    return tf.cast(y > 0.0, y.dtype)
