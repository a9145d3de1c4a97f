"""The optimisation step (docs/ORIGINAL.md §7, Q42): gradient processing, jit vs non-jit,
overfitting."""
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from asr_tf import objectives, training
from asr_tf.objectives import Objective
from asr_tf.quirks import Quirks
from conftest import make_model

S = 50


# ----------------------------------------------------------------- process_gradients (Q42)

def test_process_gradients_zeros_nan_inf_and_clips_per_variable():
    g1 = tf.constant([3.0, np.nan, 4.0, np.inf])         # finite part (3, 0, 4, 0): norm 5
    g2 = tf.constant([[0.3, -0.4], [-np.inf, 0.0]])     # finite part norm 0.5: unchanged
    g3 = tf.constant([np.nan, np.nan])                  # all zero
    out = training.process_gradients([g1, g2, g3])
    np.testing.assert_allclose(out[0].numpy(), [0.6, 0.0, 0.8, 0.0], rtol=1e-6)
    np.testing.assert_allclose(out[1].numpy(), [[0.3, -0.4], [0.0, 0.0]], rtol=1e-6)
    np.testing.assert_array_equal(out[2].numpy(), [0.0, 0.0])
    for g in out:
        assert np.all(np.isfinite(g.numpy()))
        assert np.linalg.norm(g.numpy()) <= 1.0 + 1e-6


def test_process_gradients_global_norm_option():
    g1 = tf.constant([3.0, 4.0])   # norm 5
    g2 = tf.constant([0.0, 12.0])  # norm 12; global norm 13
    out = training.process_gradients([g1, g2], per_variable=False)
    np.testing.assert_allclose(out[0].numpy(), [3 / 13, 4 / 13], rtol=1e-6)
    np.testing.assert_allclose(out[1].numpy(), [0.0, 12 / 13], rtol=1e-6)
    per_var = training.process_gradients([g1, g2])
    np.testing.assert_allclose(per_var[1].numpy(), [0.0, 1.0], rtol=1e-6)


def test_process_gradients_clips_a_group_by_its_joint_norm():
    """Q45: an LSTM kernel held as blocks is clipped as the original's one kernel: by the
    norm of all its blocks together (3, 4 -> 5); the others by their own."""
    g1, g2, g3 = tf.constant([3.0, 0.0]), tf.constant([[0.0], [4.0]]), tf.constant([0.0, 2.0])
    out = training.process_gradients([g1, g2, g3], groups=[(0, 1)])
    np.testing.assert_allclose(out[0].numpy(), [0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(out[1].numpy(), [[0.0], [0.8]], rtol=1e-6)
    np.testing.assert_allclose(out[2].numpy(), [0.0, 1.0], rtol=1e-6)
    alone = training.process_gradients([g1, g2, g3])
    np.testing.assert_allclose(alone[0].numpy(), [1.0, 0.0], rtol=1e-6)
    small = training.process_gradients([g1 * 0.1, g2 * 0.1], groups=[(0, 1)])  # norm 0.5: kept
    np.testing.assert_allclose(small[1].numpy(), [[0.0], [0.4]], rtol=1e-6)


@pytest.mark.parametrize("kind", ["air", "pprior"])
def test_clip_groups_are_the_lstm_kernels_under_the_fused_quirk(kind):
    fused = make_model(kind, S, (1, 3), lstm_units=16, quirks=Quirks(lstm_fused_kernel=True))
    split = make_model(kind, S, (1, 3), lstm_units=16, quirks=Quirks(lstm_fused_kernel=False))
    assert split.clip_groups() == []
    groups = fused.clip_groups()
    assert [len(g) for g in groups] == ([2] if kind == "air" else [3, 2])
    ids = {id(v) for v in fused.trainable_variables}
    assert all(id(v) in ids for g in groups for v in g)
    assert groups[0][-1] is fused.lstm_cores()[0].recurrent_kernel


@pytest.mark.parametrize("shape", [(7,), (300, 40), (2500, 1024), (6, 64, 300)])
def test_squared_norm_and_clip_match_tf_clip_by_norm(shape):
    """Small tensors take the reduction, large ones (>= MATVEC_NORM_MIN_SIZE) the matrix-vector
    product; both give tf.clip_by_norm's values, eagerly and under XLA."""
    g = tf.random.stateless_normal(shape, seed=(3, len(shape))) * 0.01
    want = np.sum(np.square(g.numpy(), dtype=np.float64))
    np.testing.assert_allclose(float(training.squared_norm(g)), want, rtol=1e-5)
    jit = tf.function(lambda x: (training.squared_norm(x), training.clip_by_norm(x, 1.0)),
                      jit_compile=True)
    sq, clipped = jit(g * 1e3)
    np.testing.assert_allclose(float(sq), want * 1e6, rtol=1e-5)
    np.testing.assert_allclose(clipped.numpy(), tf.clip_by_norm(g * 1e3, 1.0).numpy(),
                               rtol=1e-5, atol=1e-9)
    assert np.linalg.norm(clipped.numpy()) == pytest.approx(1.0, rel=1e-5)
    small = g * 1e-3  # |small| < 1: unchanged
    np.testing.assert_array_equal(training.clip_by_norm(small, 1.0).numpy(), small.numpy())
    zero = training.clip_by_norm(tf.zeros(shape), 1.0)
    np.testing.assert_array_equal(zero.numpy(), np.zeros(shape, np.float32))


def test_make_optimizer_hyper_parameters():
    keras.utils.set_random_seed(0)
    model = make_model("pprior", S, (1, 3))
    opt = training.make_optimizer(model)
    assert float(opt.learning_rate) == pytest.approx(1e-4)  # Q11
    assert opt.epsilon == pytest.approx(1e-8)                # TF1 default, not Keras' 1e-7
    assert (opt.beta_1, opt.beta_2) == (0.9, 0.999)


# ----------------------------------------------------------------- synthetic scenes

# Square colours of a colour batch: red, green, blue, yellow, magenta, cyan.
COLOURS = ((1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1))


def squares_batch(batch=8, seed=0, side=12, channels=1):
    """1-3 bright, non-overlapping side x side squares per 50x50 scene: [B, S, S, C] float32;
    white (C = 1), or each square one of COLOURS picked at random (C = 3)."""
    rng = np.random.default_rng(seed)
    x = np.zeros((batch, S, S, channels), np.float32)
    for b in range(batch):
        n = 1 + b % 3
        placed = 0
        while placed < n:
            r, c = rng.integers(2, S - side - 2, 2)
            if x[b, r - 1:r + side + 1, c - 1:c + side + 1].any():
                continue
            x[b, r:r + side, c:c + side] = 1.0 if channels == 1 else COLOURS[rng.integers(6)]
            placed += 1
    return tf.constant(x)


CASES = {
    "air": ("air", (1, 2, 3), Objective()),
    "pprior": ("pprior", (1, 2, 3), Objective()),
    "asr": ("pprior", (1, 3), Objective(constraints=[("count_min", 10.0), ("count_margin", 100.0)],
                                        counts=(1, 3))),
}


# ----------------------------------------------------------------- jit vs non-jit

@pytest.mark.slow
def test_jit_and_non_jit_steps_agree():
    keras.utils.set_random_seed(0)
    model = make_model("pprior", S, (1, 3))
    weights = CASES["asr"][2]
    batch = {"image": squares_batch(8)}
    init = model.get_weights()
    results = {}
    for jit in (False, True):
        model.set_weights(init)
        opt = training.make_optimizer(model, learning_rate=1e-4)
        gen = tf.random.Generator.from_seed(123)
        logs = [training.train_step(model, opt, gen, batch, tf.constant(i), weights,
                                    jit_compile=jit) for i in range(2)]
        results[jit] = ([float(l["loss"]) for l in logs], model.get_weights())
    (loss_a, w_a), (loss_b, w_b) = results[False], results[True]
    # the same noise: the losses agree to float32 reassociation error
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-4)
    # Adam moves each weight by at most ~lr per step whatever the gradient's size, so an element
    # whose gradient is ~0 (sign decided by rounding) may differ by up to 2 lr per step; everything
    # else agrees much more closely.
    diffs = np.concatenate([np.abs(a - b).ravel() for a, b in zip(w_a, w_b)])
    print(f"jit vs non-jit: losses {loss_a} / {loss_b}; max |dw| {diffs.max():.2e}, "
          f"fraction > 1e-6: {np.mean(diffs > 1e-6):.2e}")
    assert diffs.max() <= 2 * 2 * 1e-4 + 1e-6
    assert np.mean(diffs > 1e-6) < 0.01
    changed = np.concatenate([np.abs(a - b).ravel() for a, b in zip(init, w_a)])
    assert np.mean(changed > 0) > 0.5  # the steps did update the weights


# ----------------------------------------------------------------- overfitting one batch

# The ratio tested: the training loss of the batch averaged over 16 fixed noise draws, after the
# 300 steps / before (the same draws, so a model that does not learn gives exactly 1; the mean of
# the last / first 10 step losses scatters by 10% even at learning rate 0). Measured 2026-12-05,
# "Intel(R) Xeon(R) Processor" with AMX (Sapphire Rapids), TF 2.21; weights seed s = 0..15,
# training-noise seed 1000 + s (9 for s = 3, the test's pair):
#   air    0.13 0.12 0.28 0.13 0.16 0.13 0.14 0.16 0.37 0.45 0.14 0.15 0.13 0.36 0.13 0.12
#   asr    0.49 0.67 0.58 0.40 0.48 0.45 0.68 0.21 0.59 0.73 0.61 0.12 0.21 0.47 0.74 0.53
#   pprior 0.36 0.68 0.36 0.77 0.72 0.60 0.74 0.45 0.91 0.90 0.31 0.50 0.76 0.40 0.53 0.81
#   learning rate 0, or gradients zeroed: 1.000 for every kind.
# Some pPrior seeds stall (s = 8: 0.91 after 300 steps and after 600; its glimpses never settle on
# the squares), so the pPrior kinds are held to what every seed does: a fall of more than 5%.
OVERFIT_BOUND = {"air": 0.7, "asr": 0.95, "pprior": 0.95}
FIXED_NOISE_DRAWS = 16


def mean_loss_on_fixed_noise(model, images, objective, noises):
    """The training loss (relaxed z_pres, step 0) of the current weights on ``images``
    [B, S, S, 1], averaged over the noise dicts ``noises`` (one tf.function trace)."""
    loss = tf.function(lambda noise: objectives.total_loss(
        images, model(images, noise, step=0, training=True), objective, model.canvas_px,
        model.quirks)[0])
    return float(np.mean([float(loss(noise)) for noise in noises]))


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_overfits_one_batch(case):
    kind, counts, weights = CASES[case]
    keras.utils.set_random_seed(3)
    # base.gin's remedies: zero_pad edges (Q30 fix) and the paper's lr 1e-3. With the faithful
    # 'hard' edges a box off the ink gets no gradient and 300 steps stay at the empty-canvas loss.
    model = make_model(kind, S, counts, quirks=Quirks(sampler_edge="zero_pad"))
    opt = training.make_optimizer(model, learning_rate=1e-3)
    gen = tf.random.Generator.from_seed(9)
    batch = {"image": squares_batch(8, seed=5)}
    images = tf.constant(batch["image"])  # [8, S, S, 1]
    fixed_gen = tf.random.Generator.from_seed(11)
    fixed_noise = [model.sample_noise(8, fixed_gen) for _ in range(FIXED_NOISE_DRAWS)]
    before = mean_loss_on_fixed_noise(model, images, weights, fixed_noise)
    losses = []
    t0 = time.time()
    for i in range(300):
        logs = training.train_step(model, opt, gen, batch, tf.constant(i), weights)
        losses.append(float(logs["loss"]))
    elapsed = time.time() - t0
    after = mean_loss_on_fixed_noise(model, images, weights, fixed_noise)
    losses = np.array(losses)
    assert np.all(np.isfinite(losses))
    print(f"{case}: loss on fixed noise {before:.1f} -> {after:.1f} ({after / before:.3f}); "
          f"training loss first-10 mean {losses[:10].mean():.1f}, last-10 mean "
          f"{losses[-10:].mean():.1f}; {elapsed:.0f} s")
    assert after < OVERFIT_BOUND[case] * before, (case, before, after, elapsed)


# Colour (C = 3): each square one of COLOURS. Besides the loss ratio, the colour contrast: over
# the squares' pixels, the mean reconstruction (relaxed pass, 4 of the fixed noise draws) in the
# square's lit channels minus that in its dark ones. Measured 2026-12-06 on the same machine,
# weights seed s = 0..8, training noise 1000 + s (the test: s = 3); seeds 0-5 twice, in two
# processes (the step is not bit-reproducible across processes):
#   ratio     air  0.59/0.62 0.78/0.86 0.49/0.35 0.22/0.21 0.21/0.22 0.82/0.68 0.29 0.71 0.44
#             asr  0.51/0.57 0.41/0.47 0.50/0.77 0.45/0.39 0.32/0.48 0.49/0.43 0.47 0.65 0.59
#   contrast  before training |c| < 0.002 for every seed; after (second runs)
#             air  0.30 0.15 0.52 0.57 0.52 0.37 0.51 0.34 0.43
#             asr  0.34 0.41 0.07 0.43 0.23 0.29 0.41 0.22 0.32
# So both kinds are held to what every seed does: a fall of more than 5% and a contrast above
# 0.03 (ten times the untrained one).
COLOUR_OVERFIT_BOUND = 0.95
COLOUR_CONTRAST_MIN = 0.03


def colour_contrast(model, images, noises):
    """Mean over the squares' pixels of the reconstruction in their lit channels minus that in
    their dark ones ([B, S, S, 3] images of COLOURS squares), over the relaxed passes of
    ``noises``: about 0 for a model that has not learnt colour."""
    x = images.numpy()
    lit, square = x > 0.5, x.max(-1) > 0.5  # [B, S, S, 3], [B, S, S]
    values = []
    for noise in noises:
        r = model(images, noise, step=0, training=True)["recon"].numpy()
        on = np.where(lit, r, 0.0).sum(-1) / np.maximum(lit.sum(-1), 1)
        off = np.where(~lit, r, 0.0).sum(-1) / np.maximum((~lit).sum(-1), 1)
        values.append((on - off)[square].mean())
    return float(np.mean(values))


@pytest.mark.slow
@pytest.mark.parametrize("case", ["air", "asr"])
def test_overfits_one_colour_batch(case):
    kind, counts, weights = CASES[case]
    keras.utils.set_random_seed(3)
    model = make_model(kind, S, counts, quirks=Quirks(sampler_edge="zero_pad"), channels=3)
    opt = training.make_optimizer(model, learning_rate=1e-3)
    gen = tf.random.Generator.from_seed(1003)
    batch = {"image": squares_batch(8, seed=5, channels=3)}
    images = batch["image"]  # [8, S, S, 3]
    fixed_gen = tf.random.Generator.from_seed(11)
    fixed_noise = [model.sample_noise(8, fixed_gen) for _ in range(FIXED_NOISE_DRAWS)]
    before = mean_loss_on_fixed_noise(model, images, weights, fixed_noise)
    contrast_before = colour_contrast(model, images, fixed_noise[:4])
    for i in range(300):
        logs = training.train_step(model, opt, gen, batch, tf.constant(i), weights)
        assert np.isfinite(float(logs["loss"]))
    after = mean_loss_on_fixed_noise(model, images, weights, fixed_noise)
    contrast_after = colour_contrast(model, images, fixed_noise[:4])
    print(f"{case} colour: loss on fixed noise {before:.1f} -> {after:.1f} "
          f"({after / before:.3f}); colour contrast {contrast_before:.3f} -> {contrast_after:.3f}")
    assert after < COLOUR_OVERFIT_BOUND * before, (case, before, after)
    assert abs(contrast_before) < 0.01 and contrast_after > COLOUR_CONTRAST_MIN


def test_rate_schedule_hand_worked_and_bad_input():
    sched = training.rate_schedule(1e-3, (10, 20), (0.1, 0.01))
    assert [float(sched(s)) for s in (0, 9, 10, 19, 20, 10**6)] == pytest.approx(
        [1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5])
    assert float(training.rate_schedule(2e-4)(123)) == pytest.approx(2e-4)  # no decay
    for steps, factors in [((10,), ()), ((20, 10), (0.1, 0.1)), ((10, 10), (0.1, 0.1))]:
        with pytest.raises(ValueError, match="decay steps"):
            training.rate_schedule(1e-3, steps, factors)


class _OneVariable:
    def __init__(self):
        self.v = keras.Variable(np.ones(3, np.float32))
        self.trainable_variables = [self.v]


def _moves(optimizer, holder, n):
    """What ``n`` updates with gradient 1 move the variable by, one by one. Adam with a
    constant gradient moves each by its rate (the bias-corrected moments are g and g^2)."""
    moves = []
    for _ in range(n):
        before = holder.v.numpy()[0]
        optimizer.apply_gradients([(tf.ones(3), holder.v)])
        moves.append(before - holder.v.numpy()[0])
    return moves


def test_configured_rate_and_schedule_hold_on_resume(tmp_path):
    # 3 updates at 1e-3, a checkpoint; resumed with 4e-3 halved from update 5 on; checkpointed
    # after 7 updates and resumed with 1e-3 times 0.1 from update 8 on.
    holder = _OneVariable()
    first = training.make_optimizer(holder, learning_rate=1e-3)
    assert _moves(first, holder, 3) == pytest.approx([1e-3] * 3, rel=1e-2)
    path = tf.train.Checkpoint(optimizer=first, v=holder.v).save(str(tmp_path / "a"))

    holder = _OneVariable()
    second = training.make_optimizer(holder, learning_rate=4e-3, decay_steps=(5,),
                                     decay_factors=(0.5,))
    tf.train.Checkpoint(optimizer=second, v=holder.v).restore(path).assert_consumed()
    assert int(second.iterations) == 3 and holder.v.numpy()[0] == pytest.approx(1 - 3e-3)
    assert _moves(second, holder, 4) == pytest.approx([4e-3, 4e-3, 2e-3, 2e-3], rel=1e-2)
    assert [training.update_rate(second, s) for s in (4, 5, 6, 7)] == pytest.approx(
        [4e-3, 4e-3, 2e-3, 2e-3])  # the logged rate of the update that made step s
    path = tf.train.Checkpoint(optimizer=second, v=holder.v).save(str(tmp_path / "b"))

    holder = _OneVariable()
    third = training.make_optimizer(holder, learning_rate=1e-3, decay_steps=(8,),
                                    decay_factors=(0.1,))
    tf.train.Checkpoint(optimizer=third, v=holder.v).restore(path).assert_consumed()
    assert _moves(third, holder, 2) == pytest.approx([1e-3, 1e-4], rel=1e-2)
