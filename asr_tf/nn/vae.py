"""Glimpse VAE (docs/ORIGINAL.md §3.2): a 784-512-256 softplus encoder to a 50-d Gaussian and
a 50-256-512 softplus decoder to 784 Bernoulli logits. Both return TFP distributions.

A glimpse of C channels (colour: C = 3) is G x G x C values, flattened channels last
([N, G, G, C] -> [N, G*G*C]): the encoder reads G*G*C inputs and the decoder gives G*G*C
logits, one Bernoulli per pixel and channel. Grayscale (C = 1) is the original's 784."""
import keras
import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions


def _dense_stack(owner, widths):
    """Builds softplus Dense layers widths[0] -> widths[1] -> ... eagerly and sets them on
    ``owner`` as attributes h0, h1, ... (a list attribute would hide them from
    tf.train.Checkpoint under Keras 3). Returns how many."""
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        layer = keras.layers.Dense(n_out, activation="softplus", name=f"h{i}")
        layer.build((None, n_in))
        setattr(owner, f"h{i}", layer)
    return len(widths) - 1


class _HiddenStack:
    """Mixin: ``hidden`` lists the owner's h0, h1, ... layers in order."""

    @property
    def hidden(self):
        return [getattr(self, f"h{i}") for i in range(self._num_hidden)]


class GlimpseEncoder(_HiddenStack, keras.Model):
    """q(z_what | glimpse): [N, G*G*C] (784 for grayscale) -> Independent Normal with event
    shape [z_dim]."""

    def __init__(self, hidden=(512, 256), z_dim=50, glimpse_px=28, channels=1,
                 name="glimpse_encoder", **kwargs):
        super().__init__(name=name, **kwargs)
        self._num_hidden = _dense_stack(self, (glimpse_px * glimpse_px * channels,) + tuple(hidden))
        self.loc = keras.layers.Dense(z_dim, name="loc")
        self.log_var = keras.layers.Dense(z_dim, name="log_var")
        self.loc.build((None, hidden[-1]))
        self.log_var.build((None, hidden[-1]))
        self.built = True  # every sub-layer is built above: nothing left for the first call

    def call(self, glimpse_flat):
        h = glimpse_flat  # [N, G*G*C]
        for layer in self.hidden:
            h = layer(h)
        return tfd.Independent(
            tfd.Normal(loc=self.loc(h), scale=tf.exp(0.5 * self.log_var(h))), 1)  # [N] event [z]


class GlimpseDecoder(_HiddenStack, keras.Model):
    """p(glimpse | z_what): [N, z_dim] -> Independent Bernoulli over the G*G*C pixel values
    (784 for grayscale), logits flattened channels last."""

    def __init__(self, hidden=(256, 512), z_dim=50, glimpse_px=28, channels=1,
                 name="glimpse_decoder", **kwargs):
        super().__init__(name=name, **kwargs)
        self._num_hidden = _dense_stack(self, (z_dim,) + tuple(hidden))
        self.logits = keras.layers.Dense(glimpse_px * glimpse_px * channels, name="logits")
        self.logits.build((None, hidden[-1]))
        self.built = True  # every sub-layer is built above: nothing left for the first call

    def call(self, z_what):
        h = z_what  # [N, z]
        for layer in self.hidden:
            h = layer(h)
        return tfd.Independent(tfd.Bernoulli(logits=self.logits(h), dtype=tf.float32),
                               1)  # [N] event [G*G*C]


class GlimpseVAE(keras.Model):
    """Encoder and decoder pair; ``call`` encodes, samples with given noise, decodes."""

    def __init__(self, z_dim=50, glimpse_px=28, channels=1, name="glimpse_vae", **kwargs):
        super().__init__(name=name, **kwargs)
        self.z_dim = z_dim
        self.glimpse_px = glimpse_px
        self.channels = channels
        self.encoder = GlimpseEncoder(z_dim=z_dim, glimpse_px=glimpse_px, channels=channels)
        self.decoder = GlimpseDecoder(z_dim=z_dim, glimpse_px=glimpse_px, channels=channels)
        self.built = True  # both parts are built at construction

    def encode(self, glimpse_flat, eps):
        """Returns (q(z_what), z_what sample [N, z]) for the noise ``eps`` [N, z]."""
        q = self.encoder(glimpse_flat)
        normal = q.distribution
        return q, normal.loc + normal.scale * eps  # [N, z]

    def call(self, glimpse_flat, eps):
        """Returns (q(z_what), z_what sample [N, z], p(glimpse | z_what))."""
        q, z = self.encode(glimpse_flat, eps)
        return q, z, self.decoder(z)
