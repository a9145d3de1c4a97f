"""The one interface both models answer (asr_tf/models/base.py): ``kind``, ``generate(noise,
count=None)``, the one rule spreading generated scenes over counts (``priors.generation_counts``)
and the kind of test pass passed as an argument, never swapped on the model."""
import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from asr_tf import training
from asr_tf.models import MODEL_KINDS, build_model
from asr_tf.models.air import AIR
from asr_tf.models.pprior import PPriorAIR
from asr_tf.models.priors import generation_counts
from asr_tf.quirks import Quirks
from asr_tf.run import evaluation
from conftest import MODEL_VALUES, make_model

S, T, N = 50, 6, 5


def _model(kind, counts=(1, 3), seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    return make_model(kind, S, counts, lstm_units=32, **kwargs)


def _noise(model, n=N, seed=0):
    return model.generation_noise(n, tf.random.Generator.from_seed(seed))


def _images(batch):
    rng = np.random.default_rng(0)
    x = np.zeros((batch, S, S, 1), np.float32)
    for b in range(batch):
        r, c = rng.integers(2, S - 14, 2)
        x[b, r:r + 12, c:c + 12, 0] = 1.0
    return tf.constant(x)


def test_kind_names_the_model_and_build_model_takes_it():
    assert (AIR.kind, PPriorAIR.kind) == MODEL_KINDS == ("air", "pprior")
    for kind in MODEL_KINDS:
        model = build_model(kind, S, (1, 3), lstm_units=8, **MODEL_VALUES[kind])
        assert model.kind == kind


def test_generation_counts_cycle_through_the_counts():
    np.testing.assert_array_equal(generation_counts((1, 3), 5).numpy(), [1, 3, 1, 3, 1])
    np.testing.assert_array_equal(generation_counts((2,), 3).numpy(), [2, 2, 2])
    # a tensor count of scenes, as the exported signature gets it
    num = tf.constant(4)
    np.testing.assert_array_equal(generation_counts((1, 2, 4), num).numpy(), [1, 2, 4, 1])


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_both_kinds_generate_with_and_without_a_count(kind):
    model = _model(kind)
    noise = _noise(model)
    for count in (None, 2, tf.constant([1, 2, 3, 4, 6])):
        out = model.generate(noise, count)
        assert out["images"].shape == (N, S, S, 1) and out["scale"].shape == (N, T)
        assert out["shift"].shape == (N, T, 2) and out["present"].shape == (N, T)
        assert out["count"].dtype == tf.int32
        present = out["present"].numpy()
        np.testing.assert_array_equal(out["count"].numpy(), present.sum(1))
        if count is not None:  # exactly that many, the first steps present
            want = np.broadcast_to(np.asarray(count), (N,))
            np.testing.assert_array_equal(out["count"].numpy(), want)
            np.testing.assert_array_equal(present, np.arange(T)[None] < want[:, None])
    if kind == "air":  # count None: the data set's counts in turn
        np.testing.assert_array_equal(model.generate(noise)["count"].numpy(), [1, 3, 1, 3, 1])
    for bad in (0, T + 1):
        with pytest.raises(ValueError, match=f"count={bad} must be in 1..{T}"):
            model.generate(noise, bad)


def test_air_per_scene_counts_are_single_count_generations_scene_by_scene():
    # scene n of a mixed batch is what generating count c_n for every scene gives at scene n
    model = _model("air")
    noise = _noise(model)
    mixed = model.generate(noise)
    for n, c in enumerate([1, 3, 1, 3, 1]):
        alone = model.generate(noise, c)
        for key in ("images", "scale", "shift", "present"):
            np.testing.assert_array_equal(mixed[key][n].numpy(), alone[key][n].numpy(), key)


def test_pprior_count_fixes_the_prior_as_fix_steps_does():
    # a single allowed count k fixes the z_pres prior (fix_steps = k); count=k does the same
    fixed = _model("pprior", counts=(3,))
    free = _model("pprior", counts=(1, 3))  # the same seed: the same weights
    assert fixed.fix_steps == 3 and free.fix_steps is None
    noise = _noise(free)
    a, b = fixed.generate(noise), free.generate(noise, 3)
    for key in a:
        np.testing.assert_array_equal(a[key].numpy(), b[key].numpy(), key)


def test_air_counts_outside_the_glimpse_steps_are_refused():
    with pytest.raises(ValueError, match="AIR counts"):
        AIR(S, lstm_units=8, counts=(1, T + 1))
    assert AIR(S, lstm_units=8).counts == tuple(range(1, T + 1))


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_the_kind_of_test_pass_is_an_argument(kind):
    """``deterministic`` passed to the call gives the pass a model configured with
    ``Quirks.deterministic_eval`` makes, and leaves the model's quirks as they are."""
    model = _model(kind, quirks=Quirks(sampler_edge="hard"))
    configured = _model(kind, quirks=Quirks(sampler_edge="hard", deterministic_eval=True))
    quirks = model.quirks
    images = _images(4)
    noise = model.sample_noise(4, tf.random.Generator.from_seed(1))
    other = model.sample_noise(4, tf.random.Generator.from_seed(2))
    mean = model(images, noise, training=False, deterministic=True)
    want = configured(images, noise, training=False)
    for key in ("count", "recon", "scale", "shift", "z_what", "kl_what"):
        np.testing.assert_array_equal(mean[key].numpy(), want[key].numpy(), key)
    if kind == "pprior":  # no decoder noise: the mean pass does not read the noise at all
        again = model(images, other, training=False, deterministic=True)
        np.testing.assert_array_equal(again["recon"].numpy(), mean["recon"].numpy())
    sampled = model(images, noise, training=False, deterministic=False)
    configured_pass = model(images, noise, training=False)  # deterministic_eval False
    np.testing.assert_array_equal(sampled["recon"].numpy(), configured_pass["recon"].numpy())
    assert not np.array_equal(sampled["z_what"].numpy(), mean["z_what"].numpy())
    outputs, _ = training.eval_step(model, images, noise, tf.constant(0, tf.int64), True)
    np.testing.assert_array_equal(outputs["count"].numpy(), mean["count"].numpy())
    assert model.quirks is quirks and dataclasses.asdict(quirks) == dataclasses.asdict(Quirks(
        sampler_edge="hard"))


def test_evaluation_generates_through_the_models_own_rule():
    model = _model("air", counts=(2, 4))
    gen = tf.random.Generator.from_seed(3)
    scenes = evaluation.generate_scenes(model, 6, gen)
    np.testing.assert_array_equal(scenes["count"], [2, 4, 2, 4, 2, 4])
    assert isinstance(scenes["images"], np.ndarray) and scenes["images"].shape == (6, S, S, 1)
