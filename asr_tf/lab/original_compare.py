"""The port against the original code, tensor by tensor: one batch, one set of weights, one noise.

  python tools/compare_original.py --original DIR --config air_asr_13 --config faithful \
      [--batch 32] [--seed 0] [--weights_from ckpt] [--out report.json]

1. The original's graph is built in a child process (asr_tf/lab/original_graph.py) on a batch of
   the port's test scenes and on noise drawn here; its weights come from its own initialisers
   (graph seed ``--seed``) or, with ``--weights_from``, from a port checkpoint mapped back.
2. Its weights are mapped onto the port's model (asr_tf/lab/original_weights.py: each port
   variable, the original's variable, and the rows it takes of it), the same batch and noise go
   through the port's training pass (relaxed z_pres) and test pass (rounded z_pres), and the
   port's loss, raw gradients, clipped gradients and the weights after one Adam update are
   computed as its training step does.
3. Every pair is reported: the largest absolute difference, and the normwise relative one
   max|a - b| / max|a| (``rel``), beside the original's own sensitivity to rounding (its
   training pass again with every weight one ulp up, ``control_rel``). asr_tf/lab/original_report.py calls a
   pair 'rounding' when ``rel`` is below its ROUNDING_REL (float32 computations of a few
   hundred ops), 'amplified' when it is above but within ten times the control (rounding that
   the computation itself amplifies), and 'different' otherwise: a difference to explain.
"""
import contextlib
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from asr_tf.lab.original_report import difference
from asr_tf.lab.original_weights import (air_map, load_weights, original_weights, pprior_map,
                                         to_port)

@contextlib.contextmanager
def port_recording(model):
    """Records the port's per-step values during one forward pass: the traces of the recurrent
    part, the stop sum and count after each step, the cut windows, the decoded glimpses and each
    step's rendering (the 'four_gathers' sampler renders steps one by one)."""
    import tensorflow as tf

    from asr_tf.nn import four_gathers, transformer

    rec = {}
    base_step, base_decode = model._step_traces, model.decode
    base_extract, base_render = transformer.extract_glimpse, four_gathers.render_glimpse
    base_sample = four_gathers.sample_theta

    def sample_theta(images, theta, out_hw, *args):  # a zero probe on theta: dL/dtheta
        probe = tf.zeros_like(theta)
        rec.setdefault("probes", []).append((out_hw, probe))
        return base_sample(images, theta + probe, out_hw, *args)

    def step_traces(t, carry, *a, **k):
        carry, trace = base_step(t, carry, *a, **k)
        for key, value in dict(trace, stop_sum=carry["stop_sum"], count=carry["count"]).items():
            rec.setdefault(key, []).append(value)
        return carry, trace

    def keep(key, fn):
        def wrapped(*a, **k):
            out = fn(*a, **k)
            rec.setdefault(key, []).append(out)
            return out
        return wrapped

    model._step_traces, model.decode = step_traces, keep("decoded", base_decode)
    transformer.extract_glimpse = keep("window", base_extract)
    four_gathers.render_glimpse = keep("rendered", base_render)
    four_gathers.sample_theta = sample_theta
    try:
        yield rec
    finally:
        del model._step_traces, model.decode
        transformer.extract_glimpse, four_gathers.render_glimpse = base_extract, base_render
        four_gathers.sample_theta = base_sample


def _stacked(rec, key, steps, batch):
    """A recorded list as [T, B, ...] numpy. Per-step calls ([B, ...] each) and one call over all
    steps ([T*B, ...], t-major) both concatenate t-major; the decoded glimpses and renderings of
    the canvas are the last call, batch-major [B*T, ...]."""
    if key in ("decoded", "rendered"):
        x = np.asarray(rec[key][-1])  # [B*T_max, ...]: every step, also those not executed
        return x.reshape((batch, -1) + x.shape[1:]).swapaxes(0, 1)[:steps]
    x = np.concatenate([np.asarray(v) for v in rec[key]])  # AIR's readout: all T_max steps
    return x.reshape((-1, batch) + x.shape[1:])[:steps]


def run_original(original_dir, request, workdir):
    """Runs the original's side (a child process) on ``request`` (dict of arrays + options)."""
    req_path, out_path = os.path.join(workdir, "request.npz"), os.path.join(workdir, "original.npz")
    np.savez(req_path, **request)
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONHASHSEED="0")
    proc = subprocess.run([sys.executable, "-m", "asr_tf.lab.original_graph",
                           os.path.abspath(original_dir), req_path, out_path],
                          cwd=original_dir, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError("the original's side failed:\n" + proc.stderr[-4000:])
    return dict(np.load(out_path))


# The original's per-step records (its name) and the port's (its name, a function of the port's
# per-step arrays). Time-major [T, B, ...] on both sides.
STEP_PAIRS = (
    ("mvn_shift_mean", "q_shift_loc", None), ("mvn_shift_var", "q_shift_scale", np.square),
    ("mvn_scale_mean", "q_scale_loc", None), ("mvn_scale_var", "q_scale_scale", np.square),
    ("window", "window", lambda w: w[..., 0]), ("what_mean", "what_loc", None),
    ("what_log_var", "what_scale", lambda s: 2.0 * np.log(s)), ("y", "y", None),
    ("posterior_logit", "z_pres_logit", None), ("z_pres_prob", "z_pres_prob", None),
    ("prior_logit", "prior_logit", None), ("scale", "scale", lambda s: s[..., None]),
    ("shift", "shift", None), ("z_what", "z_what", None), ("stop_sum", "stop_sum", None),
    ("count", "count", None), ("glimpse_recon", "decoded", lambda g: g.reshape(g.shape[:2] + (-1,))),
    ("rendered", "rendered", None), ("kl_z_pres_kl", "kl_pres", None),
    ("kl_scale_kl", "kl_scale", None), ("kl_shift_kl", "kl_shift", None),
    ("kl_vae_kl", "kl_what", None),
)
# The original's logged terms (per image or scalar) and the port's (per_image / batch terms,
# the constraint weight the original folds in).
LOSS_PAIRS = (("recon", "nll", 1.0), ("z_pres_kl", "kl_pres", 1.0), ("scale_kl", "kl_scale", 1.0),
              ("shift_kl", "kl_shift", 1.0), ("vae_kl", "kl_what", 1.0), ("elbo", "nelbo", 1.0),
              ("num_min_KL", "count_min", "count_min"), ("num_margin", "count_margin", "count_margin"),
              ("area_loss", "area", 1.0), ("out_loss", "out_of_image", 1.0),
              ("size_loss", "size_equality", 1.0), ("over_loss", "overlap", 1.0),
              ("mse", "se", 1.0), ("TotLoss", "loss", 1.0))


def _port_pass(model, images, noise, step, objective, quirks, training):
    """One forward pass of the port with recording; loss terms and per-step arrays (numpy)."""
    import tensorflow as tf

    from asr_tf import objectives

    x = tf.constant(images[..., None])
    with port_recording(model) as rec, tf.GradientTape(persistent=True) as tape:
        tape.watch(list(noise.values()))
        out = model(x, noise, step=step, training=training)
        probes = rec.pop("probes", [])
        for _, probe in probes:
            tape.watch(probe)
        loss, per_image, batch_terms = objectives.total_loss(x, out, objective, model.canvas_px,
                                                             quirks)
    grads, noise_grads, canvas_grad, probe_grads = None, {}, None, []
    if training:
        keys = sorted(noise)
        n_vars = len(model.trainable_variables)
        grads = tape.gradient(loss, model.trainable_variables + [noise[k] for k in keys]
                              + [out["canvas"]])
        noise_grads = dict(zip(keys, grads[n_vars:-1]))
        canvas_grad = grads[-1]
        probe_grads = [(hw, tape.gradient(loss, p)) for hw, p in probes]
        grads = grads[:n_vars]
    steps = len(rec["y"])
    batch = images.shape[0]
    arrays = {k: _stacked(rec, k, steps, batch) for k in rec}
    window = [np.asarray(g) for hw, g in probe_grads if hw[0] != model.canvas_px]
    if window:  # per-step calls ([B, 2, 3] each) or one over all steps ([T*B, 2, 3])
        w = np.concatenate(window)
        arrays["grad_probe_theta_window"] = w.reshape((-1, batch) + w.shape[1:])[:steps]
    render = [np.asarray(g) for hw, g in probe_grads if hw[0] == model.canvas_px]
    if render:  # the canvas's renderings, batch-major [B*T, 2, 3]
        r = render[-1]
        arrays["grad_probe_theta_rendered"] = r.reshape((batch, -1) + r.shape[1:]).swapaxes(0, 1)[:steps]
    arrays.update({f"grad_noise/{k}": np.asarray(g)[:steps] for k, g in noise_grads.items()
                   if g is not None})
    if canvas_grad is not None:
        arrays["grad_canvas"] = np.asarray(canvas_grad).reshape(batch, -1)  # [B, S*S]
    for k in ("prior_logit", "kl_pres", "kl_scale", "kl_shift", "kl_what", "z_what"):
        arrays[k] = np.asarray(out[k]).swapaxes(0, 1)[:steps]  # [T, B] from the readout
    terms = {k: np.asarray(v) for k, v in dict(per_image, **batch_terms).items()}
    terms["se"] = np.asarray(objectives.squared_error(x, out["recon"]))
    terms["loss"] = np.asarray(loss)
    final = {"canvas": np.asarray(out["canvas"]).reshape(batch, -1),
             "recon": np.asarray(out["recon"]).reshape(batch, -1), "count": np.asarray(out["count"])}
    return arrays, terms, final, grads


def compare(original_dir, configs, bindings=(), batch=32, seed=0, weights_from=None, step=0):
    """Runs both sides and returns the report (a dict; see the module docstring)."""
    import tensorflow as tf

    from asr_tf import models, objectives, training
    from asr_tf.data import scenes
    from asr_tf.run import config as config_lib, trained, workdir as workdir_lib

    config_lib.parse(configs, bindings)
    spec = workdir_lib.run_spec()
    model, objective = models.model_for(spec), objectives.objective_for(spec)
    quirks, kind = model.quirks, model.kind
    mapping = (air_map if kind == "air" else pprior_map)(model)
    given = {}
    if weights_from:
        run = trained.load_trained(weights_from)  # the run's own config and weights
        model, step = run.model, run.step
        config_lib.parse_record(weights_from)  # the run's bindings for its optimizer below
        mapping = (air_map if kind == "air" else pprior_map)(model)
        given = {f"w/{k}": v for k, v in original_weights(mapping).items()}
    data = scenes.synthesize_batch(spec, np.arange(batch), "test")
    rng = np.random.default_rng(seed)
    t_max, g2 = model.max_glimpses, model.glimpse_px ** 2
    noise = {"u_pres": rng.uniform(size=(t_max, batch)), "eps_shift": rng.normal(size=(t_max, batch, 2)),
             "eps_scale": rng.normal(size=(t_max, batch, 1)),
             "eps_what": rng.normal(size=(t_max, batch, model.z_what_dim)),
             "eps_pix": rng.normal(size=(t_max, batch, g2))}
    noise = {k: v.astype(np.float32) for k, v in noise.items()}
    optimizer = training.make_optimizer(model)
    lr = float(optimizer.rate_schedule(0))
    options = {"kind": kind, "seed": seed, "lr": lr, "global_step": int(step),
               "max_glimpses": t_max,
               "counts": list(spec.counts), "gamma_m": objective.weight("count_margin"),
               "gamma_ne": objective.weight("count_min")}
    request = dict(images=data["image"].reshape(batch, -1), targets=data["count"],
                   options=json.dumps(options), **noise, **given)
    with tempfile.TemporaryDirectory() as tmp:
        orig = run_original(original_dir, request, tmp)
    load_weights(mapping, {k[2:]: v for k, v in orig.items() if k.startswith("w/")})
    port_noise = {k: tf.constant(noise[k]) for k in model.noise_shapes(batch)}
    report = {"configs": list(configs), "kind": kind, "batch": batch, "seed": seed,
              "step": int(step), "weights": "port checkpoint" if weights_from else "original init",
              "train": {}, "test": {}, "loss": {}, "grad": {}, "clipped": {}, "after": {}}
    weights = {"count_min": objective.weight("count_min"),
               "count_margin": objective.weight("count_margin")}
    passes = {tag: _port_pass(model, data["image"], port_noise, step, objective, quirks,
                              training_pass)
              for tag, training_pass in (("train", True), ("test", False))}
    for tag, training_pass in (("train", True), ("test", False)):
        arrays, terms, final, grads = passes[tag]
        steps = orig[f"{tag}/y"].shape[0]
        ctl = "ctl" if training_pass else "ctl_test"  # the original one ulp away
        if kind == "air":  # its per-step KL records are unmasked: mask them as its loss does
            _mask_air_kls(orig, tag, model.stop_threshold)
            _mask_air_kls(orig, ctl, model.stop_threshold)
        section = report[tag]
        section["steps_executed"] = {"original": steps, "port": int(arrays["y"].shape[0])}
        for orig_key, port_key, fn in STEP_PAIRS:
            if port_key not in arrays:
                continue
            port = arrays[port_key][:steps]
            section[orig_key] = difference(orig[f"{tag}/{orig_key}"], fn(port) if fn else port)
            section[orig_key]["control_rel"] = _control(orig[f"{tag}/{orig_key}"],
                                                        orig[f"{ctl}/{orig_key}"])
        section["canvas"] = difference(orig[f"{tag}/canvas"][steps - 1], final["canvas"])
        for key in [k for k in arrays if k.startswith("grad_noise/")]:
            if key in orig:
                report["grad"][key] = dict(
                    difference(orig[key][:steps], arrays[key][:steps]),
                    control_rel=_grad_control(orig, key))
        section["recon"] = difference(orig[f"{tag}/recon"], final["recon"])
        section["num_digits"] = difference(orig[f"{tag}/num_digits"], final["count"])
        _reconstruction_split(report, tag, training_pass, data["image"].reshape(batch, -1),
                              orig, final["recon"], terms, ctl)
        for orig_key, port_key, weight in LOSS_PAIRS:
            if f"{tag}/loss_{orig_key}" in orig and port_key in terms:
                w = weights[weight] if isinstance(weight, str) else weight
                entry = difference(orig[f"{tag}/loss_{orig_key}"], w * terms[port_key])
                entry["control_rel"] = _control(orig[f"{tag}/loss_{orig_key}"],
                                                orig[f"{ctl}/loss_{orig_key}"])
                report["loss" if training_pass else "test"][f"loss_{orig_key}"] = entry
        if training_pass:
            _gradients(report, mapping, model, grads, orig, optimizer, quirks)
    report["arrays"] = {"original": orig, "port": passes}  # for a caller's closer look
    return report


RESIDUE_PX = 1e-4  # reconstructions below this are the samplers' rounding residues (or 0)


def _control(a, b):
    """The relative difference of the original and its one-ulp control, or None where they
    differ in shape (the control ran another number of glimpse steps)."""
    a, b = np.asarray(a), np.asarray(b)
    return difference(a, b)["rel"] if a.shape == b.shape else None


def _grad_control(orig, key):
    """A gradient's control: the largest relative move of the original's own gradient with every
    weight moved by one or two ulps up or down (``ctl/`` and original_graph.GRAD_CONTROLS)."""
    from asr_tf.lab.original_graph import GRAD_CONTROLS

    moves = [_control(orig[key], orig[f"{prefix}/{key}"]) for prefix in ("ctl", *GRAD_CONTROLS)
             if f"{prefix}/{key}" in orig]
    moves = [m for m in moves if m is not None]
    return max(moves) if moves else None


def _bce(images, recon):
    """The reconstruction BCE per pixel in float64, eps 1e-10 as both sides."""
    x, r = images.astype(np.float64), recon.astype(np.float64)
    return -(x * np.log(r + 1e-10) + (1.0 - x) * np.log(1.0 - r + 1e-10))


def _reconstruction_split(report, tag, training_pass, images, orig, port_recon, terms, ctl):
    """The BCE's difference taken apart: over the pixels where both reconstructions exceed
    RESIDUE_PX (``loss_recon_bulk``, rounding) and the rest, where a residue of ~1e-7 under ink
    costs ln(1e-7 + 1e-10) and its neighbour's 0 costs ln(1e-10) (``loss_recon_residues``);
    and the loss without the BCE (``loss_TotLoss_without_recon``)."""
    orig_recon = orig[f"{tag}/recon"]
    bulk = (orig_recon > RESIDUE_PX) & (port_recon > RESIDUE_PX)
    section = report["loss" if training_pass else "test"]
    o, p = _bce(images, orig_recon), _bce(images, port_recon)
    section["loss_recon_bulk"] = difference(np.where(bulk, o, 0).sum(1), np.where(bulk, p, 0).sum(1))
    c = _bce(images, orig[f"{ctl}/recon"])  # beside the original's own move one ulp away
    section["loss_recon_residues"] = dict(
        difference(np.where(bulk, 0, o).sum(1), np.where(bulk, 0, p).sum(1)),
        control_rel=_control(np.where(bulk, 0, o).sum(1), np.where(bulk, 0, c).sum(1)))
    section["loss_TotLoss_without_recon"] = difference(
        orig[f"{tag}/loss_TotLoss"] - np.mean(orig[f"{tag}/loss_recon"]),
        terms["loss"] - np.mean(terms["nll"]))


def _mask_air_kls(orig, tag, stop_threshold):
    """AIR's loss takes a step's z_pres KL while the item was active before the step and the
    other KLs while it is present after it (the port's records hold them masked so)."""
    present = (orig[f"{tag}/stop_sum"] < stop_threshold).astype(np.float32)  # [T, B]
    before = np.concatenate([np.ones_like(present[:1]), present[:-1]])
    orig[f"{tag}/kl_z_pres_kl"] = orig[f"{tag}/kl_z_pres_kl"] * before
    for key in ("kl_scale_kl", "kl_shift_kl", "kl_vae_kl"):
        orig[f"{tag}/{key}"] = orig[f"{tag}/{key}"] * present


def _gradients(report, mapping, model, grads, orig, optimizer, quirks):
    """Raw gradients (beside the control: the original against itself one ulp away), the
    clipping rule (the port's on its own gradients against the original's rule, NaN/Inf -> 0
    and clip_by_norm 1.0 of each of its variables, an LSTM's whole kernel as one, applied to
    the same port gradients), and the update rule (the weights after one Adam step on the
    original's own raw gradients)."""
    import tensorflow as tf

    from asr_tf import training

    by_var = {id(v): g for v, g in zip(model.trainable_variables, grads)}
    port_raw = [np.asarray(by_var[id(v)]) for v, _, _ in mapping]
    index = {id(v): i for i, (v, _, _) in enumerate(mapping)}
    groups = [tuple(index[id(v)] for v in group) for group in model.clip_groups()]
    clipped = training.process_gradients([by_var[id(v)] for v, _, _ in mapping],
                                         quirks.per_variable_clip, groups=groups)
    by_name = {}
    for (var, name, rows), raw in zip(mapping, port_raw):
        by_name.setdefault(name, []).append((rows, raw))
    norms = {name: np.sqrt(sum(np.sum(np.where(np.isfinite(r), r, 0.0).astype(np.float64) ** 2)
                               for _, r in parts)) for name, parts in by_name.items()}
    for (var, name, rows), raw, clip in zip(mapping, port_raw, clipped):
        label = f"{name}[{rows[0]}:{rows[1]}]" if isinstance(rows, tuple) else name
        sl = (lambda a: a[rows[0]:rows[1]]) if isinstance(rows, tuple) else (lambda a: a)
        entry = difference(sl(orig[f"grad/{name}"]), raw)
        entry["control_rel"] = _grad_control(orig, f"grad/{name}")
        report["grad"][label] = entry
        rule = np.where(np.isfinite(raw), raw, 0.0) / max(norms[name], 1.0)
        report["clipped"][label] = difference(rule, np.asarray(clip))
    # The update rule alone: the port's clip and Adam step applied to the original's own raw
    # gradients, from the original's weights, against the original's step.
    orig_grads = [tf.constant(to_port(orig[f"grad/{name}"], rows if isinstance(rows, tuple)
                                      else None)) for _, name, rows in mapping]
    training.apply_update(optimizer, orig_grads, [v for v, _, _ in mapping],
                          quirks.per_variable_clip, model.clip_groups())
    for var, name, rows in mapping:
        label = f"{name}[{rows[0]}:{rows[1]}]" if isinstance(rows, tuple) else name
        report["after"][label] = difference(to_port(orig[f"after/{name}"], rows), var.numpy())
