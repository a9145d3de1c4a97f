"""Colour (C channels) through every public entry: the samplers, the glimpse VAE, both models'
passes and generation, the loss, the serving signatures, the figures and TensorBoard images.
Tiny models; grayscale (C = 1) is checked against the single-channel computation bit for bit."""
import os
import types

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from asr_tf import export, models, objectives, training, viz
from asr_tf.data import scenes
from asr_tf.models.base import TRAIN
from asr_tf.nn import transformer
from asr_tf.nn.vae import GlimpseVAE
from asr_tf.run import evaluation, summaries
from conftest import MODEL_VALUES, make_model

S, G, T, C = 16, 8, 3, 3
TINY = dict(glimpse_px=G, lstm_units=8, z_what_dim=4, max_glimpses=T)
EDGES = ("hard", "zero_pad", "four_gathers")


def _tiny(kind, channels=C, seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    return make_model(kind, S, (1, 2), channels=channels, **{**TINY, **kwargs})


def _coloured_squares(batch, seed=0):
    """[B, S, S, 3]: one or two squares per image, each of its own colour."""
    rng = np.random.default_rng(seed)
    x = np.zeros((batch, S, S, C), np.float32)
    for b in range(batch):
        for _ in range(1 + b % 2):
            r, c = rng.integers(0, S - 6, 2)
            x[b, r:r + 6, c:c + 6] = rng.uniform(0.2, 1.0, C)
    return tf.constant(x)


def _where(n, k=None, seed=0):
    rng = np.random.default_rng(seed)
    lead = (n,) if k is None else (n, k)
    return (tf.constant(rng.uniform(0.3, 0.7, lead), tf.float32),
            tf.constant(rng.uniform(-0.4, 0.4, lead + (2,)), tf.float32))


# ----------------------------------------------------------------------------- samplers

@pytest.mark.parametrize("edge", EDGES)
def test_every_channel_is_sampled_with_its_items_window(edge):
    rng = np.random.default_rng(1)
    canvas = tf.constant(rng.random((2, S, S, C)), tf.float32)
    glimpses = tf.constant(rng.random((2, G, G, C)), tf.float32)
    scale, shift = _where(2)
    cut = transformer.extract_glimpse(canvas, scale, shift, G, edge).numpy()
    pasted = transformer.render_glimpse(glimpses, scale, shift, S, edge).numpy()
    assert cut.shape == (2, G, G, C) and pasted.shape == (2, S, S, C)
    for c in range(C):  # bit for bit the single-channel sampler on that channel
        np.testing.assert_array_equal(
            cut[..., c], transformer.extract_glimpse(canvas[..., c], scale, shift, G, edge))
        np.testing.assert_array_equal(
            pasted[..., c], transformer.render_glimpse(glimpses[..., c], scale, shift, S, edge))
    # one channel: the single-channel computation itself
    one = transformer.extract_glimpse(canvas[..., :1], scale, shift, G, edge).numpy()
    np.testing.assert_array_equal(one[..., 0], cut[..., 0])


@pytest.mark.parametrize("edge", EDGES)
def test_summed_rendering_per_channel_and_its_gradient(edge):
    rng = np.random.default_rng(2)
    glimpses = tf.constant(rng.random((2, T, G, G, C)), tf.float32)
    weights = tf.constant(rng.random((2, T)), tf.float32)
    scale, shift = _where(2, T)
    probe = tf.constant(rng.standard_normal((2, S, S, C)), tf.float32)

    def value(channel=None):
        with tf.GradientTape() as tape:
            tape.watch([scale, shift])
            g = glimpses if channel is None else glimpses[..., channel]
            p = probe if channel is None else probe[..., channel]
            canvas = transformer.render_glimpses_summed(g, weights, scale, shift, S, edge)
            total = tf.reduce_sum(canvas * p)
        return canvas.numpy(), [d.numpy() for d in tape.gradient(total, [scale, shift])]

    canvas, grads = value()
    assert canvas.shape == (2, S, S, C)
    per_channel = [value(c) for c in range(C)]
    for c in range(C):
        np.testing.assert_array_equal(canvas[..., c], per_channel[c][0])
    # the window is shared: its gradient is the sum of the channels' gradients
    for i in range(2):
        np.testing.assert_allclose(grads[i], sum(p[1][i] for p in per_channel), rtol=1e-4,
                                   atol=1e-5)


def test_sampler_rejects_a_rank_it_cannot_read():
    scale, shift = _where(1)
    with pytest.raises(ValueError, match="rank 3 .* or 4"):
        transformer.extract_glimpse(tf.zeros([1, 1, S, S, 1]), scale, shift, G)


# ----------------------------------------------------------------------------- VAE and models

def test_vae_reads_and_writes_every_channel():
    vae = GlimpseVAE(z_dim=4, glimpse_px=G, channels=C)
    assert vae.encoder.h0.kernel.shape == (G * G * C, 512)
    assert vae.decoder.logits.kernel.shape == (512, G * G * C)
    p = vae.decoder(tf.zeros([5, 4]))
    assert p.event_shape == (G * G * C,)  # one Bernoulli per pixel and channel
    assert p.log_prob(tf.zeros([5, G * G * C])).shape == (5,)


@pytest.mark.parametrize("kind", ["air", "pprior"])
def test_colour_model_passes_and_generation(kind):
    model = _tiny(kind)
    lstm = model.net.lstm if kind == "air" else model.inference.lstm
    assert lstm.input_widths[0] == S * S * C  # the inference LSTM sees every channel
    images = _coloured_squares(4)
    noise = model.sample_noise(4, tf.random.Generator.from_seed(0))
    if kind == "air":
        assert noise["eps_pix"].shape == (T, 4, G * G * C)
    for training_pass in (True, False):
        out = model(images, noise, training=training_pass)
        assert out["canvas"].shape == (4, S, S, C) and out["recon"].shape == (4, S, S, C)
        assert out["scale"].shape == (4, T)
    assert model.proposals(images, noise)["z_what"].shape == (T, 4, 4)
    gen = model.generate(model.generation_noise(5, tf.random.Generator.from_seed(1)))
    assert gen["images"].shape == (5, S, S, C) and gen["count"].shape == (5,)
    assert gen["images"].numpy().max() > 0.0


@pytest.mark.parametrize("kind", ["air", "pprior"])
def test_colour_canvas_is_each_channel_of_the_decoded_glimpses_rendered(kind):
    model = _tiny(kind, seed=1)
    images = _coloured_squares(3, seed=1)
    noise = model.sample_noise(3, tf.random.Generator.from_seed(2))
    noise["u_pres"] = tf.ones_like(noise["u_pres"]) * 0.999  # every step present
    out = model(images, noise, training=True)
    want = np.zeros((3, S, S, C), np.float32)
    for t in range(int(out["steps_executed"])):
        scale, shift = out["scale"][:, t], out["shift"][:, t]
        _, z_what = model._encode_glimpse(images, scale, shift, noise["eps_what"][t], TRAIN)
        eps_pix = noise["eps_pix"][t] if "eps_pix" in noise else None
        decoded = model.decode(z_what, eps_pix).numpy()  # [B, G, G, C]
        weight = (out["z_pres"][:, t] * out["present"][:, t]).numpy()[:, None, None]
        for c in range(C):
            want[..., c] += weight * transformer.render_glimpse(
                tf.constant(decoded[..., c]), scale, shift, S, model.quirks.sampler_edge).numpy()
    np.testing.assert_allclose(out["canvas"].numpy(), want, atol=1e-5)
    assert np.abs(want[..., 0] - want[..., 1]).max() > 1e-3  # the channels differ


def test_a_model_refuses_a_channel_count_it_was_not_built_for():
    grey, colour = _tiny("pprior", channels=1), _tiny("pprior")
    noise = grey.sample_noise(2, tf.random.Generator.from_seed(0))
    with pytest.raises(ValueError, match=r"\[B, 16, 16, 1\] \(this model was built for 1 channel\)"):
        grey(tf.zeros([2, S, S, C]), noise)
    with pytest.raises(ValueError, match=r"built for 3 channels\), got \(2, 16, 16, 1\)"):
        colour(tf.zeros([2, S, S, 1]), noise)
    for bad in (0, 2.5, True, "3"):
        with pytest.raises(ValueError, match="channels="):
            models.build_model("air", S, (1,), channels=bad, **MODEL_VALUES["air"])


def test_model_for_takes_the_data_sets_channels(tmp_path):
    from PIL import Image

    from asr_tf.data import files

    assert scenes.get_spec("mnist_13").channels == 1  # the synthetic sets are grayscale
    for split in ("train", "test"):  # a folder of two RGB images per split
        os.makedirs(tmp_path / split)
        for i in range(2):
            Image.fromarray(np.full([S, S, C], 60 * i, np.uint8)).save(tmp_path / split / f"{i}.png")
    spec = files.load_data(str(tmp_path), S, (1, 2), (4.0, 6.0))
    for kind, values in MODEL_VALUES.items():
        gin.bind_parameter("build_model.kind", kind)
        for name, value in {**values, **TINY}.items():
            gin.bind_parameter(f"build_model.{name}", value)
        model = models.model_for(spec)
        assert spec.channels == C and model.channels == C and model.vae.channels == C
        gin.clear_config()


# ----------------------------------------------------------------------------- loss, step

def test_bernoulli_nll_is_summed_over_pixels_and_channels():
    images = tf.constant([[[[1.0, 0.0, 1.0]]]])  # [1, 1, 1, 3]
    recon = tf.constant([[[[0.5, 0.25, 1.0]]]])
    want = np.log(2.0) + np.log(4.0 / 3.0) - np.log(1.0 + 1e-10)
    np.testing.assert_allclose(objectives.bernoulli_nll(images, recon).numpy(), [want],
                               rtol=1e-6)
    per_channel = sum(objectives.bernoulli_nll(images[..., c], recon[..., c]) for c in range(3))
    np.testing.assert_allclose(objectives.bernoulli_nll(images, recon), per_channel, rtol=1e-6)


def test_colour_train_step_moves_every_channels_logits():
    # AIR here; both kinds train on colour in tests/test_training_step.py (slow tier)
    model = _tiny("air")
    images = _coloured_squares(4)
    out = model(images, model.sample_noise(4, tf.random.Generator.from_seed(0)))
    loss, per_image, _ = objectives.total_loss(images, out, objectives.Objective(), S,
                                               model.quirks)
    assert per_image["nll"].shape == (4,) and np.isfinite(loss.numpy())
    kernel_before = model.vae.decoder.logits.kernel.numpy().copy()  # [512, G*G*C]
    opt = training.make_optimizer(model, learning_rate=1e-3)
    logs = training.train_step(model, opt, tf.random.Generator.from_seed(1), {"image": images},
                               tf.constant(0, tf.int64), objectives.Objective())
    assert np.isfinite(float(logs["loss"]))
    kernel = model.vae.decoder.logits.kernel.numpy()
    for c in range(C):  # every channel's logits (channels last: columns c, c + C, ...) moved
        assert np.any(kernel[:, c::C] != kernel_before[:, c::C]), c


# ----------------------------------------------------------------------------- serving

def test_serving_signatures_take_and_return_every_channel():
    model = _tiny("air")
    model.net.z_pres.layers[-1].bias.assign([3.0])  # objects exist
    fns = export.serving_functions(model, max_generate=8)
    assert fns["infer"][1][0].shape.as_list() == [None, S, S, C]
    infer, generate = (tf.function(fns[name][0], input_signature=fns[name][1])
                       for name in ("infer", "generate"))  # infer_stochastic: tests/test_export.py
    images = _coloured_squares(2).numpy()
    out = infer(tf.constant(images))
    ref = export.deterministic_reference(model, images)
    assert out["reconstruction"].shape == (2, S, S, C)
    np.testing.assert_array_equal(out["count"], ref["count"])
    np.testing.assert_allclose(out["reconstruction"], ref["reconstruction"], atol=1e-5)
    gen = generate(tf.constant(3), tf.constant(0, tf.int64))
    assert gen["images"].shape == (3, S, S, C)
    # a request of another channel count, fed as the model server feeds it (shape unknown)
    fed = tf.function(fns["infer"][0], input_signature=[tf.TensorSpec(None, tf.float32)])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[N, 16, 16, 3\]"):
        fed(tf.constant(images[..., :1]))


# ----------------------------------------------------------------------------- figures

def test_figures_and_tensorboard_images_show_colour(tmp_path):
    model = _tiny("pprior")
    images = _coloured_squares(4)
    images = tf.concat([images[:3], tf.tile(images[3:, ..., :1], [1, 1, 1, C])], 0)  # 3: grey
    out = model(images, model.sample_noise(4, tf.random.Generator.from_seed(0)), training=False)
    out = {k: v.numpy() for k, v in out.items()}
    grids = evaluation.eval_images(model, types.SimpleNamespace(canvas_px=S), out,
                                   {"image": images}, 3, 0)
    panels = grids["reconstructions"]
    assert grids["samples"].shape[-1] == 3
    # 4 panels, 2 x 2 column-major, each [2S, 2 (2S + 4)] (upscale 2) with 2 px between them:
    # the originals of panel 0 (colour) and panel 3 (grey) as drawn, outlines aside
    width = 2 * (2 * S + 4)
    for i, (top, left) in ((0, (0, 0)), (3, (2 * S + 2, width + 2))):
        drawn = panels[top:top + 2 * S, left:left + 2 * S].reshape(-1, 3)
        want = viz.to_rgb(np.repeat(np.repeat(images[i].numpy(), 2, 0), 2, 1)).reshape(-1, 3)
        outline = np.isin(drawn.view([("", np.uint8)] * 3).ravel(),
                          np.array(viz.STEP_COLORS, np.uint8).view([("", np.uint8)] * 3).ravel())
        np.testing.assert_array_equal(drawn[~outline], want[~outline])
        assert np.mean(outline) < 0.3
        coloured = np.ptp(want.astype(int), axis=1) > 0  # R, G, B not all equal
        assert coloured.any() if i == 0 else not coloured.any()
    log = summaries.RunLog(str(tmp_path), 0)
    log.image("eval", "reconstructions", panels, 3)
    log.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(os.path.join(tmp_path, "eval"), size_guidance={"tensors": 0})
    acc.Reload()
    png = tf.make_ndarray(acc.Tensors("reconstructions")[0].tensor_proto)[2]
    np.testing.assert_array_equal(tf.io.decode_png(png).numpy(), panels)
