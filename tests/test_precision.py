"""Mixed precision of the big products (asr_tf/nn/precision.py, build_model.matmul_dtype)."""
import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from asr_tf.nn import precision
from asr_tf.nn.vae import GlimpseVAE
from conftest import make_model


def test_native_bfloat16_reads_the_cpu_flags(tmp_path):
    with_bf16 = tmp_path / "a"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 avx512vl\n")
    with_amx = tmp_path / "b"
    with_amx.write_text("flags\t\t: fpu avx512f amx_tile amx_bf16\n")
    without = tmp_path / "c"
    without.write_text("flags\t\t: fpu sse avx2 avx512f\nbugs\t\t: avx512_bf16_is_not_a_flag_here\n")
    assert precision.native_bfloat16(str(with_bf16))
    assert precision.native_bfloat16(str(with_amx))
    assert not precision.native_bfloat16(str(without))
    assert not precision.native_bfloat16(str(tmp_path / "missing"))


def test_resolve_falls_back_to_float32_without_native_bfloat16(caplog):
    assert precision.resolve("float32", native=True) == "float32"
    assert precision.resolve("bfloat16", native=True) == "bfloat16"
    with caplog.at_level(logging.WARNING):
        assert precision.resolve("bfloat16", native=False) == "float32"
    assert "no native bfloat16" in caplog.text
    with pytest.raises(ValueError, match="matmul_dtype 'float16'"):
        precision.resolve("float16")
    with pytest.raises(ValueError, match="matmul_dtype"):
        make_model("pprior", 50, (1, 3), matmul_dtype="half")


def test_matmul_bfloat16_only_for_big_weights():
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(8, 512)).astype(np.float32))
    big = tf.constant(rng.normal(size=(512, 256)).astype(np.float32))  # 131,072 >= BIG_WEIGHTS
    small = tf.constant(rng.normal(size=(512, 64)).astype(np.float32))  # 32,768 < BIG_WEIGHTS
    assert big.shape.num_elements() >= precision.BIG_WEIGHTS > small.shape.num_elements()
    exact_small = tf.matmul(x, small).numpy()
    np.testing.assert_array_equal(precision.matmul(x, small, "bfloat16").numpy(), exact_small)
    exact = tf.matmul(x, big).numpy()
    got = precision.matmul(x, big, "bfloat16")
    assert got.dtype == tf.float32
    assert not np.array_equal(got.numpy(), exact)  # really rounded to bfloat16 ...
    # ... to its precision: 8 bits of mantissa per operand, sums of 512 products
    np.testing.assert_allclose(got.numpy(), exact, atol=0.02 * np.sqrt(512), rtol=0.02)
    np.testing.assert_array_equal(precision.matmul(x, big, "float32").numpy(), exact)
    with tf.GradientTape() as tape:
        tape.watch([x, big])
        y = tf.reduce_sum(precision.matmul(x, big, "bfloat16") ** 2)
    gx, gw = tape.gradient(y, [x, big])
    assert gx.dtype == tf.float32 and gw.dtype == tf.float32
    assert np.all(np.isfinite(gw.numpy())) and np.abs(gw.numpy()).max() > 0


def test_bfloat16_model_has_the_float32_variables_and_close_outputs(tmp_path):
    keras.utils.set_random_seed(0)
    f32 = make_model("pprior", 50, (1, 3))
    keras.utils.set_random_seed(1)
    bf16 = make_model("pprior", 50, (1, 3), matmul_dtype=precision.resolve("bfloat16",
                                                                          native=True))
    # the same float32 variables: a checkpoint of one setting restores into the other
    assert all(v.dtype == "float32" for v in bf16.variables)
    path = tf.train.Checkpoint(model=f32).write(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(model=bf16).read(path).assert_existing_objects_matched()
    for a, b in zip(f32.variables, bf16.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    vae32, vae16 = GlimpseVAE(), GlimpseVAE(matmul_dtype="bfloat16")
    vae16.set_weights(vae32.get_weights())
    glimpses = tf.random.stateless_uniform([4, 784], [1, 2])
    eps = tf.zeros([4, 50])
    q32, _, p32 = vae32(glimpses, eps)
    q16, _, p16 = vae16(glimpses, eps)
    for a, b in ((q32.distribution.loc, q16.distribution.loc),
                 (p32.distribution.logits, p16.distribution.logits)):
        assert b.dtype == tf.float32
        np.testing.assert_allclose(b.numpy(), a.numpy(), atol=0.05)
        assert not np.array_equal(a.numpy(), b.numpy())
