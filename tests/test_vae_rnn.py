"""Glimpse VAE (docs/ORIGINAL.md §3.2) and the LSTM core / heads (§3.4, Q43)."""
import math

import numpy as np
import pytest
import tensorflow as tf

from asr_tf.nn import rnn
from asr_tf.nn.vae import GlimpseDecoder, GlimpseEncoder, GlimpseVAE


def test_encoder_distribution_shapes_and_layers():
    enc = GlimpseEncoder()
    q = enc(tf.random.uniform([5, 784]))
    assert q.batch_shape == (5,)
    assert q.event_shape == (50,)
    assert q.sample().shape == (5, 50)
    assert q.log_prob(tf.zeros([5, 50])).shape == (5,)
    # 784 -> 512 -> 256 softplus, then two linear 50-unit heads
    assert [l.kernel.shape for l in enc.hidden] == [(784, 512), (512, 256)]
    assert all(l.activation.__name__ == "softplus" for l in enc.hidden)
    assert enc.loc.kernel.shape == (256, 50) and enc.log_var.kernel.shape == (256, 50)
    assert enc.loc.activation.__name__ == "linear"
    # Glorot kernels, zero biases (no custom initialisers, section 3.4)
    assert all(np.all(l.bias.numpy() == 0.0) for l in enc.hidden + [enc.loc, enc.log_var])


def test_encoder_scale_is_exp_half_log_var():
    enc = GlimpseEncoder()
    x = tf.random.uniform([3, 784])
    q = enc(x)
    h = x
    for layer in enc.hidden:
        h = layer(h)
    np.testing.assert_allclose(q.distribution.scale.numpy(),
                               np.exp(0.5 * enc.log_var(h).numpy()), rtol=1e-5)
    np.testing.assert_allclose(q.distribution.loc.numpy(), enc.loc(h).numpy(), rtol=1e-5)


def test_decoder_distribution_shapes():
    dec = GlimpseDecoder()
    p = dec(tf.random.normal([6, 50]))
    assert p.batch_shape == (6,)
    assert p.event_shape == (784,)
    assert p.distribution.logits.shape == (6, 784)
    assert [l.kernel.shape for l in dec.hidden] == [(50, 256), (256, 512)]
    assert dec.logits.kernel.shape == (512, 784)
    assert p.log_prob(tf.zeros([6, 784])).shape == (6,)


def test_vae_call_reparameterises_with_given_noise():
    vae = GlimpseVAE()
    x = tf.random.uniform([4, 784])
    eps = tf.random.normal([4, 50])
    q, z, p = vae(x, eps)
    assert z.shape == (4, 50)
    np.testing.assert_allclose(z.numpy(), (q.distribution.loc + q.distribution.scale * eps).numpy(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p.distribution.logits.numpy(),
                               vae.decoder(z).distribution.logits.numpy(), rtol=1e-5, atol=1e-6)
    assert p.event_shape == (784,)


def test_lstm_forget_bias_one_others_zero():
    u = 8
    cell = rnn.LSTMCore(u, (5, 3))
    b = cell.bias.numpy()
    assert b.shape == (4 * u,)
    np.testing.assert_array_equal(b[:2 * u], 0.0)      # i, j
    np.testing.assert_array_equal(b[2 * u:3 * u], 1.0)  # f
    np.testing.assert_array_equal(b[3 * u:], 0.0)      # o
    assert [k.shape for k in cell.kernels] == [(5, 4 * u), (3, 4 * u)]
    assert cell.recurrent_kernel.shape == (u, 4 * u)


def test_lstm_step_gate_order_by_hand():
    # with all kernels zero the gates are the bias: i = j = o = 0, f = 1.
    # c' = sigmoid(1) c + sigmoid(0) tanh(0) = sigmoid(1) c; h' = sigmoid(0) tanh(c') = tanh(c') / 2
    u = 4
    cell = rnn.LSTMCore(u, (3,))
    for k in cell.kernels + [cell.recurrent_kernel]:
        k.assign(tf.zeros_like(k))
    c0 = tf.fill([2, u], 1.0)
    h, (h2, c) = cell(cell.project(0, tf.ones([2, 3])), (tf.zeros([2, u]), c0))
    sig1 = 1.0 / (1.0 + math.exp(-1.0))
    np.testing.assert_allclose(c.numpy(), sig1, rtol=1e-6)
    np.testing.assert_allclose(h.numpy(), 0.5 * math.tanh(sig1), rtol=1e-6)
    np.testing.assert_array_equal(h.numpy(), h2.numpy())


def test_lstm_output_shapes_and_zero_state():
    cell = rnn.LSTMCore(16, (10,))
    h0, c0 = cell.zero_state(3)
    assert h0.shape == (3, 16) and c0.shape == (3, 16)
    h, (h1, c1) = cell(cell.project(0, tf.random.normal([3, 10])), (h0, c0))
    assert h.shape == (3, 16) and c1.shape == (3, 16)


@pytest.mark.parametrize("orthogonal", [False, True])
def test_lstm_recurrent_initialiser_switch(orthogonal):
    u = 32
    k = rnn.LSTMCore(u, (4,), orthogonal_recurrent=orthogonal).recurrent_kernel.numpy()
    gram = k @ k.T  # [u, u]; orthogonal init of a (u, 4u) kernel has orthonormal rows
    is_orthonormal = np.allclose(gram, np.eye(u), atol=1e-4)
    assert is_orthonormal == orthogonal
    if not orthogonal:  # Glorot uniform: |w| <= sqrt(6 / (u + 4u))
        assert np.abs(k).max() <= math.sqrt(6.0 / (5 * u)) + 1e-6


def test_mlp_head_shapes_and_relu():
    head = rnn.mlp_head(64, 2, 256, "h")
    assert head(tf.zeros([7, 256])).shape == (7, 2)
    assert head.layers[0].kernel.shape == (256, 64)
    assert head.layers[0].activation.__name__ == "relu"
    assert head.layers[1].kernel.shape == (64, 2)
    # zero input and zero biases: output 0
    np.testing.assert_array_equal(head(tf.zeros([1, 256])).numpy(), 0.0)


@pytest.mark.parametrize("fused", [False, True])
def test_lstm_kernel_blocks_initialised_per_block_or_as_one_kernel(fused):
    """Q45: the original holds one kernel [inputs + units, 4 units]; with ``fused_init`` every
    block draws from that kernel's Glorot limit, else from its own shape's."""
    u, widths = 32, (200, 11)
    cell = rnn.LSTMCore(u, widths, fused_init=fused)
    fused_limit = math.sqrt(6.0 / (sum(widths) + u + 4 * u))  # 0.151
    assert cell.kernel_blocks == cell.kernels + [cell.recurrent_kernel]
    for block, rows in zip(cell.kernel_blocks, widths + (u,)):
        own_limit = math.sqrt(6.0 / (rows + 4 * u))  # 0.145, 0.208, 0.194
        limit = fused_limit if fused else own_limit
        values = np.abs(block.numpy())
        assert values.max() <= limit + 1e-7
        assert values.max() > 0.95 * limit  # thousands of uniform draws reach the limit
