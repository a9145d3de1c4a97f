"""LSTM core with the original's initialisation (quirks Q43, Q45).

TF1's ``LSTMCell``/``BasicLSTMCell`` hold one Glorot-uniform kernel over the
concatenated [input; hidden], a zero bias, and add a constant forget bias of +1
inside the cell. Here the forget-gate bias is *initialised* to 1 (identical at
init, then learned) and the recurrent kernel is Glorot-uniform like the original
(gin flag ``Quirks.lstm_orthogonal_recurrent`` switches to the Keras default).

The kernel is split by input block (and the recurrent block) so that a block that is
constant over the glimpse loop (the flattened image) is projected once per forward pass and
not at every step. The blocks are one variable in the original (Q45,
``Quirks.lstm_fused_kernel``): with ``fused_init`` every block draws from the Glorot limit of
that one kernel, sqrt(6 / (inputs + units + 4 units)); without it, each block
from its own shape's limit (1.7-1.9x wider for the small blocks). The gradient clip treats the
blocks as one tensor through ``kernel_blocks`` (asr_tf/training.py).
"""
import keras
import tensorflow as tf


class LSTMCore(keras.layers.Layer):
    """An LSTM cell over several input blocks: gates = sum_k x_k W_k + h U + b.

    Gate order i, j (candidate), f, o, as TF1. Blocks are given as widths at build.
    """

    def __init__(self, units, input_widths, orthogonal_recurrent=False, fused_init=False,
                 name="lstm", **kwargs):
        super().__init__(name=name, **kwargs)
        self.units = units
        self.input_widths = tuple(int(w) for w in input_widths)
        init = "glorot_uniform"
        if fused_init:  # the one kernel's limit: fan_in (inputs + units) + fan_out (4 units)
            limit = (6.0 / (sum(self.input_widths) + units + 4 * units)) ** 0.5
            init = keras.initializers.RandomUniform(-limit, limit)
        # One attribute per block (not a list: Keras 3 hides lists from tf.train.Checkpoint).
        for k, w in enumerate(self.input_widths):
            setattr(self, f"kernel_{k}", self.add_weight(shape=(w, 4 * units), initializer=init,
                                                         name=f"kernel_{k}"))
        rec_init = "orthogonal" if orthogonal_recurrent else init
        self.recurrent_kernel = self.add_weight(shape=(units, 4 * units), initializer=rec_init,
                                                name="recurrent_kernel")
        bias = [0.0] * (2 * units) + [1.0] * units + [0.0] * units  # forget gate starts at 1
        self.bias = self.add_weight(shape=(4 * units,), initializer=keras.initializers.Constant(bias),
                                    name="bias")
        self.built = True  # every weight exists: nothing for Keras to build on the first call

    @property
    def kernels(self):
        """The input kernels, one per block, [width_k, 4u] each."""
        return [getattr(self, f"kernel_{k}") for k in range(len(self.input_widths))]

    @property
    def kernel_blocks(self):
        """The input kernels and the recurrent kernel: the original's one kernel, row blocks."""
        return self.kernels + [self.recurrent_kernel]

    def project(self, block, x):
        """x [N, width_block] -> its gate contribution [N, 4u]."""
        return tf.matmul(x, self.kernels[block])

    def zero_state(self, batch):
        z = tf.zeros([batch, self.units])
        return z, z

    def call(self, gate_inputs, state):
        """One step. gate_inputs [N, 4u] (sum of projected blocks), state (h, c) each [N, u]."""
        h, c = state
        gates = gate_inputs + tf.matmul(h, self.recurrent_kernel) + self.bias  # [N, 4u]
        i, j, f, o = tf.split(gates, 4, axis=-1)
        c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(j)
        h = tf.sigmoid(o) * tf.tanh(c)
        return h, (h, c)


def mlp_head(hidden, out, in_dim, name, out_bias=0.0):
    """Lin_out(ReLU(Lin_hidden(.))) as in the original's where and z_pres heads, built for
    inputs [N, in_dim] (built eagerly: no variable may be created inside the glimpse loop).
    ``out_bias`` initialises the output bias (the original: 0)."""
    head = keras.Sequential([keras.layers.Dense(hidden, activation="relu"),
                             keras.layers.Dense(out, bias_initializer=keras.initializers.Constant(out_bias))],
                            name=name)
    head.build((None, in_dim))
    return head
