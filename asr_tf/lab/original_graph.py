"""The original code's graph on a given batch, weights and noise: every intermediate and gradient.

The child-process half of asr_tf/lab/original_compare.py. It runs in a process of its own under
``tf.compat.v1`` (the original's modules turn TF 2 behaviour off process-wide) and imports the
original's model classes from a prepared copy (``--original DIR``; the original is never part
of this project). It builds the original's model on placeholders, with the same constructor
arguments as its training scripts, and instruments it without changing what it computes:

* its random draws (``random_normal``, ``random_uniform``) inside the glimpse loop are replaced
  by slices of fed arrays [T, B, ...] at the loop's step, so both sides use the same noise;
* the functions the loop body calls (the spatial transformer, the glimpse VAE, the Concrete
  sample and KL, the Gaussian sampler) are wrapped to record their inputs and outputs per step,
  and the loop carries extra TensorArrays for them; the loop's own per-step TensorArrays (scale,
  shift, presence probability, KLs, decoded glimpses, z_what) and carried values (stop sum,
  canvas, count) are recorded the same way.

It writes one ``.npz``: the weights by the original's variable names (``w/<name>``), the training
model's records (``train/<name>``, relaxed z_pres) and the test model's (``test/<name>``, rounded
z_pres), every logged loss term, the raw gradients (``grad/<name>``), the weights after one Adam
update (``after/<name>``), the gradient with respect to each noise array
(``grad_noise/<name>``: per step and item, e.g. the shift's through its reparameterisation),
and a control: the training pass and its gradients again with every
weight moved up by one float32 ulp (``ctl/<name>``, ``ctl/grad/<name>``; the test model's
``ctl_test/<name>``; the gradients also with the weights one ulp down and two up and down,
``ctl_down/grad/<name>`` and so on, GRAD_CONTROLS), the original's own
sensitivity to rounding.

  python -m asr_tf.lab.original_graph DIR request.npz out.npz     (from original_compare.py)
"""
import json
import os
import sys

import numpy as np

# Per model kind: the original's module, the draws of its loop body in call order, the Gaussian
# sampler's calls in order, and the positions of the carried values in the loop's body outputs.
KINDS = {
    "pprior": {"module": "air.air_number_bbox_location",
               "normal": ("eps_shift", "eps_scale", "eps_what", "eps_pix"),
               "mvn": ("shift", "scale"),
               "carried": {1: "stop_sum", 7: "canvas", 10: "count"},
               "arrays": {11: "scale", 12: "shift", 13: "z_pres_prob", 15: "glimpse_recon",
                          16: "z_what"},
               "array_dicts": {8: "kl"}},
    "air": {"module": "air.air_model",
            "normal": ("eps_scale", "eps_shift", "eps_what", "eps_pix"),
            "mvn": ("scale", "shift"),
            "carried": {1: "stop_sum", 3: "canvas", 5: "count"},
            "arrays": {6: "scale", 7: "shift", 8: "z_pres_prob", 9: "kl_z_pres_kl",
                       10: "kl_scale_kl", 11: "kl_shift_kl", 12: "kl_vae_kl",
                       14: "glimpse_recon", 15: "z_what"},
            "array_dicts": {}},
}

# The constructor arguments of the original's training scripts (train_air_pr.py for pPrior and
# ASR on Multi-MNIST; training_air_original.py for AIR), as its command lines set them.
PPRIOR_ARGS = dict(max_steps=6, max_digits=6, rnn_units=256, canvas_size=50, windows_size=28,
                   vae_latent_dimensions=50, vae_recognition_units=(512, 256),
                   vae_generative_units=(256, 512), fix_scale_distribution=True,
                   vae_prior_mean=0.0, vae_prior_variance=1.0, vae_likelihood_std=0.0,
                   scale_hidden_units=64, shift_hidden_units=64, z_pres_hidden_units=64,
                   z_pres_prior_log_odds=-0.01, z_pres_temperature=0.1, stopping_threshold=0.9,
                   gradient_clipping_norm=1.0, cnn=False, annealing_schedules={},
                   constrains_area_minmax=[17, 23])
AIR_ARGS = dict(max_steps=6, max_digits=6, rnn_units=256, canvas_size=50, windows_size=28,
                vae_latent_dimensions=50, vae_recognition_units=(512, 256),
                vae_generative_units=(256, 512), scale_prior_mean=-1.0,
                scale_prior_variance=0.05, shift_prior_mean=0.0, shift_prior_variance=1.0,
                vae_prior_mean=0.0, vae_prior_variance=1.0, vae_likelihood_std=0.3,
                scale_hidden_units=64, shift_hidden_units=64, z_pres_hidden_units=64,
                z_pres_prior_log_odds=-0.01, z_pres_temperature=1.0, stopping_threshold=0.99,
                gradient_clipping_norm=1.0, cnn=False, num_prior=None,
                annealing_schedules={"z_pres_prior_log_odds": {
                    "init": 10000.0, "min": 0.000000001, "factor": 0.1, "iters": 3000,
                    "staircase": False, "log": True}})

GRAD_CONTROLS = {"ctl_down": -1, "ctl_up2": 2, "ctl_down2": -2}  # prefix: ulps moved


class _Capture:
    """What the loop body records while it is traced (one per model instance)."""

    def __init__(self, kind, noise):
        self.kind = kind
        self.noise = noise  # name -> placeholder [T, B, ...]
        self.active = False
        self.looped = False  # the model's glimpse loop is built (generation's is not recorded)
        self.step = None
        self.calls = {}
        self.records = {}  # name -> tensor of the current step
        self.stacked = {}  # name -> [T, ...] after the loop

    def begin_step(self, step):
        self.step, self.calls, self.records = step, {}, {}

    def count(self, key):
        n = self.calls.get(key, 0)
        self.calls[key] = n + 1
        return n

    def record(self, name, tensor):
        if self.active and self.step is not None:
            self.records[name] = tensor


class _TFProxy:
    """The original modules' ``tf``: every attribute the real one's, except the loop and the draws."""

    def __init__(self, tf, capture_of):
        self._tf = tf
        self._capture_of = capture_of  # () -> the active _Capture or None

    def __getattr__(self, name):
        return getattr(self._tf, name)

    def random_normal(self, shape, *a, **k):
        cap = self._capture_of()
        if cap is None or cap.step is None:
            return self._tf.random_normal(shape, *a, **k)
        key = KINDS[cap.kind]["normal"][cap.count("normal")]
        return self._tf.gather(cap.noise[key], cap.step)

    def random_uniform(self, shape, *a, **k):
        cap = self._capture_of()
        if cap is None or cap.step is None:
            return self._tf.random_uniform(shape, *a, **k)
        cap.count("uniform")
        return self._tf.gather(cap.noise["u_pres"], cap.step)

    def while_loop(self, cond, body, loop_vars, **kwargs):
        cap = self._capture_of()
        if cap is None or cap.looped:
            return self._tf.while_loop(cond, body, loop_vars, **kwargs)
        cap.looped = True
        tf = self._tf
        names = _RECORD_NAMES[cap.kind]
        n = len(loop_vars)
        extra = [tf.TensorArray(tf.float32, size=0, dynamic_size=True, element_shape=None)
                 for _ in names]

        def body_recorded(*args):
            step = args[0]
            cap.begin_step(step)
            spec = KINDS[cap.kind]
            # The loop's own TensorArrays are read once (their stack clears them): what the
            # body writes into them is recorded as it is written.
            for pos, name in spec["arrays"].items():
                _record_writes(args[pos], name, cap)
            for pos, prefix in spec["array_dicts"].items():
                for key, arr in args[pos].items():
                    _record_writes(arr, f"{prefix}_{key}", cap)
            outs = body(*args[:n])
            for pos, name in spec["carried"].items():
                cap.record(name, tf.cast(outs[pos], tf.float32))
            written = [ta.write(step, tf.cast(cap.records[name], tf.float32))
                       for ta, name in zip(args[n:], names)]
            cap.step = None
            return list(outs) + written

        result = tf.while_loop(lambda *args: cond(*args[:n]), body_recorded,
                               list(loop_vars) + extra, **kwargs)
        cap.stacked = {name: ta.stack() for name, ta in zip(names, result[n:])}
        canvas_at = [pos for pos, name in KINDS[cap.kind]["carried"].items() if name == "canvas"]
        cap.final_canvas = result[canvas_at[0]]  # [B, S*S], the loop's running canvas
        return result[:n]


def _record_writes(array, name, cap):
    """Records the value the loop body writes into one of its TensorArrays (this instance)."""
    base = array.write

    def write(index, value, name_=None):
        cap.record(name, value)
        return base(index, value, name_)

    array.write = write


# Everything a loop step records, per kind (the wrappers' names plus the loop's own values).
_WRAPPED = ("mvn_shift_mean", "mvn_shift_var", "mvn_scale_mean", "mvn_scale_var", "window",
            "rendered", "what_mean", "what_log_var", "y", "kl_pres_raw", "prior_logit",
            "posterior_logit")
_RECORD_NAMES = {
    "pprior": _WRAPPED + ("stop_sum", "canvas", "count", "scale", "shift", "z_pres_prob",
                          "glimpse_recon", "z_what", "kl_z_pres_kl", "kl_scale_kl",
                          "kl_shift_kl", "kl_vae_kl"),
    "air": _WRAPPED + ("stop_sum", "canvas", "count", "scale", "shift", "z_pres_prob",
                       "kl_z_pres_kl", "kl_scale_kl", "kl_shift_kl", "kl_vae_kl",
                       "glimpse_recon", "z_what"),
}


def _instrument(module, kind, tf, current):
    """Wraps the functions the loop body calls (module attributes, looked up at call time)."""
    proxy = _TFProxy(tf, current)
    module.tf = proxy
    sys.modules["air.concrete"].tf = proxy
    sys.modules["air.vae"].tf = proxy
    cls = module.AIRModel
    base_mvn = cls._sample_from_mvn
    base_transformer, base_vae = module.transformer, module.vae
    base_sample = module.concrete_binary_pre_sigmoid_sample
    base_kl = module.concrete_binary_kl_mc_sample

    def mvn(mean, diag_variance, shape=None):
        cap = current()
        if cap is not None and cap.step is not None:
            which = KINDS[kind]["mvn"][cap.count("mvn")]
            cap.record(f"mvn_{which}_mean", mean)
            cap.record(f"mvn_{which}_var", diag_variance)
        return base_mvn(mean, diag_variance, shape)

    def transformer(u, theta, out_size, **k):
        cap = current()
        which = None
        if cap is not None and cap.step is not None:
            which = "window" if cap.count("transformer") == 0 else "rendered"
            theta = theta + tf.gather(cap.noise[f"probe_theta_{which}"], cap.step)  # zeros
        out = base_transformer(u, theta, out_size, **k)
        if which:
            out = out + tf.gather(cap.noise[f"probe_out_{which}"], cap.step)[..., None]  # zeros
            cap.record(which, out[..., 0])
        return out

    def vae(*a, **k):
        recon, mean, log_var, latent = base_vae(*a, **k)
        cap = current()
        if cap is not None:
            cap.record("what_mean", mean)
            cap.record("what_log_var", log_var)
        return recon, mean, log_var, latent

    def sample(log_odds, temperature, *a, **k):
        y = base_sample(log_odds, temperature, *a, **k)
        cap = current()
        if cap is not None:
            cap.record("y", y)
        return y

    def kl(y, prior_log_odds, prior_t, posterior_log_odds, posterior_t, *a, **k):
        out = base_kl(y, prior_log_odds, prior_t, posterior_log_odds, posterior_t, *a, **k)
        cap = current()
        if cap is not None and cap.count("kl") == 0:
            cap.record("kl_pres_raw", out)
            cap.record("prior_logit", prior_log_odds + tf.zeros_like(y))
            cap.record("posterior_logit", posterior_log_odds)
        return out

    cls._sample_from_mvn = staticmethod(mvn)
    module.transformer, module.vae = transformer, vae
    module.concrete_binary_pre_sigmoid_sample = sample
    module.concrete_binary_kl_mc_sample = kl


def run(root, request_path, out_path):
    """Builds, feeds and dumps (see the module docstring). ``request_path``: an .npz with
    ``images`` [B, S*S], ``targets`` [B], the noise arrays [T, B, ...], optional ``w/<name>``
    weights, and ``options`` (JSON: kind, seed, lr, global_step, constraint weights)."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    sys.path.insert(0, root)
    os.chdir(root)
    import tensorflow.compat.v1 as tf

    tf.disable_v2_behavior()
    req = dict(np.load(request_path, allow_pickle=False))
    opts = json.loads(str(req.pop("options")))
    kind = opts["kind"]
    tf.set_random_seed(int(opts.get("seed", 1235)))
    module = __import__(KINDS[kind]["module"], fromlist=["AIRModel"])
    state = {"cap": None}
    _instrument(module, kind, tf, lambda: state["cap"])
    images = tf.placeholder(tf.float32, [None, req["images"].shape[1]], "images")
    targets = tf.placeholder(tf.int32, [None], "targets")
    noise = {k: tf.placeholder(tf.float32, req[k].shape, k)
             for k in ("eps_shift", "eps_scale", "eps_what", "eps_pix", "u_pres")}
    # Zero probes added to the samplers' theta: their gradients are dL/dtheta per step.
    t_max, batch = req["u_pres"].shape
    for name, side in (("window", 28), ("rendered", int(req["images"].shape[1] ** 0.5))):
        noise[f"probe_theta_{name}"] = tf.placeholder(tf.float32, [t_max, batch, 2, 3], name)
        req[f"probe_theta_{name}"] = np.zeros([t_max, batch, 2, 3], np.float32)
        noise[f"probe_out_{name}"] = tf.placeholder(tf.float32, [t_max, batch, side, side])
        req[f"probe_out_{name}"] = np.zeros([t_max, batch, side, side], np.float32)
    args = dict(PPRIOR_ARGS if kind == "pprior" else AIR_ARGS)
    args.update(max_steps=int(opts.get("max_glimpses", 6)), max_digits=int(opts.get("max_glimpses", 6)))
    if kind == "pprior":
        args.update(constrains_num=opts["counts"], constrains_margin_gamma=opts["gamma_m"],
                    constrains_num_element_gamma=opts["gamma_ne"],
                    constrains_num_gamma=opts.get("gamma_n", 0.0),
                    constrains_bbox_gamma=opts.get("gamma_b", 0.0),
                    constrains_sharesize_gamma=opts.get("gamma_s", 0.0),
                    constrains_area_gamma=opts.get("gamma_a", 0.0), fix_steps=None)
    models, captures = [], []
    for train in (True, False):
        cap = _Capture(kind, noise)
        cap.active = True
        state["cap"] = cap
        models.append(module.AIRModel(images, targets, learning_rate=float(opts["lr"]),
                                      train=train, reuse=not train, scope="air", **args))
        state["cap"] = None
        captures.append(cap)
    train_model, test_model = models
    variables = tf.trainable_variables()
    grads = tf.gradients(train_model.loss, variables)
    canvas_grad = tf.gradients(train_model.loss, captures[0].final_canvas)[0]  # [B, S*S]
    noise_keys = sorted(noise)
    noise_grads = [None if g is None else tf.convert_to_tensor(g)  # gathers: IndexedSlices
                   for g in tf.gradients(train_model.loss, [noise[k] for k in noise_keys])]
    feed = {images: req["images"], targets: req["targets"]}
    feed.update({noise[k]: req[k] for k in noise})
    out = {}
    with tf.Session(config=_session_config(tf)) as sess:
        sess.run(tf.global_variables_initializer())
        if "global_step" in opts:
            sess.run(tf.assign(train_model.global_step, int(opts["global_step"])))
        given = {k[2:]: v for k, v in req.items() if k.startswith("w/")}
        for v in variables:
            if v.op.name in given:
                v.load(given[v.op.name], sess)
        out.update({f"w/{v.op.name}": sess.run(v) for v in variables})
        noise_fetched = [k for k, g in zip(noise_keys, noise_grads) if g is not None]

        def fetch_passes(tags, extra):
            """Each model's records and loss terms (and ``extra`` of it) as ``<tag>/<name>``."""
            for tag, model, cap in zip(tags, (train_model, test_model), captures):
                fetch = dict(cap.stacked)
                fetch.update(_loss_terms(model))
                fetch.update(recon=model.reconstruction, **extra(model))
                for name, value in sess.run(fetch, feed).items():
                    out[f"{tag}/{name}"] = value

        def fetch_grads(prefix):
            """The raw gradients of the weights and of the noise, ``<prefix>grad/<name>`` and
            ``<prefix>grad_noise/<name>`` (each set in a run of its own)."""
            raw = sess.run(grads, feed)
            out.update({f"{prefix}grad/{v.op.name}": g for v, g in zip(variables, raw)
                        if g is not None})
            raw = sess.run([g for g in noise_grads if g is not None], feed)
            out.update({f"{prefix}grad_noise/{k}": g for k, g in zip(noise_fetched, raw)})

        def load_moved(ulps):
            """Every weight moved by ``ulps`` float32 ulps (0: the weights as given)."""
            for v, value in weights.items():
                for _ in range(abs(ulps)):
                    value = np.nextafter(value, np.float32(np.inf if ulps > 0 else -np.inf))
                v.load(value, sess)

        fetch_passes(("train", "test"), lambda model: {"num_digits": model.rec_num_digits})
        fetch_grads("")
        out["grad_canvas"] = sess.run(canvas_grad, feed)
        # The control: the same pass with every weight one float32 ulp up. What moves here
        # is the original's own sensitivity to rounding.
        weights = {v: out[f"w/{v.op.name}"] for v in variables}
        load_moved(1)
        fetch_passes(("ctl", "ctl_test"), lambda model: {})
        fetch_grads("ctl/")
        # More controls for the gradients (every weight one ulp down, two up, two down): the
        # gradients through the samplers are rounding, and their spread over several
        # one-ulp-sized moves bounds it better than one move does.
        for prefix, ulps in GRAD_CONTROLS.items():
            load_moved(ulps)
            fetch_grads(f"{prefix}/")
        load_moved(0)
        sess.run(train_model.training, feed)
        out.update({f"after/{v.op.name}": sess.run(v) for v in variables})
    np.savez(out_path, **out)


def _loss_terms(model):
    """The loss terms a model exposes, as ``loss_<name>``: pPrior/ASR log every term (its
    ``log_variables``); AIR keeps the reconstruction term and the loss as attributes (its KLs
    are the per-step records)."""
    if hasattr(model, "log_variables_name"):
        return {f"loss_{n}": t for n, t in zip(model.log_variables_name, model.log_variables_tens)}
    return {"loss_recon": model.reconstruction_loss, "loss_TotLoss": model.loss}


def _session_config(tf):
    """Two threads, and grappler's constant folding off as in the prepared training scripts
    (TF 2 folds (1 - r) + eps into (1 + eps) - r; TF 1.12 did not)."""
    from tensorflow.core.protobuf import rewriter_config_pb2

    conf = tf.ConfigProto(intra_op_parallelism_threads=2, inter_op_parallelism_threads=2)
    conf.graph_options.rewrite_options.constant_folding = rewriter_config_pb2.RewriterConfig.OFF
    return conf


if __name__ == "__main__":
    run(*sys.argv[1:4])
