"""Mixed precision of the big matrix products (``build_model.matmul_dtype``).

'float32' (default): everything in float32. 'bfloat16': the products whose weight matrix has
at least BIG_WEIGHTS entries (the image projection and the recurrent kernels of the LSTMs,
the glimpse encoder's and decoder's hidden and output layers) take bfloat16 operands and
return float32; biases, activations, the sampler, every distribution, KL, penalty and the
optimizer (and the float32 master weights it updates) stay float32.

bfloat16 is used only where the CPU computes it natively (``native_bfloat16``: the
avx512_bf16 or amx_bf16 flags); elsewhere the setting falls back to float32 with a warning.
It is not the default: on the 2-core AMD EPYC (avx512_bf16) of this project it makes the
XLA training step slower (XLA:CPU in TF 2.21 has no fast bfloat16 dot) and the plain step
slower than the XLA float32 one; figures in docs/PERFORMANCE.md.
"""
import logging

import keras
import tensorflow as tf

MATMUL_DTYPES = ("float32", "bfloat16")
BIG_WEIGHTS = 50_000  # weight entries from which a product counts as big (heads stay float32)
_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def native_bfloat16(cpuinfo="/proc/cpuinfo"):
    """Whether this CPU has native bfloat16 arithmetic (avx512_bf16 or amx_bf16)."""
    try:
        with open(cpuinfo) as f:
            flags = {word for line in f if line.startswith("flags") for word in line.split()}
    except OSError:
        return False
    return any(flag in flags for flag in _CPU_FLAGS)


def resolve(matmul_dtype, native=None):
    """The dtype to use for big products: ``matmul_dtype``, or 'float32' (with a warning)
    where bfloat16 is asked for on a CPU without it. ValueError for an unknown name."""
    if matmul_dtype not in MATMUL_DTYPES:
        raise ValueError(f"matmul_dtype {matmul_dtype!r} is not one of {MATMUL_DTYPES}")
    if matmul_dtype == "bfloat16" and not (native_bfloat16() if native is None else native):
        logging.warning("matmul_dtype='bfloat16' asked for, but this CPU has no native bfloat16 "
                        "(%s): using float32", " / ".join(_CPU_FLAGS))
        return "float32"
    return matmul_dtype


def matmul(x, w, matmul_dtype="float32"):
    """x [N, K] @ w [K, M] -> float32 [N, M]; in bfloat16 if asked for and w is big."""
    if matmul_dtype == "bfloat16" and w.shape.num_elements() >= BIG_WEIGHTS:
        product = tf.matmul(tf.cast(x, tf.bfloat16), tf.cast(w, tf.bfloat16))
        return tf.cast(product, tf.float32)
    return tf.matmul(x, w)


class Dense(keras.layers.Dense):
    """``keras.layers.Dense`` whose product goes through :func:`matmul` (same variables)."""

    def __init__(self, units, matmul_dtype="float32", **kwargs):
        super().__init__(units, **kwargs)
        self.matmul_dtype = matmul_dtype

    def call(self, inputs, training=None):
        y = matmul(inputs, self.kernel, self.matmul_dtype)
        if self.use_bias:
            y = y + self.bias
        return self.activation(y) if self.activation is not None else y
