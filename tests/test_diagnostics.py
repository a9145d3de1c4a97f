"""Count reports (asr_tf/lab/diagnostics.py), AIR's glimpse ledger and its bindable prior schedule."""
import math

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from asr_tf import objectives
from asr_tf.run import config
from asr_tf.lab import diagnostics
from asr_tf.models import build_model
from asr_tf.models.air import AIR, PresencePriorSchedule
from asr_tf.nn import concrete
from conftest import make_model

S = 50
T = 6


# ------------------------------------------------------------------ count ledger

def test_count_elbo_ledger_hand_worked():
    # one scene of two pixels x = [1, 0]; glimpse 0 paints [0.5, 0], glimpse 1 [0.5, 0.5]
    images = np.array([[[1.0, 0.0]]])  # [1, 1, 2]
    rendered = np.array([[[[0.5, 0.0]], [[0.5, 0.5]]]])  # [1, T=2, 1, 2]
    ledger = diagnostics.count_elbo_ledger(images, rendered, [[2.0, 3.0]], [0.0, 0.0])
    ln2 = math.log(2.0)
    nll = [-math.log(1e-10), ln2, ln2]  # canvas [0,0], [0.5,0], [1,0.5]
    np.testing.assert_allclose(ledger["nll"][0], nll, rtol=1e-6)
    # presence: ln 2 per present step, ln 2 for the stop (none after the last step)
    np.testing.assert_allclose(ledger["presence_cost"][0], [ln2, 2 * ln2, 2 * ln2], rtol=1e-9)
    np.testing.assert_allclose(ledger["kl_glimpse"][0], [0.0, 2.0, 5.0])
    np.testing.assert_allclose(ledger["nelbo"][0],
                               [nll[0] + ln2, nll[1] + 2 + 2 * ln2, nll[2] + 5 + 2 * ln2], rtol=1e-6)
    assert ledger["best_count"][0] == 1
    np.testing.assert_allclose(ledger["gain"][0], [nll[0] - ln2, 0.0], atol=1e-6)


def test_count_elbo_ledger_prior_cost_moves_the_best_count():
    # the second glimpse is worth -ln(1e-10) = 23 nats of reconstruction: bought at prior
    # log-odds 0 (cost ln 2 + 0.5 nats of KL), not at -30 (cost ~30.5 nats)
    images = np.array([[[1.0, 1.0, 1.0, 1.0]]])
    rendered = np.array([[[[1.0, 1.0, 1.0, 0.0]], [[0.0, 0.0, 0.0, 1.0]]]])
    kl = [[0.5, 0.5]]
    cheap = diagnostics.count_elbo_ledger(images, rendered, kl, [0.0, 0.0])
    dear = diagnostics.count_elbo_ledger(images, rendered, kl, [-30.0, -30.0])
    assert cheap["best_count"][0] == 2
    assert dear["best_count"][0] == 1
    summary = diagnostics.ledger_summary(dear, count=[2], true_count=[2])
    assert summary[2]["agree"] == 0.0 and summary[2]["best_is_true"] == 0.0
    np.testing.assert_allclose(summary[2]["best_hist"], [0, 1, 0])
    assert "| 2 | 1 | 0.000 | 1.000 | 0.000 | 0.000 | 0.000 |" in diagnostics.format_ledger_summary(summary)


def _air(seed=0):
    keras.utils.set_random_seed(seed)
    return make_model("air", S, (1, 3), zpres_prior=PresencePriorSchedule())


def _images(batch, seed=0):
    rng = np.random.default_rng(seed)
    x = np.zeros((batch, S, S, 1), np.float32)
    for b in range(batch):
        for _ in range(1 + b % 3):
            r, c = rng.integers(2, S - 14, 2)
            x[b, r:r + 12, c:c + 12, 0] = 1.0
    return tf.constant(x)


def test_glimpse_ledger_reproduces_the_test_pass():
    # AIR's proposals do not depend on z_pres: the test pass with count k uses exactly the
    # ledger's first k glimpses, so its nll is the ledger's nll at the inferred count.
    model, b, step = _air(), 6, 5000
    images = _images(b)
    noise = model.sample_noise(b, tf.random.Generator.from_seed(3))
    u = np.full((T, b), 0.999, np.float32)  # z = 1 until the forced stop
    for i, k in enumerate([0, 1, 2, 3, 4, 6]):
        if k < T:
            u[k, i] = 1e-6
    noise["u_pres"] = tf.constant(u)
    out = model(images, noise, step=step, training=False)
    count = out["count"].numpy()
    np.testing.assert_array_equal(count, [0, 1, 2, 3, 4, 6])
    led = diagnostics.glimpse_ledger(model, images, noise, step)
    ledger = diagnostics.count_elbo_ledger(images.numpy(), led["rendered"], led["kl_glimpse"],
                                           led["prior_logit"])
    nll = objectives.bernoulli_nll(images, out["recon"]).numpy()
    np.testing.assert_allclose(ledger["nll"][np.arange(b), count], nll, rtol=1e-5)
    kl = (out["kl_scale"] + out["kl_shift"] + out["kl_what"]).numpy()  # masked by presence
    np.testing.assert_allclose(ledger["kl_glimpse"][np.arange(b), count], kl.sum(1), rtol=1e-5)
    np.testing.assert_allclose(led["z_pres_logit"], out["z_pres_logit"].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(led["prior_logit"], out["prior_logit"].numpy()[0], rtol=1e-6)
    # other z_pres noise, same proposals
    noise["u_pres"] = tf.random.uniform([T, b], seed=1)
    again = diagnostics.glimpse_ledger(model, images, noise, step)
    np.testing.assert_array_equal(again["rendered"], led["rendered"])


# ------------------------------------------------------------- KL of the relaxation

def test_expected_concrete_kl_matches_the_models_estimator_and_hand_values():
    # equal logits: 0; unit-scale logistics Delta apart: Delta - 2 + 2 E[softplus(-L - Delta)]
    assert diagnostics.expected_concrete_kl(3.0, 3.0) == pytest.approx(0.0, abs=1e-9)
    assert diagnostics.expected_concrete_kl(5.0, -20.0) == pytest.approx(23.0, abs=1e-3)
    assert diagnostics.expected_concrete_kl(-5.0, -20.0) == pytest.approx(13.0, abs=1e-3)
    # the one-sample estimator of asr_tf.nn.concrete averages to it
    u = tf.random.stateless_uniform([200_000], seed=[1, 2])
    for aq, ap in [(2.0, -20.0), (-1.0, 0.5)]:
        y = concrete.sample_logit(tf.fill([200_000], aq), 1.0, u)
        mc = float(tf.reduce_mean(concrete.kl_estimate(y, aq, ap, 1.0)))
        assert diagnostics.expected_concrete_kl(aq, ap) == pytest.approx(mc, abs=0.03)


def test_bernoulli_kl_hand_values():
    assert diagnostics.bernoulli_kl(0.7, 0.7) == pytest.approx(0.0, abs=1e-12)
    assert diagnostics.bernoulli_kl(20.0, -20.0) == pytest.approx(20.0, abs=1e-6)
    q, p = 1 / (1 + math.exp(-1.0)), 0.5
    want = q * math.log(q / p) + (1 - q) * math.log((1 - q) / (1 - p))
    assert diagnostics.bernoulli_kl(1.0, 0.0) == pytest.approx(want, rel=1e-9)


# ------------------------------------------------------------ the bindable schedule

def test_presence_prior_schedule_hand_values():
    original = PresencePriorSchedule()
    assert original.floor_step == pytest.approx(39000.0)  # 3000 * log10(1e4 / 1e-9)
    assert float(original.logit(12000)) == pytest.approx(0.0, abs=1e-4)
    fast = PresencePriorSchedule(steps_per_decade=328)
    assert fast.floor_step == pytest.approx(4264.0)
    assert float(fast.logit(1312)) == pytest.approx(0.0, abs=1e-4)  # 4 decades: odds 1
    assert float(fast.logit(656)) == pytest.approx(math.log(100.0), abs=1e-4)
    assert float(fast.logit(5000)) == pytest.approx(math.log(2e-9), abs=1e-3)  # floor
    flat = PresencePriorSchedule(start_odds=1e-9)  # on the floor from step 0
    assert flat.floor_step == 0.0
    assert float(flat.logit(0)) == pytest.approx(math.log(2e-9), abs=1e-3)
    for bad in (dict(start_odds=0.0), dict(steps_per_decade=-1.0), dict(floor_odds=float("nan"))):
        with pytest.raises(ValueError, match=f"PresencePriorSchedule.{next(iter(bad))}"):
            PresencePriorSchedule(**bad)


def test_presence_prior_schedule_is_bound_in_air_gin_and_reaches_the_model():
    try:
        config.parse(["air_13"])
        # configs/air.gin writes the original's values out (not left to the defaults)
        assert gin.query_parameter("PresencePriorSchedule.start_odds") == 1e4
        assert gin.query_parameter("PresencePriorSchedule.steps_per_decade") == 3000
        assert gin.query_parameter("PresencePriorSchedule.floor_odds") == 1e-9
        config.parse(["air_13"], ["PresencePriorSchedule.steps_per_decade = 328",
                                  "PresencePriorSchedule.start_odds = 100.0"])
        model = build_model(canvas_px=S, counts=(1, 3), lstm_units=16)
        assert isinstance(model, AIR)
        assert model.zpres_prior == PresencePriorSchedule(100.0, 328, 1e-9)
        b = 2
        noise = model.sample_noise(b, tf.random.Generator.from_seed(0))
        out = model(_images(b), noise, step=656, training=True)  # two decades: odds 1
        np.testing.assert_allclose(out["prior_logit"].numpy()[:, 0], 0.0, atol=1e-4)
    finally:
        gin.clear_config()


def test_boxes_by_step_hand_worked():
    s = 10
    images = np.zeros((2, s, s))
    images[0, 2:4, 2:4] = 1.0  # 4 ink pixels in the top-left
    images[0, 7, 7] = 2.0  # and weight 2 in the bottom-right
    images[1, 5, 5] = 1.0
    # scene 0: box 0 = pixels 2..3 (centre 3 px, side 2 px), box 1 = pixels 7 (centre 7.5, side 1)
    scale = np.array([[0.2, 0.1, 0.5], [0.4, 0.4, 0.4]])
    shift = np.array([[[-0.4, -0.4], [0.5, 0.5], [0.0, 0.0]],
                      [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    present = np.array([[1, 1, 0], [1, 0, 0]])
    boxes = diagnostics.boxes_by_step(scale, shift, present, images, [2, 1], s)
    np.testing.assert_allclose(boxes[2]["present"], [1, 1, 0])
    np.testing.assert_allclose(boxes[2]["side_px"][:2], [2.0, 1.0])
    assert np.isnan(boxes[2]["side_px"][2])
    np.testing.assert_allclose(boxes[2]["ink_covered"], [4 / 6, 1.0, 1.0])  # box 2 is absent
    np.testing.assert_allclose(boxes[1]["ink_covered"], [1.0, 1.0, 1.0])  # 4 px box on (5, 5)
    assert "1.00 / 2.0 px / 0.67" in diagnostics.format_boxes(boxes)
    with pytest.raises(ValueError, match="must be"):
        diagnostics.boxes_by_step(scale, shift[:, :2], present, images, [2, 1], s)


@pytest.mark.slow
def test_diagnose_counts_tool_on_a_tiny_air_run(tmp_path, repo_root):
    import json
    import os
    import subprocess
    import sys

    from asr_tf.run import loop

    small = ["build_model.lstm_units = 16", "train_eval.batch_size = 8", "train_eval.num_test = 16",
             "train_eval.eval_every = 3", "train_eval.checkpoint_every = 3",
             "train_eval.image_every = 3", "train_eval.jit_compile = False",
             "train_eval.progress = False", "PresencePriorSchedule.steps_per_decade = 328"]
    try:
        config.parse(["air_13"], small)
        workdir = str(tmp_path / "w")
        loop.train_eval(workdir, max_steps=3)
    finally:
        gin.clear_config()
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    out = subprocess.run([sys.executable, str(repo_root / "tools" / "diagnose_counts.py"),
                          "--workdir", workdir, "--num_test", "16", "--ledger_prior_logit", "-20"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| true count | scenes | inferred 0 |" in out.stdout
    assert "presence priced at prior log-odds -20" in out.stdout
    result = json.load(open(os.path.join(workdir, "count_diagnostics_3_prior-20.json")))
    assert result["step"] == 3
    assert result["ledger_check"] < 1e-2  # the ledger reproduces the pass's nll
    fractions = [sum(v for v in result["report"]["histogram"][c][0]) for c in result["report"]["histogram"]]
    np.testing.assert_allclose(fractions, 1.0)
    # the run's binding reached the restored model: 3 steps of a 328-step decade
    assert "PresencePriorSchedule.steps_per_decade = 328" in open(os.path.join(workdir, "config.gin")).read()


@pytest.mark.parametrize("row", ["13", "14", "24"])
def test_floor20k_variants_reach_the_floor_within_the_budget(row):
    try:
        config.parse([f"air_{row}", "floor20k"])
        schedule = PresencePriorSchedule()  # gin-configured, as build_model takes it
        assert gin.query_parameter("build_model.kind") == "air"
        assert (schedule.start_odds, schedule.floor_odds) == (1e4, 1e-9)  # the original's
        assert 19_900 < schedule.floor_step <= 20_000  # 13 decades x 1538 = 19,994 steps
        assert float(schedule.logit(12000)) == pytest.approx(math.log(1e4 * 0.1 ** (12000 / 1538)), abs=1e-3)
    finally:
        gin.clear_config()
