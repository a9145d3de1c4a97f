"""SavedModel export for TensorFlow Serving.

``export_saved_model(model, export_dir)`` writes ``<export_dir>/<version>/`` with
``keras.export.ExportArchive`` and a ``models.config`` for
``tensorflow_model_server --model_config_file``. Every signature returns plain
tensors (no TFP distributions) and needs neither asr_tf nor TFP to load.

Signatures (S = canvas_px, C = the model's channels, 1 grayscale or 3 RGB, T = max_glimpses,
Z = z_what_dim; the signatures' input shapes record S and C):

  serving_default   images float32 [N, S, S, C] in [0, 1]
                    -> count int32 [N], z_pres float32 [N, T], boxes_px float32 [N, T, 4],
                       z_what float32 [N, T, Z], reconstruction float32 [N, S, S, C]
                    Deterministic: posterior means, z_pres = [posterior prob > 0.5], no
                    decoder noise (the model's deterministic pass, all noise zero).
  infer_stochastic  images as above, seed int64 [] -> the same outputs from one stochastic
                    test pass (Q25-Q27: sampled where/what, Bernoulli z_pres, AIR's decoder
                    noise) with stateless noise: equal (images, seed) give equal outputs.
  generate          num_scenes int32 [] (1..max_generate), seed int64 []
                    -> images float32 [N, S, S, C] clipped to [0, 1], count int32 [N],
                       boxes_px float32 [N, T, 4].
                    The model's own ``generate``: pPrior/ASR's prior LSTM decides the count;
                    AIR (whose prior does not model the count) gives scene n exactly
                    counts[n % len(counts)] objects, its data set's counts, as the training
                    figures do.

With ``stochastic_default=True`` the stochastic pass is ``serving_default`` (inputs images and
seed) and the deterministic one is exported as ``infer_deterministic``.

Output conventions: z_pres[n, t] is 1 for the objects that are counted (the first count[n]
steps; the stopping rule applied) and 0 after, so ``count == z_pres.sum(-1)``; boxes_px and
z_what are zero where z_pres is 0. A box is (x, y, w, h) in pixels, top-left corner and size:
x = (shift_x + 1) * S/2 - scale * S/2, w = h = scale * S (``metrics.where_px``).

Input checks run inside the graph (TF Serving's C++ session checks the dtype of a request, not
its shape): wrong rank, wrong canvas size, another channel count, an empty batch (N = 0) or
values outside [0, 1] (or NaN) raise InvalidArgumentError "images must be float32
[N, S, S, C], N >= 1, with values in [0, 1] ...".
"""
import os
import re
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from asr_tf import metrics

SERVING_DEFAULT = "serving_default"
INFER_STOCHASTIC = "infer_stochastic"
INFER_DETERMINISTIC = "infer_deterministic"
GENERATE = "generate"
MODEL_CONFIG_FILE = "models.config"
DEFAULT_MAX_GENERATE = 1024

_VERSION_RE = re.compile(r"^\d+$")


# --------------------------------------------------------------------------- helpers
def images_contract(canvas_px, channels):
    """The message every input-check failure carries."""
    return (f"images must be float32 [N, {canvas_px}, {canvas_px}, {channels}], N >= 1, with "
            "values in [0, 1]")


def _check_images(images, canvas_px, channels):
    """In-graph checks of ``images``; returns images with their static shape set.

    Uses raw Rank/Shape ops so nothing is folded away at trace time from the signature's
    static shape: a C++ server feeds whatever the request holds.
    """
    msg = images_contract(canvas_px, channels)
    rank = tf.raw_ops.Rank(input=images)
    shape = tf.raw_ops.Shape(input=images, out_type=tf.int32)
    shape4 = tf.concat([shape, tf.constant([-1, -1, -1, -1], tf.int32)], 0)[:4]
    shape_ok = tf.reduce_all(tf.stack([
        tf.equal(rank, 4), tf.greater(shape4[0], 0), tf.equal(shape4[1], canvas_px),
        tf.equal(shape4[2], canvas_px), tf.equal(shape4[3], channels)]))
    check_shape = tf.debugging.Assert(shape_ok, [msg + "; got shape", shape], summarize=8)
    with tf.control_dependencies([check_shape]):
        in_range = tf.reduce_all(tf.logical_and(images >= 0.0, images <= 1.0))  # NaN fails too
        check_range = tf.debugging.Assert(
            in_range, [msg + "; got min/max", tf.reduce_min(images), tf.reduce_max(images)])
    with tf.control_dependencies([check_range]):
        return tf.ensure_shape(tf.identity(images), [None, canvas_px, canvas_px, channels])


class StatelessDraws:
    """A ``tf.random.Generator`` stand-in (``uniform``/``normal``) drawing stateless noise:
    the k-th draw uses seed [seed, k], so outputs are a pure function of ``seed``."""

    def __init__(self, seed):
        self.seed = tf.cast(tf.reshape(seed, []), tf.int64)
        self.k = 0

    def _next(self):
        self.k += 1
        return tf.stack([self.seed, tf.constant(self.k, tf.int64)])

    def uniform(self, shape):
        return tf.random.stateless_uniform(shape, self._next())

    def normal(self, shape):
        return tf.random.stateless_normal(shape, self._next())


def boxes_xywh(scale, shift, canvas_px):
    """(x, y, w, h) px boxes [N, T, 4] from scale [N, T] and shift [N, T, 2] (tensors; the
    numpy twin is ``metrics.xywh_from_where``, both from ``metrics.where_px``)."""
    centre, side = metrics.where_px(scale, shift, canvas_px)  # [N, T, 2], [N, T]
    side = side[..., None]  # [N, T, 1]
    return tf.concat([centre - side / 2.0, side, side], -1)


def _masked(values, mask):
    """``values`` [N, T, D] where mask [N, T] is 1, else 0 (no -0.0 from a product)."""
    return tf.where(mask[..., None] > 0.0, values, tf.zeros_like(values))


def _infer_outputs(model, out):
    mask = out["present"]  # [N, T], 1 for the counted objects
    return {
        "count": tf.cast(out["count"], tf.int32),
        "z_pres": mask,
        "boxes_px": _masked(boxes_xywh(out["scale"], out["shift"], model.canvas_px), mask),
        "z_what": _masked(out["z_what"], mask),
        "reconstruction": out["recon"],  # [N, S, S, C]
    }


def _zero_noise(model, batch):
    noise = {k: tf.zeros(shape) for k, shape in model.noise_shapes(batch).items()}
    noise["u_pres"] = tf.fill(model.noise_shapes(batch)["u_pres"], 0.5)  # logistic noise 0
    return noise


# --------------------------------------------------------------------------- signatures
def serving_functions(model, max_generate=DEFAULT_MAX_GENERATE):
    """The three exported computations as plain Python callables of tensors.

    Returns dict name -> (fn, input_signature); names 'infer', 'infer_stochastic', 'generate'.
    """
    s, c = model.canvas_px, model.channels
    images_spec = tf.TensorSpec([None, s, s, c], tf.float32, name="images")
    seed_spec = tf.TensorSpec([], tf.int64, name="seed")
    num_spec = tf.TensorSpec([], tf.int32, name="num_scenes")

    def infer(images):
        images = _check_images(images, s, c)
        batch = tf.shape(images)[0]
        out = model(images, _zero_noise(model, batch), training=False, deterministic=True)
        return _infer_outputs(model, out)

    def infer_stochastic(images, seed):
        images = _check_images(images, s, c)
        batch = tf.shape(images)[0]
        noise = model.sample_noise(batch, StatelessDraws(seed))
        out = model(images, noise, training=False, deterministic=False)
        return _infer_outputs(model, out)

    def generate(num_scenes, seed):
        check = tf.debugging.Assert(
            tf.logical_and(num_scenes >= 1, num_scenes <= max_generate),
            [f"num_scenes must be in [1, {max_generate}]; got", num_scenes])
        with tf.control_dependencies([check]):
            num = tf.identity(num_scenes)
        out = model.generate(model.generation_noise(num, StatelessDraws(seed)))
        boxes = _masked(boxes_xywh(out["scale"], out["shift"], s), out["present"])
        return {"images": tf.clip_by_value(out["images"], 0.0, 1.0),  # [N, S, S, C]
                "count": tf.cast(out["count"], tf.int32), "boxes_px": boxes}

    return {"infer": (infer, [images_spec]),
            "infer_stochastic": (infer_stochastic, [images_spec, seed_spec]),
            "generate": (generate, [num_spec, seed_spec])}


# --------------------------------------------------------------------------- export
def next_version(export_dir):
    """1 + the largest numeric subfolder of ``export_dir`` (1 if none)."""
    if not os.path.isdir(export_dir):
        return 1
    versions = [int(d) for d in os.listdir(export_dir)
                if _VERSION_RE.match(d) and os.path.isdir(os.path.join(export_dir, d))]
    return max(versions, default=0) + 1


def model_config_text(model_name, base_path):
    """A ``--model_config_file`` for tensorflow_model_server (serves the latest version)."""
    return ("# tensorflow_model_server --model_config_file=<this file>  (see docs/SERVING.md)\n"
            "# base_path is the path *inside the server*: /models/<name> for the docker image\n"
            "# run in docs/SERVING.md (export dir mounted there).\n"
            "model_config_list {\n"
            "  config {\n"
            f"    name: \"{model_name}\"\n"
            f"    base_path: \"{base_path}\"\n"
            "    model_platform: \"tensorflow\"\n"
            "  }\n"
            "}\n")


def _ensure_built(model):
    if not model.built:  # a forward pass builds the Keras model (variables exist already)
        s = model.canvas_px
        model(tf.zeros([1, s, s, model.channels]), _zero_noise(model, 1), training=False)


def export_saved_model(model, export_dir, version=None, stochastic_default=False,
                       max_generate=DEFAULT_MAX_GENERATE):
    """Writes the serving SavedModel of ``model`` to ``<export_dir>/<version>/``.

    Args:
      model: an AIR or PPriorAIR (``asr_tf.models.build_model``), weights restored.
      export_dir: the model's base path; its basename is the served model name.
      version: positive int, or None for 1 + the largest existing numeric version.
      stochastic_default: if True, ``serving_default`` is the stochastic pass (images, seed)
        and the deterministic one is ``infer_deterministic``; by default ``serving_default``
        is deterministic and the stochastic one is ``infer_stochastic``.
      max_generate: upper bound of ``num_scenes`` checked in the graph.
    Returns:
      The version directory path.
    Raises:
      FileExistsError: the version already exists (it is left untouched).
    """
    import keras  # noqa: PLC0415  (keras is only needed to write)

    export_dir = os.path.abspath(export_dir)
    if version is None:
        version = next_version(export_dir)
    version = int(version)
    if version < 1:
        raise ValueError(f"version={version}: TF Serving versions are positive integers")
    path = os.path.join(export_dir, str(version))
    if os.path.exists(path):
        raise FileExistsError(f"{path} exists: refusing to overwrite version {version} "
                              f"(omit --version for the next free one, {next_version(export_dir)})")
    _ensure_built(model)
    fns = serving_functions(model, max_generate)

    archive = keras.export.ExportArchive()
    archive.track(model)
    infer, infer_sig = fns["infer"]
    stoch, stoch_sig = fns["infer_stochastic"]
    if stochastic_default:
        archive.add_endpoint(SERVING_DEFAULT, stoch, stoch_sig)
        archive.add_endpoint(INFER_DETERMINISTIC, infer, infer_sig)
    else:
        archive.add_endpoint(SERVING_DEFAULT, infer, infer_sig)
        archive.add_endpoint(INFER_STOCHASTIC, stoch, stoch_sig)
    archive.add_endpoint(GENERATE, *fns["generate"])

    os.makedirs(export_dir, exist_ok=True)
    # Write beside the versions and rename: the server never sees a half-written version.
    tmp = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=export_dir)
    try:
        # No gradient functions: serving needs none, and the sampler's custom gradients hold
        # XLA-only ops (asr_tf.nn.transformer) a model server may not have.
        archive.write_out(tmp, verbose=False,
                          options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
        if os.path.exists(path):
            raise FileExistsError(f"{path} appeared during the export: not overwriting it")
        os.rename(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    name = os.path.basename(export_dir.rstrip(os.sep))
    with open(os.path.join(export_dir, MODEL_CONFIG_FILE), "w") as f:
        f.write(model_config_text(name, f"/models/{name}"))
    return path


def deterministic_reference(model, images):
    """The deterministic outputs computed directly from ``model`` in-process (numpy dict),
    independent of the export code path: the model's deterministic test pass with
    zero noise, boxes from ``metrics.xywh_from_where``."""
    images = tf.convert_to_tensor(images, tf.float32)
    out = model(images, _zero_noise(model, tf.shape(images)[0]), training=False,
                deterministic=True)
    out = {k: v.numpy() for k, v in out.items()}
    on = out["present"][..., None] > 0
    boxes = metrics.xywh_from_where(out["scale"], out["shift"], model.canvas_px)
    return {"count": out["count"].astype(np.int32), "z_pres": out["present"],
            "boxes_px": np.where(on, boxes, 0.0).astype(np.float32),
            "z_what": np.where(on, out["z_what"], 0.0).astype(np.float32),
            "reconstruction": out["recon"]}
