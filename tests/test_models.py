"""AIR and AIR-pPrior/ASR forward passes (docs/ORIGINAL.md §4, §5, §9; quirks Q12-Q17, Q34,
Q35)."""
import functools
import math
import warnings

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from asr_tf import objectives
from asr_tf.run import config
from asr_tf.models import build_model
from asr_tf.models.air import AIR, annealed_prior_logit, count_prior_bias
from asr_tf.models.base import RECORD_KEYS, TRAIN
from asr_tf.models.pprior import PPriorAIR
from asr_tf.nn import transformer
from asr_tf.quirks import Quirks
from conftest import MODEL_VALUES, make_model

S = 50
T = 6


@functools.lru_cache(maxsize=None)
def _cached_model(kind, counts, seed, kwargs):
    keras.utils.set_random_seed(seed)
    return make_model(kind, S, counts, **dict(kwargs))


def _model(kind, counts=(1, 3), seed=0, **kwargs):
    """A seeded model; models are shared between tests (the forward pass is pure given noise)."""
    return _cached_model(kind, tuple(counts), seed, tuple(sorted(kwargs.items())))


def _images(batch, seed=0):
    rng = np.random.default_rng(seed)
    x = np.zeros((batch, S, S, 1), np.float32)
    for b in range(batch):  # one or two bright squares per image
        for _ in range(1 + b % 2):
            r, c = rng.integers(2, S - 14, 2)
            x[b, r:r + 12, c:c + 12, 0] = 1.0
    return tf.constant(x)


def _noise(model, batch, seed=0, stops=None):
    """Noise from a seeded generator; ``stops[b] = k`` forces item b to stop at step k
    (u = 1 gives z ~ 1 before k, u = 0 gives z ~ 0 at k, u = 1 again afterwards)."""
    noise = model.sample_noise(batch, tf.random.Generator.from_seed(seed))
    if stops is not None:
        u = np.ones((T, batch), np.float32)
        for b, k in enumerate(stops):
            if k < T:
                u[k, b] = 0.0
        noise["u_pres"] = tf.constant(u)
    return noise


def _recompute_canvas(model, images, noise, out, use_present=True):
    """Sum over executed steps of [present] * z_pres * rendered glimpse, from the records."""
    canvas = np.zeros((images.shape[0], S, S), np.float32)
    for t in range(int(out["steps_executed"])):
        eps_pix = noise["eps_pix"][t] if "eps_pix" in noise else None
        scale, shift = out["scale"][:, t], out["shift"][:, t]
        _, z_what = model._encode_glimpse(images, scale, shift, noise["eps_what"][t], TRAIN)
        rendered = transformer.render_glimpse(model.decode(z_what, eps_pix), scale, shift, S,
                                              model.quirks.sampler_edge)[..., 0]
        w = out["z_pres"][:, t].numpy()
        if use_present:
            w = w * out["present"][:, t].numpy()
        canvas += w[:, None, None] * rendered.numpy()
    return canvas


# ----------------------------------------------------------------- shapes

@pytest.mark.parametrize("kind", ["air", "pprior"])
@pytest.mark.parametrize("training", [True, False])
def test_output_shapes(kind, training):
    b = 4
    model = _model(kind)
    out = model(_images(b), _noise(model, b), training=training)
    for k in RECORD_KEYS:
        assert out[k].shape[:2] == (b, T), k
    for k in ("z_pres", "z_pres_prob", "z_pres_logit", "prior_logit", "kl_pres", "kl_scale",
              "kl_shift", "kl_what", "present", "scale"):
        assert out[k].shape == (b, T), k
    assert out["shift"].shape == (b, T, 2)
    assert out["canvas"].shape == (b, S, S, 1)
    assert out["recon"].shape == (b, S, S, 1)
    assert out["count"].shape == (b,) and out["count"].dtype == tf.int32
    assert out["step_mask"].shape == (T,)
    assert out["steps_executed"].shape == ()
    recon = out["recon"].numpy()
    assert recon.min() >= 0.0 and recon.max() <= 1.0
    np.testing.assert_allclose(recon, np.clip(out["canvas"].numpy(), 0, 1))
    if not training:  # Q25: hard z_pres in the test model
        z = out["z_pres"].numpy()[:, :int(out["steps_executed"])]
        assert set(np.unique(z)) <= {0.0, 1.0}


@pytest.mark.parametrize("kind", ["air", "pprior"])
def test_count_equals_number_of_present_steps(kind):
    b = 8
    model = _model(kind)
    for seed in range(2):
        for training in (True, False):
            out = model(_images(b, seed), _noise(model, b, seed), training=training)
            present = out["present"].numpy()
            np.testing.assert_array_equal(out["count"].numpy(), present.sum(1))
            # present is a prefix of ones
            assert np.all(np.diff(present, axis=1) <= 0)


def test_scale_and_shift_ranges():
    model = _model("pprior")
    out = model(_images(4), _noise(model, 4))
    n = int(out["steps_executed"])
    assert np.all((out["scale"].numpy()[:, :n] > 0) & (out["scale"].numpy()[:, :n] < 1))
    assert np.all(np.abs(out["shift"].numpy()[:, :n]) < 1)


# ----------------------------------------------------------------- masking (Q15)

@pytest.mark.parametrize("kind", ["air", "pprior"])
def test_masking_after_forced_stop(kind):
    stops = [1, 4, 2, 0]
    b = len(stops)
    model = _model(kind)
    images = _images(b)
    noise = _noise(model, b, stops=stops)
    out = model(images, noise, training=True)
    n = int(out["steps_executed"])
    assert n == max(stops) + 1  # the loop runs while any item is active
    np.testing.assert_array_equal(out["count"].numpy(), stops)
    present = out["present"].numpy()
    for i, k in enumerate(stops):
        np.testing.assert_array_equal(present[i], [1.0] * k + [0.0] * (T - k))
        for key in ("kl_scale", "kl_shift", "kl_what"):
            v = out[key].numpy()[i]
            assert np.all(v[k:] == 0.0), (key, i)
            assert np.all(v[:k] > 0.0), (key, i)
        kl_pres = out["kl_pres"].numpy()[i]
        assert np.all(kl_pres[:k + 1] != 0.0), i  # up to and including the stopping step
        assert np.all(kl_pres[k + 1:] == 0.0), i
    # after stopping, z_pres is 1 again (u = 1) but nothing reaches the canvas
    z = out["z_pres"].numpy()
    assert z[0, 2] > 0.99 and present[0, 2] == 0.0
    canvas = out["canvas"].numpy()[..., 0]
    np.testing.assert_allclose(canvas, _recompute_canvas(model, images, noise, out), atol=1e-4)
    unmasked = _recompute_canvas(model, images, noise, out, use_present=False)
    assert np.abs(unmasked[0] - canvas[0]).max() > 1e-2  # the mask matters for item 0
    assert np.all(canvas[3] == 0.0)  # item 3 stopped at step 0
    # nELBO gates: the per-image sums equal the masked sums of the records
    terms = objectives.negative_elbo(images, out)
    np.testing.assert_allclose(terms["kl_what"].numpy(), out["kl_what"].numpy().sum(1), rtol=1e-6)


def test_loop_stops_early_and_unexecuted_records_are_zero():
    b = 4
    for kind in ("air", "pprior"):
        model = _model(kind)
        out = model(_images(b), _noise(model, b, stops=[2] * b), training=True)
        assert int(out["steps_executed"]) == 3 < T
        np.testing.assert_array_equal(out["step_mask"].numpy(), [1, 1, 1, 0, 0, 0])
        for k in RECORD_KEYS:
            assert np.all(out[k].numpy()[:, 3:] == 0.0), (kind, k)
            if k not in ("present", "z_pres", "kl_scale", "kl_shift", "kl_what"):
                assert np.any(out[k].numpy()[:, 2] != 0.0), (kind, k)  # step 2 was recorded
        np.testing.assert_array_equal(out["count"].numpy(), [2] * b)


def test_air_add_prior_kl_after_stop_q34():
    stops = [1, 3]
    model = _model("air", counts=(3,), add_prior=True)
    out = model(_images(2), _noise(model, 2, stops=stops), training=True)
    kl = out["kl_pres"].numpy()
    assert int(out["steps_executed"]) == 4
    # item 0 stopped at 1: steps 2, 3 carry the KL against a -100 prior (z ~ 1 there: large)
    assert np.all(kl[0, 2:4] > 10.0)
    plain = _model("air", counts=(3,))
    out = plain(_images(2), _noise(plain, 2, stops=stops), training=True)
    assert np.all(out["kl_pres"].numpy()[0, 2:] == 0.0)


# ----------------------------------------------------------------- gradients

_MONITOR = ("overlap", "out_of_image", "size_equality", "area")
_GRAD_CASES = {
    "air": ("air", (1, 3), objectives.Objective(monitor=_MONITOR)),
    "pprior": ("pprior", (1, 3), objectives.Objective(monitor=_MONITOR)),
    "asr_count": ("pprior", (1, 3), objectives.Objective(
        constraints=[("count_min", 10.0), ("count_margin", 100.0)], counts=(1, 3))),
    "asr_overlap": ("pprior", (3,), objectives.Objective(
        constraints=[("area", 20.0), ("overlap", 1.0), ("out_of_image", 1.0),
                     ("size_equality", 10.0)], counts=(3,), size_range_px=(11.0, 15.0))),
}


@pytest.mark.parametrize("case", sorted(_GRAD_CASES))
def test_gradients_finite_with_extreme_inputs(case):
    kind, counts, weights = _GRAD_CASES[case]
    model = _model(kind, counts, size_range_px=weights.size_range_px)
    if case == "asr_overlap":
        assert model.fix_steps == 3
    b = 4
    for value in (0.0, 1.0):
        images = tf.fill([b, S, S, 1], value)
        with tf.GradientTape() as tape:
            out = model(images, _noise(model, b, seed=int(value)), training=True)
            loss, per_image, batch = objectives.total_loss(images, out, weights, S, model.quirks)
        grads = tape.gradient(loss, model.trainable_variables)
        assert np.isfinite(float(loss)), (case, value)
        assert all(np.all(np.isfinite(v.numpy())) for v in {**per_image, **batch}.values())
        used = [g for g in grads if g is not None]
        assert len(used) > 0.8 * len(grads)
        for g, v in zip(grads, model.trainable_variables):
            if g is not None:
                assert np.all(np.isfinite(g.numpy())), (case, value, v.path)
        assert any(np.any(g.numpy() != 0) for g in used)


# ----------------------------------------------------------------- KL: closed form vs MC

def _normal_logpdf(x, loc, scale):
    return -0.5 * ((x - loc) / scale) ** 2 - np.log(scale) - 0.5 * math.log(2 * math.pi)


def _mc_kl(q_loc, q_scale, p_loc, p_scale, n=100_000, seed=0):
    """MC estimate of sum_d KL(N(q) || N(p)) per row and its standard error. Inputs [B, D]."""
    rng = np.random.default_rng(seed)
    q_loc, q_scale = np.asarray(q_loc, np.float64), np.asarray(q_scale, np.float64)
    p_loc = np.broadcast_to(np.asarray(p_loc, np.float64), q_loc.shape)
    p_scale = np.broadcast_to(np.asarray(p_scale, np.float64), q_loc.shape)
    eps = rng.standard_normal((n,) + q_loc.shape)
    x = q_loc + q_scale * eps
    ratio = (_normal_logpdf(x, q_loc, q_scale) - _normal_logpdf(x, p_loc, p_scale)).sum(-1)
    return ratio.mean(0), ratio.std(0) / math.sqrt(n)


def _assert_kl_close(analytic, q_loc, q_scale, p_loc, p_scale, name):
    mc, se = _mc_kl(q_loc, q_scale, p_loc, p_scale)
    assert np.all(np.abs(analytic - mc) < 5 * se + 1e-4), (name, analytic, mc, se)


def _step0_noise(model, b):
    noise = _noise(model, b, stops=[T] * b)  # everything present at step 0
    for k in ("eps_shift", "eps_scale"):
        noise[k] = tf.concat([tf.zeros_like(noise[k][:1]), noise[k][1:]], 0)
    return noise


def test_pprior_kl_closed_form_matches_mc():
    b = 3
    model = _model("pprior")
    images = _images(b)
    out = model(images, _step0_noise(model, b), training=True)
    flat = tf.reshape(images, [b, S * S])
    zeros_u = tf.zeros([b, 256])
    h, _ = model.inference(model.inference.project_image(flat), tf.zeros([b, 50]),
                           tf.zeros([b, 3]), (zeros_u, zeros_u))
    q_shift = model.inference.shift_posterior(h)
    xi = q_shift.loc  # eps_shift = 0 at step 0
    q_scale = model.inference.scale_posterior(h, xi)
    g, _ = model.prior(tf.zeros([b, 50]), tf.zeros([b, 3]), (zeros_u, zeros_u))
    p_shift = model.prior.shift_prior(g)
    _assert_kl_close(out["kl_shift"].numpy()[:, 0], q_shift.loc.numpy(), q_shift.scale.numpy(),
                     p_shift.loc.numpy(), p_shift.scale.numpy(), "shift")
    # scale prior fixed N(-1, variance 0.05) on the pre-sigmoid scale (Q12)
    _assert_kl_close(out["kl_scale"].numpy()[:, 0], q_scale.loc.numpy(), q_scale.scale.numpy(),
                     -1.0, math.sqrt(0.05), "scale")
    zeta = q_scale.loc
    window = transformer.extract_glimpse(images[..., 0], tf.sigmoid(zeta[:, 0]), tf.tanh(xi), 28)
    q_what = model.vae.encoder(tf.reshape(window, [b, 784])).distribution
    _assert_kl_close(out["kl_what"].numpy()[:, 0], q_what.loc.numpy(), q_what.scale.numpy(),
                     0.0, 1.0, "what")
    np.testing.assert_allclose(out["scale"].numpy()[:, 0], tf.sigmoid(zeta[:, 0]).numpy(),
                               rtol=1e-5)
    np.testing.assert_allclose(out["shift"].numpy()[:, 0], tf.tanh(xi).numpy(), rtol=1e-5,
                               atol=1e-6)


def test_air_kl_closed_form_matches_mc():
    b = 3
    model = _model("air")
    images = _images(b)
    out = model(images, _step0_noise(model, b), training=True)
    zeros_u = tf.zeros([b, 256])
    h, _ = model.net(model.net.project_image(tf.reshape(images, [b, S * S])), (zeros_u, zeros_u))
    q_scale, q_shift = model.net.where_posterior(h)
    _assert_kl_close(out["kl_shift"].numpy()[:, 0], q_shift.loc.numpy(), q_shift.scale.numpy(),
                     0.0, 1.0, "shift")
    _assert_kl_close(out["kl_scale"].numpy()[:, 0], q_scale.loc.numpy(), q_scale.scale.numpy(),
                     -1.0, math.sqrt(0.05), "scale")


def test_kl_pres_is_the_concrete_log_ratio():
    b = 4
    model = _model("pprior")
    noise = _noise(model, b, seed=3)
    out = model(_images(b), noise, training=True)
    a_q = out["z_pres_logit"].numpy()[:, 0]
    a_p = out["prior_logit"].numpy()[:, 0]
    u = noise["u_pres"].numpy()[0]
    lam = 0.1
    y = (a_q + np.log(u + 1e-9) - np.log(1 - u + 1e-9)) / lam
    sp = lambda v: np.logaddexp(0.0, v)
    want = (a_q - a_p) - 2 * sp(a_q - lam * y) + 2 * sp(a_p - lam * y)
    np.testing.assert_allclose(out["kl_pres"].numpy()[:, 0], want, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(out["z_pres"].numpy()[:, 0], 1 / (1 + np.exp(-y)), atol=1e-5)


# ----------------------------------------------------------------- z_pres priors

def test_fix_steps_prior_logits():
    model = _model("pprior", counts=(3,))
    assert model.fix_steps == 3
    out = model(_images(2), _noise(model, 2, stops=[3, 3]), training=True)
    assert int(out["steps_executed"]) == 4
    np.testing.assert_array_equal(out["prior_logit"].numpy()[:, :4],
                                  [[100, 100, 100, -100]] * 2)


def test_zpres_prior_lag_q13():
    b = 4
    images = _images(b, seed=5)
    for lag in (True, False):
        model = _model("pprior") if lag else _model("pprior", quirks=Quirks(zpres_prior_lag=False))
        out = model(images, _noise(model, b, stops=[T] * b), training=True)
        logit = out["prior_logit"].numpy()
        assert np.ptp(logit[:, 0]) == 0.0  # g_{-1} = 0 (lag) or g_0 (no z yet): constant
        if lag:  # step 1 reads g_0, which saw only zero inputs: still a constant
            assert np.ptp(logit[:, 1]) == 0.0
            assert np.ptp(logit[:, 2]) > 0.0
        else:  # step 1 reads g_1, which saw the step-0 posterior samples
            assert np.ptp(logit[:, 1]) > 0.0


def test_air_count_prior_bias():
    np.testing.assert_array_equal(count_prior_bias([3], 6), [100, 100, 100, -100, -100, -100])
    np.testing.assert_array_equal(count_prior_bias([1, 3], 6), [100, 0, 100, -100, -100, -100])
    # [2, 4] (not used by the paper): q = (1, 1, 1/2 -> 0, 1, 0, 0)
    np.testing.assert_array_equal(count_prior_bias([2, 4], 6), [100, 100, 0, 100, -100, -100])
    # [1, 2, 4]: step 1: 2/3 of the counts continue -> ln 2; step 2: 1/2 -> 0
    np.testing.assert_allclose(count_prior_bias([1, 2, 4], 6),
                               [100, math.log(2.0), 0.0, 100, -100, -100], rtol=1e-6)


def test_air_annealed_prior_logit():
    # ln(max(1e4 * 0.1^(k/3000), 1e-9) + 1e-9)
    assert float(annealed_prior_logit(0)) == pytest.approx(math.log(1e4), abs=1e-4)  # 9.2103
    assert float(annealed_prior_logit(0)) == pytest.approx(9.2103, abs=1e-4)
    assert float(annealed_prior_logit(12000)) == pytest.approx(0.0, abs=1e-4)
    assert float(annealed_prior_logit(39000)) == pytest.approx(math.log(2e-9), abs=1e-3)  # -20.03
    assert float(annealed_prior_logit(100000)) == pytest.approx(-20.0301, abs=1e-3)
    # linear in between: 9.2103 - 7.6753e-4 k
    assert float(annealed_prior_logit(6000)) == pytest.approx(9.2103 - 7.6753e-4 * 6000, abs=1e-3)


def test_air_prior_logit_record_uses_step_and_bias():
    model = _model("air", counts=(3,), add_prior=True)
    out = model(_images(2), _noise(model, 2, stops=[3, 3]), step=12000, training=True)
    np.testing.assert_allclose(out["prior_logit"].numpy()[:, :4],
                               [[100, 100, 100, -100]] * 2, atol=1e-3)
    plain = _model("air")
    out = plain(_images(2), _noise(plain, 2, stops=[2, 2]), step=0, training=True)
    np.testing.assert_allclose(out["prior_logit"].numpy()[:, :3], math.log(1e4), atol=1e-4)


def test_build_model_kinds():
    air = _model("air", counts=(1, 3))
    assert isinstance(air, AIR)
    assert not air.add_prior
    pp = _model("pprior", counts=(1, 3))
    assert isinstance(pp, PPriorAIR)
    assert pp.fix_steps is None
    assert _model("pprior", counts=(3,)).fix_steps == 3
    with pytest.raises(ValueError):
        build_model("vae", S, (1,), **MODEL_VALUES["air"])


@pytest.mark.parametrize("kind, config_name", [("air", "air_13"), ("pprior", "air_asr_13")])
def test_per_model_values_come_from_the_kind_config(kind, config_name):
    # configs/air.gin and configs/pprior.gin bind the original's lambda / tau / sigma
    # (AIR 1.0 / 0.99 / 0.3, pPrior 0.1 / 0.9 / 0.0); build_model has no defaults for them.
    config.parse([config_name], ["build_model.lstm_units = 8"])
    model = build_model(canvas_px=S, counts=(1, 3))
    want = MODEL_VALUES[kind]
    assert {k: getattr(model, k) for k in want} == want
    assert {k: gin.query_parameter(f"build_model.{k}") for k in want} == want


def test_build_model_names_a_missing_per_model_value():
    with pytest.raises(RuntimeError, match=r"build_model.*\['decoder_noise'\]"):
        build_model("air", S, (1, 3), z_pres_temperature=1.0, stop_threshold=0.99)
    with pytest.raises(RuntimeError, match=r"build_model.*'stop_threshold'"):
        build_model("pprior", S, (1, 3), z_pres_temperature=0.1, decoder_noise=0.0)


def test_pprior_with_decoder_noise():
    # the noise mechanism is the models' common one: drawn as eps_pix, added to the logits
    noisy, plain = _model("pprior", decoder_noise=0.3), _model("pprior")
    assert noisy.get_weights()[0].tobytes() == plain.get_weights()[0].tobytes()  # same seed
    noise = _noise(noisy, 2)
    assert "eps_pix" in noise and "eps_pix" not in _noise(plain, 2)
    images = _images(2)
    out = noisy(images, noise, training=False)["canvas"]
    quiet = noisy(images, dict(noise, eps_pix=tf.zeros_like(noise["eps_pix"])), training=False)
    ref = plain(images, {k: v for k, v in noise.items() if k != "eps_pix"}, training=False)
    np.testing.assert_allclose(quiet["canvas"], ref["canvas"], rtol=1e-5, atol=1e-6)
    assert not np.allclose(out, ref["canvas"], atol=1e-3)


def test_air_without_decoder_noise():
    # decoder_noise = 0 draws no eps_pix; the step must not require it
    keras.utils.set_random_seed(0)
    model = AIR(S, decoder_noise=0.0)
    noise = model.sample_noise(2, tf.random.Generator.from_seed(0))
    assert "eps_pix" not in noise
    out = model(_images(2), noise, training=True)
    assert out["canvas"].shape == (2, S, S, 1)


def test_wrong_image_shape_raises():
    model = _model("pprior")
    with pytest.raises(ValueError):
        model(tf.zeros([2, 40, 40, 1]), _noise(model, 2))


# ----------------------------------------------------------------- generation

def test_pprior_generation_fixed_scale_renders_at_mean_size():
    n = 4
    model = _model("pprior", counts=(1,),
                   quirks=Quirks(gen_bernoulli_pixels=False, sampler_edge="hard"))
    noise = model.generation_noise(n, tf.random.Generator.from_seed(0))
    noise["eps_shift"] = tf.zeros_like(noise["eps_shift"])  # prior means: boxes near the centre
    gen = model.generate(noise)
    assert gen["images"].shape == (n, S, S, 1)
    assert gen["scale"].shape == (n, T) and gen["shift"].shape == (n, T, 2)
    assert gen["present"].shape == (n, T) and gen["count"].shape == (n,)
    np.testing.assert_array_equal(gen["count"].numpy(), [1] * n)  # fix_steps = 1 (+-100)
    # Q35: mean(17, 23) / 50 = 0.4 for every object
    np.testing.assert_allclose(gen["scale"].numpy(), 0.4, rtol=1e-6)
    probs = tf.sigmoid(model.vae.decoder(noise["eps_what"][0]).distribution.logits)
    want = transformer.render_glimpse(tf.reshape(probs, [n, 28, 28]), tf.fill([n], 0.4),
                                      gen["shift"][:, 0], S)
    np.testing.assert_allclose(gen["images"].numpy()[..., 0], want.numpy(), atol=1e-5)
    # the decoder mean is > 0 everywhere, so the support is the box: 0.4 * 49 = 19.6 px wide
    images = gen["images"].numpy()[..., 0]
    for i in range(n):
        cols = np.nonzero(images[i].sum(0))[0]
        rows = np.nonzero(images[i].sum(1))[0]
        assert 19 <= len(cols) <= 21 and 19 <= len(rows) <= 21
        assert cols[-1] - cols[0] + 1 == len(cols)


def test_pprior_generation_sampled_scale_and_bernoulli_pixels():
    n = 6
    model = _model("pprior", counts=(1, 3), quirks=Quirks(gen_fixed_scale=False))
    noise = model.generation_noise(n, tf.random.Generator.from_seed(1))
    gen = model.generate(noise)
    want = tf.sigmoid(-1.0 + math.sqrt(0.05) * noise["eps_scale"][..., 0]).numpy().T  # [n, T]
    np.testing.assert_allclose(gen["scale"].numpy(), want, rtol=1e-5)
    np.testing.assert_array_equal(gen["count"].numpy(), gen["present"].numpy().sum(1))
    assert np.all(np.isfinite(gen["images"].numpy()))


def test_air_generation_draws_exactly_n_objects():
    n = 3
    model = _model("air")
    noise = model.generation_noise(n, tf.random.Generator.from_seed(2))
    gen = model.generate(noise, 2)
    assert gen["images"].shape == (n, S, S, 1)
    np.testing.assert_array_equal(gen["count"].numpy(), [2] * n)
    np.testing.assert_array_equal(gen["present"].numpy(), [[1, 1, 0, 0, 0, 0]] * n)
    want = np.zeros((n, S, S), np.float32)
    for t in range(2):
        logits = model.vae.decoder(noise["eps_what"][t]).distribution.logits
        window = tf.sigmoid(logits + 0.3 * noise["eps_pix"][t])
        want += transformer.render_glimpse(tf.reshape(window, [n, 28, 28]), gen["scale"][:, t],
                                           gen["shift"][:, t], S).numpy()
    np.testing.assert_allclose(gen["images"].numpy()[..., 0], want, atol=1e-5)
    np.testing.assert_allclose(
        gen["scale"].numpy(),
        tf.sigmoid(-1.0 + math.sqrt(0.05) * noise["eps_scale"][..., 0]).numpy().T, rtol=1e-5)
    with pytest.raises(ValueError):
        model.generate(noise, 0)


@pytest.mark.parametrize("kind", ["air", "pprior"])
def test_model_only_checkpoint_round_trips_every_variable(kind, tmp_path):
    """A checkpoint of the model alone reaches every weight (none hidden in Python lists)."""
    keras.utils.set_random_seed(1)
    source = make_model(kind, S, (1, 3))
    keras.utils.set_random_seed(2)
    target = make_model(kind, S, (1, 3))
    assert len(source.variables) == len(target.variables) > 0
    assert any(not np.array_equal(a.numpy(), b.numpy())
               for a, b in zip(source.variables, target.variables))
    path = tf.train.Checkpoint(model=source).save(str(tmp_path / "ckpt"))
    saved = {name for name, _ in tf.train.list_variables(path)
             if name.startswith("model/") and name.endswith(".ATTRIBUTES/VARIABLE_VALUE")}
    assert len(saved) == len(source.variables)
    tf.train.Checkpoint(model=target).restore(path).assert_consumed()
    for a, b in zip(source.variables, target.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


@pytest.mark.parametrize("kind", ["air", "pprior"])
def test_models_are_built_at_construction(kind):
    """Every variable exists once the model is made, and Keras knows it: the first call builds
    nothing (no "`build()` was called on layer ..." warning) and creates no variable."""
    keras.utils.set_random_seed(0)
    model = make_model(kind, S, (1, 3))
    names = [v.path for v in model.variables]
    assert model.built and len(names) > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any Keras warning fails the test
        model(_images(2), _noise(model, 2), training=True)
        model(_images(2), _noise(model, 2), training=False)
    assert [v.path for v in model.variables] == names


@pytest.mark.parametrize("kind", ["air", "pprior"])
def test_scale_bias_init_shifts_the_first_scale_logit(kind):
    # Same seed, same noise: only the scale head's output bias differs, so the first step's
    # pre-sigmoid scale moves by exactly the bias (later pPrior steps see different feedback).
    base, small = _model(kind), _model(kind, scale_bias_init=-1.0)
    images = _images(4)
    s0 = base(images, _noise(base, 4))["scale"].numpy()[:, 0]
    s1 = small(images, _noise(small, 4))["scale"].numpy()[:, 0]
    logit = lambda s: np.log(s) - np.log1p(-s)  # noqa: E731
    np.testing.assert_allclose(logit(s1) - logit(s0), -1.0, atol=1e-4)
