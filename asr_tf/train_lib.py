"""``train_eval``: the training loop, evaluation, checkpoints and summaries (spec §7-§9).

A run lives in one workdir::

  config.gin            every binding the run was started with (used to rebuild the model)
  operative_config.gin  the bindings actually used
  train/, eval/         TensorBoard event files
  ckpt/                 tf.train.CheckpointManager (model, optimizer, noise generator, step,
                        best-selection state)
  metrics.jsonl         one line per evaluation
  summary.json          final, best (Q28) and best-by-test metrics
  log.txt               the console log

Resume: the same command again restores the latest checkpoint and continues at its
step with the same next batch (the data pipeline is random-access by step). Summaries
and metrics lines are buffered and written right after each checkpoint, so a run
killed between checkpoints redoes those steps without logging anything twice.

Multi-worker / multi-device training (``strategy``): see asr_tf/distribute.py. Only the
chief writes the workdir and evaluates; checkpoints are interchangeable with single-process
runs.
"""
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import time

import gin
import keras
import numpy as np
import tensorflow as tf

from asr_tf import distribute
from asr_tf import metrics as metrics_lib
from asr_tf import objectives
from asr_tf import training
from asr_tf import viz
from asr_tf.data import pipeline
from asr_tf.data import scenes
from asr_tf.models import build_model
from asr_tf.quirks import Quirks

CONFIG_FILE = "config.gin"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be restored (corrupt, or from another configuration)."""


@gin.configurable
def run_spec(dataset="mnist_13", dataset_overrides=None):
    """The dataset spec of a run (``run_spec.dataset`` names one of scenes.DATASETS)."""
    return scenes.get_spec(dataset, **(dataset_overrides or {}))


def build_components(spec):
    """Model, penalty weights and quirks for a dataset, from the gin bindings in force."""
    quirks = Quirks()
    model = build_model(canvas_px=spec.canvas_px, counts=spec.counts,
                        size_range_px=spec.size_range_px, quirks=quirks)
    weights = objectives.PenaltyWeights(counts=tuple(spec.counts),
                                        size_range_px=tuple(spec.size_range_px))
    return model, weights, quirks


def _checkpoint(model, optimizer, generator, step, best_state):
    kwargs = dict(model=model, generator=generator, step=step, best_state=best_state)
    if optimizer is not None:
        kwargs["optimizer"] = optimizer
    return tf.train.Checkpoint(**kwargs)


def restore_or_fail(checkpoint, path):
    """Restores ``path`` into ``checkpoint``; a clear CheckpointError names the file otherwise.

    Nothing is deleted: a bad checkpoint stays on disk for inspection.
    """
    try:
        status = checkpoint.restore(path)
        status.assert_existing_objects_matched()
    except (tf.errors.OpError, ValueError, AssertionError, KeyError) as err:
        raise CheckpointError(
            f"cannot restore checkpoint {path!r}: it is corrupt or was written by a different "
            f"configuration ({type(err).__name__}: {str(err).splitlines()[0][:300]}). "
            "Nothing was deleted; use another --workdir, or remove or repair that file.") from err
    return status


class Evaluator:
    """Runs the test pass over the fixed test scenes and computes ACC, SE, nELBO, mIoU (spec §8)."""

    def __init__(self, model, spec, num_test=None, seed=0, batch_size=1000):
        self.model = model
        self.spec = spec
        self.seed = seed
        num_test = num_test or spec.num_test
        ds = pipeline.make_dataset(spec, split="test", batch_size=num_test, seed=seed,
                                   repeat=False, drop_remainder=False)
        test = next(iter(ds))
        self.test = {k: v[:num_test] for k, v in test.items()}
        self.num_test = int(self.test["image"].shape[0])
        self.batch_size = min(batch_size, self.num_test)

    def __call__(self, step):
        """Returns (metrics dict of floats, arrays dict for images) at training step ``step``."""
        gen = tf.random.Generator.from_seed(self.seed * 1_000_003 + int(step) + 7)
        outs, terms = [], []
        for lo in range(0, self.num_test, self.batch_size):
            images = self.test["image"][lo:lo + self.batch_size]
            noise = self.model.sample_noise(int(images.shape[0]), gen)
            o, t = training.eval_step(self.model, images, noise, tf.constant(step, tf.int64))
            outs.append({k: v.numpy() for k, v in o.items() if k not in ("step_mask", "steps_executed")})
            terms.append({k: v.numpy() for k, v in t.items()})
        out = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
        term = {k: np.concatenate([t[k] for t in terms]) for k in terms[0]}
        result = metrics_lib.evaluate_outputs(
            self.test["image"].numpy(), out["recon"], term["nelbo"], out["count"], out["scale"],
            out["shift"], self.test["boxes_px"].numpy(), self.test["box_mask"].numpy(),
            self.test["count"].numpy(), canvas_px=self.spec.canvas_px,
            tight_gt=self.model.quirks.tight_gt)
        for k in ("nll", "kl_pres", "kl_scale", "kl_shift", "kl_what"):
            result[k] = float(term[k].mean())
        result.update(_box_diagnostics(out, self.spec.canvas_px))
        result.update(_se_by_count(self.test["image"].numpy(), out["recon"],
                                   self.test["count"].numpy()))
        return result, out


def _box_diagnostics(out, canvas_px):
    """Where the present boxes are: mean side, mean |shift|, fraction fully inside the canvas,
    and ``box_side_ratio``, the mean over images with >= 2 present boxes of their largest
    side over their smallest (about 1 when every box fits one digit; about 2 when one box
    spans two digits and another is left with a scrap)."""
    present = out["present"] > 0.5  # [N, T]
    if not present.any():
        return {"box_side_px": 0.0, "box_abs_shift": 0.0, "box_inside_frac": 0.0,
                "box_side_ratio": 0.0}
    side_all = out["scale"] * canvas_px  # [N, T]
    side = side_all[present]
    shift = out["shift"][present]  # [P, 2]
    centre = (shift + 1.0) * canvas_px / 2.0
    inside = np.all((centre - side[:, None] / 2 >= -0.5) & (centre + side[:, None] / 2 <= canvas_px + 0.5), -1)
    several = present.sum(1) >= 2  # [N]
    ratio = 0.0
    if several.any():
        big = np.where(present, side_all, -np.inf).max(1)  # [N]
        small = np.where(present, side_all, np.inf).min(1)  # [N]
        ratio = float((big[several] / small[several]).mean())
    return {"box_side_px": float(side.mean()), "box_abs_shift": float(np.abs(shift).mean()),
            "box_inside_frac": float(inside.mean()), "box_side_ratio": ratio}


def _se_by_count(images, recon, true_count):
    """SE (spec §8) over the test images of each true object count: {'se_<c>obj': float}."""
    true_count = np.asarray(true_count).reshape(-1)
    return {f"se_{c}obj": metrics_lib.squared_error(images[true_count == c], recon[true_count == c])
            for c in np.unique(true_count)}


class _SummaryBuffer:
    """Summaries and metric lines held until the next checkpoint, written exactly once.

    ``flush(step)`` commits them before the checkpoint is saved, in two phases so that a kill
    at any instant leaves either all or none of them in the run folder:
      1. event files are written complete into ``.summaries_staging/`` and the new metric
         lines into a file beside them;
      2. the marker ``logged_through`` (JSON) records ``step`` and the pending commit;
      3. the staged files are moved into ``train/``, ``eval/`` and appended to
         ``metrics.jsonl`` (cut back first to its recorded length, so redoing it is
         harmless); the marker then records that nothing is pending.
    On start, a pending commit is finished and anything staged but never recorded is
    discarded. A run killed before its next checkpoint resumes from the older one and re-runs
    steps it has already logged (deterministically, the same values): everything at or before
    ``logged_through`` is dropped instead of being written twice.
    """

    _STAGING = ".summaries_staging"

    def __init__(self, workdir):
        self.workdir = workdir
        self.marker_path = os.path.join(workdir, "logged_through")
        self.metrics_path = os.path.join(workdir, "metrics.jsonl")
        self.staging = os.path.join(workdir, self._STAGING)
        marker = self._read_marker()
        self.logged_through = int(marker["logged_through"])
        if marker.get("pending"):
            self._commit(marker["pending"])
        if os.path.isdir(self.staging):
            shutil.rmtree(self.staging)  # staged but never recorded: re-run, re-logged
        self._write_marker(None)
        self.items = []
        self.lines = []

    def _read_marker(self):
        if not os.path.exists(self.marker_path):
            return {"logged_through": 0}
        text = open(self.marker_path).read().strip()
        return json.loads(text) if text.startswith("{") else {"logged_through": int(text)}

    def _write_marker(self, pending):
        with open(self.marker_path + ".tmp", "w") as f:
            json.dump({"logged_through": self.logged_through, "pending": pending}, f)
        os.replace(self.marker_path + ".tmp", self.marker_path)

    def scalar(self, writer, tag, value, step):
        if step > self.logged_through:
            self.items.append(("scalar", writer, tag, float(value), int(step)))

    def image(self, writer, tag, array, step):
        if step > self.logged_through:
            self.items.append(("image", writer, tag, array, int(step)))

    def metrics_line(self, record):
        if record["step"] > self.logged_through:
            self.lines.append(json.dumps(record))

    def flush(self, step):
        stage = os.path.join(self.staging, str(int(step)))
        for name in sorted({item[1] for item in self.items}):
            writer = tf.summary.create_file_writer(os.path.join(stage, name))
            for kind, writer_name, tag, value, item_step in self.items:
                if writer_name != name:
                    continue
                with writer.as_default(step=item_step):
                    if kind == "scalar":
                        tf.summary.scalar(tag, value)
                    else:
                        tf.summary.image(tag, value[None].astype(np.uint8))
            writer.close()
        if self.lines:
            os.makedirs(stage, exist_ok=True)
            with open(os.path.join(stage, "metrics.jsonl"), "w") as f:
                f.write("\n".join(self.lines) + "\n")
        self.items, self.lines = [], []
        self.logged_through = max(self.logged_through, int(step))
        if not os.path.isdir(stage):
            self._write_marker(None)
            return
        metrics_bytes = (os.path.getsize(self.metrics_path)
                         if os.path.exists(self.metrics_path) else 0)
        pending = {"stage": os.path.basename(stage), "metrics_bytes": metrics_bytes}
        self._write_marker(pending)  # from here on the commit is redone after a kill
        self._commit(pending)
        self._write_marker(None)

    def _commit(self, pending):
        """Moves one staged flush into place; safe to repeat after a kill part-way."""
        stage = os.path.join(self.staging, pending["stage"])
        if not os.path.isdir(stage):
            return
        for name in sorted(os.listdir(stage)):
            path = os.path.join(stage, name)
            if name == "metrics.jsonl":
                with open(path) as f:
                    staged = f.read()
                with open(self.metrics_path, "a+") as f:
                    f.truncate(pending["metrics_bytes"])  # an interrupted earlier append
                    f.write(staged)
                os.remove(path)
                continue
            os.makedirs(os.path.join(self.workdir, name), exist_ok=True)
            for event_file in os.listdir(path):
                target = os.path.join(self.workdir, name, event_file)
                while os.path.exists(target):  # another process's file of the same name
                    target += ".1"
                os.replace(os.path.join(path, event_file), target)
        shutil.rmtree(stage)


def _boxed_panels(images, recon, where, canvas_px, n=64):
    """[image with inferred boxes | reconstruction with boxes] for the first ``n`` scenes.

    Args: images, recon [N, S, S]; where: dict with ``scale`` [N, T], ``shift`` [N, T, 2],
    ``count`` [N].
    """
    boxes = metrics_lib.boxes_from_where(where["scale"][:n], where["shift"][:n], canvas_px)
    return viz.reconstruction_panels(images[:n], recon[:n], boxes, where["count"][:n])


def _eval_images(model, spec, out, test, step, generator_seed):
    """Reconstruction panels of the first 64 test scenes and a grid of 64 prior samples."""
    recon = _boxed_panels(test["image"].numpy()[..., 0], out["recon"], out, spec.canvas_px)
    gen = tf.random.Generator.from_seed(generator_seed + step)
    samples = generate_scenes(model, 64, gen, spec)
    images = np.clip(samples["images"], 0, 1)
    return {"reconstructions": recon,
            "samples": _boxed_panels(images, images, samples, spec.canvas_px)}


def generate_scenes(model, num, generator, spec):
    """Prior samples as numpy: pPrior/ASR from the prior LSTM; AIR with a training count each."""
    noise = model.generation_noise(num, generator)
    if hasattr(model, "fix_steps"):
        out = model.generate(noise)
    else:  # AIR draws exactly n objects for each training count n: split the batch
        counts = list(spec.counts)
        parts = []
        for i, c in enumerate(counts):
            sl = {k: v[:, i::len(counts)] for k, v in noise.items()}
            parts.append(model.generate(sl, c))
        out = {k: tf.concat([p[k] for p in parts], 0) for k in parts[0]}
    return {k: v.numpy() for k, v in out.items()}


@gin.configurable(denylist=["workdir"])
def train_eval(workdir, num_steps=None, num_epochs=300, batch_size=64, eval_every=200,
               log_every=20, checkpoint_every=1000, keep_checkpoints=3, image_every=2000,
               num_test=None, seed=0, jit_compile=True, fresh_scenes=False, max_steps=None,
               progress=True, strategy=None, max_minutes=None):
    """Trains and evaluates one run; resumes from ``workdir`` if it holds a checkpoint.

    Args:
      workdir: run folder (created).
      num_steps: total iterations; None -> floor(num_epochs * N_train / batch_size) (Q41).
      eval_every: iterations between test evaluations (200, spec §8).
      log_every: iterations averaged per training-summary point (20).
      checkpoint_every: iterations between checkpoints (summaries are written then).
      image_every: iterations between image summaries (reconstructions, prior samples).
      num_test: test scenes (None: the dataset's num_test, 1000; Q7).
      seed: data order, initial weights and noise.
      jit_compile: XLA-compile the train step (same numbers, faster).
      fresh_scenes: unlimited new training scenes instead of the fixed training set.
      max_steps: stop this invocation at this step (cuts a run short; resumable).
      max_minutes: stop this invocation after this much wall time (evaluates and checkpoints
        at the step where it stops; resumable).
      strategy: None or 'default' (this process alone), 'mirrored', 'multi_worker' (TF_CONFIG)
        or a tf.distribute.Strategy: ``batch_size`` is the global batch, split over the
        replicas, and the step is the single-process one (asr_tf/distribute.py). Non-chief
        workers write into a temporary folder and do not evaluate.
    Returns:
      the summary dict written to summary.json.
    """
    os.makedirs(workdir, exist_ok=True)
    dist = distribute.Distributed.create(strategy, batch_size)  # None: no tf.distribute
    out = dist.output_dir(workdir) if dist else workdir  # what this worker writes
    log = _file_logger(out)
    keras.utils.set_random_seed(seed)  # initial weights
    spec = run_spec()
    with dist.scope() if dist else contextlib.nullcontext():
        model, weights, quirks = build_components(spec)
        optimizer = training.make_optimizer(model)
        generator = tf.random.Generator.from_seed(seed + 1)
    objectives.warn_if_count_min_dropped(weights, quirks)
    step_var = tf.Variable(0, dtype=tf.int64, name="step")
    best = metrics_lib.BestTracker()
    best_var = tf.Variable(json.dumps(best.state()), dtype=tf.string, name="best_state")
    ckpt = _checkpoint(model, optimizer, generator, step_var, best_var)
    manager = tf.train.CheckpointManager(ckpt, os.path.join(workdir, "ckpt"),
                                         max_to_keep=keep_checkpoints)
    if manager.latest_checkpoint:
        restore_or_fail(ckpt, manager.latest_checkpoint)
        best = metrics_lib.BestTracker.from_state(json.loads(best_var.numpy().decode()))
        log.info("restored %s at step %d", manager.latest_checkpoint, int(step_var.numpy()))
    if out != workdir:  # a non-chief worker saves too (collectively), into its temporary folder
        manager = tf.train.CheckpointManager(ckpt, os.path.join(out, "ckpt"),
                                             max_to_keep=keep_checkpoints)
    _write_config(out)

    total = num_steps or pipeline.iterations_for_epochs(spec, num_epochs, batch_size)
    stop_at = min(total, max_steps) if max_steps else total
    start = int(step_var.numpy())
    log.info("run %s: %s, %d/%d steps, batch %d, %s", os.path.basename(workdir), spec.name, start,
             total, batch_size, type(model).__name__)
    evaluator = Evaluator(model, spec, num_test, seed)
    buf = _SummaryBuffer(out)
    if dist:
        log.info("%s", dist.describe())
        dist.check_same_step(start)
        data = dist.dataset(spec, seed, fresh_scenes, start)
    else:
        data = iter(pipeline.make_dataset(spec, split="train", batch_size=batch_size, seed=seed,
                                          fresh_scenes=fresh_scenes, start_step=start))
    window, t_window, last_eval = [], time.time(), None
    bar = _progress(start, stop_at, progress)
    step, t_start = start, time.time()
    stop_requested = _stop_on_sigterm()
    while step < stop_at:
        batch = next(data)
        training.set_learning_rate(optimizer, step)  # the configured schedule, also on resume
        if dist:
            logs = dist.train_step(model, optimizer, generator, batch, step, weights)
        else:
            logs = training.train_step(model, optimizer, generator, batch,
                                       tf.constant(step, tf.int64), weights, jit_compile)
        step += 1
        step_var.assign(step)
        stop = stop_requested() or (max_minutes and time.time() - t_start > 60.0 * max_minutes)
        if dist:
            stop = dist.any_worker(stop)  # all workers stop at the same step
        if stop:
            stop_at = step  # evaluate, checkpoint and leave below
        window.append({k: float(v) for k, v in logs.items()})
        best.observe_train_loss(step, window[-1]["loss"])
        if step % log_every == 0:
            mean = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
            dt = time.time() - t_window
            for k, v in mean.items():
                buf.scalar("train", k, v, step)
            buf.scalar("train", "learning_rate", float(optimizer.learning_rate.numpy()), step)
            buf.scalar("train", "steps_per_sec", len(window) / dt, step)
            buf.scalar("train", "images_per_sec", len(window) * batch_size / dt, step)
            window, t_window = [], time.time()
            bar.set_postfix(loss=f"{mean['loss']:.1f}", acc=last_eval and f"{last_eval['acc']:.3f}")
        if (step % eval_every == 0 or step == stop_at) and (not dist or dist.is_chief):
            result, outputs = evaluator(step)
            best.observe_eval(step, result)
            last_eval = result
            for k, v in result.items():
                buf.scalar("eval", k, v, step)
            buf.metrics_line(dict(step=step, wall_time=time.time(), **result))
            if step % image_every == 0 or step == stop_at:
                for tag, img in _eval_images(model, spec, outputs, evaluator.test, step,
                                             seed).items():
                    buf.image("eval", tag, img, step)
            log.info("step %d: %s", step, " ".join(f"{k}={v:.4g}" for k, v in result.items()))
        if step % checkpoint_every == 0 or step == stop_at:
            buf.flush(step)  # first: a kill before the save re-runs these steps unlogged
            best_var.assign(json.dumps(best.state()))
            manager.save(checkpoint_number=step)
        bar.update(1)
    bar.close()
    _write_operative_config(out)
    summary = dict(step=step, total_steps=total, **best.summary())
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    if dist:
        dist.finish()
    return summary


def _stop_on_sigterm():
    """After SIGTERM the loop finishes its step, evaluates, checkpoints and returns (a plain
    ``kill`` keeps every step done so far). Returns a function: was a stop requested?"""
    flag = []
    try:
        signal.signal(signal.SIGTERM, lambda signum, frame: flag.append(signum))
    except ValueError:  # not the main thread: no handler, kill -9 semantics
        pass
    return lambda: bool(flag)


def _progress(start, stop, enabled):
    from tqdm import tqdm

    return tqdm(total=stop, initial=start, disable=not enabled, unit="step", dynamic_ncols=True)


def _file_logger(workdir):
    log = logging.getLogger("asr_tf.train")
    log.setLevel(logging.INFO)
    path = os.path.join(workdir, "log.txt")
    if not any(getattr(h, "baseFilename", None) == os.path.abspath(path) for h in log.handlers):
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
    return log


def _write_config(workdir):
    path = os.path.join(workdir, CONFIG_FILE)
    text = gin.config_str()
    if os.path.exists(path) and open(path).read() != text:
        logging.getLogger("asr_tf.train").warning(
            "%s differs from the bindings of this invocation; keeping the original, writing %s",
            path, path + ".latest")
        path += ".latest"
    with open(path, "w") as f:
        f.write(text)


def _write_operative_config(workdir):
    with open(os.path.join(workdir, "operative_config.gin"), "w") as f:
        f.write(gin.operative_config_str())


def load_trained(workdir, checkpoint=None):
    """Rebuilds a run's model from ``workdir/config.gin`` and restores its latest (or the given)
    checkpoint. Returns (model, spec). Raises CheckpointError / FileNotFoundError clearly."""
    config = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(config):
        raise FileNotFoundError(f"{config} not found: {workdir!r} is not a training workdir")
    gin.clear_config()
    gin.parse_config_file(config)
    spec = run_spec()
    model, _, _ = build_components(spec)
    path = checkpoint or tf.train.latest_checkpoint(os.path.join(workdir, "ckpt"))
    if not path:
        raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, 'ckpt')}")
    # With the optimizer too: checkpoints written before the LSTM kernels and the VAE's hidden
    # layers became attributes reach those weights only through the optimizer's variables.
    ckpt = tf.train.Checkpoint(model=model, optimizer=training.make_optimizer(model))
    try:
        ckpt.restore(path).expect_partial().assert_existing_objects_matched()
    except (tf.errors.OpError, ValueError, AssertionError) as err:
        raise CheckpointError(f"cannot restore checkpoint {path!r}: {str(err).splitlines()[0][:300]}") from err
    return model, spec



def evaluate_workdir(workdir, checkpoint=None, num_test=None, seed=0, deterministic=False):
    """The four metrics (and diagnostics) of a trained run on its test scenes, as a dict."""
    model, spec = load_trained(workdir, checkpoint)
    if deterministic:
        model.quirks = dataclasses.replace(model.quirks, deterministic_eval=True)
    result, _ = Evaluator(model, spec, num_test, seed)(_restored_step(workdir, checkpoint))
    return result


def write_figure(workdir, out_path, reconstruct=False, num=64, seed=0, checkpoint=None):
    """Writes a PNG grid of prior samples, or of test reconstructions with inferred boxes."""
    model, spec = load_trained(workdir, checkpoint)
    step = _restored_step(workdir, checkpoint)
    if reconstruct:
        evaluator = Evaluator(model, spec, num_test=num, seed=seed)
        _, out = evaluator(step)
        grid = _boxed_panels(evaluator.test["image"].numpy()[..., 0], out["recon"], out,
                             spec.canvas_px, n=num)
    else:
        samples = generate_scenes(model, num, tf.random.Generator.from_seed(seed), spec)
        images = np.clip(samples["images"], 0.0, 1.0)
        grid = viz.image_grid(images)
    return viz.save_png(grid, out_path)


def _restored_step(workdir, checkpoint=None):
    path = checkpoint or tf.train.latest_checkpoint(os.path.join(workdir, "ckpt"))
    try:
        return int(path.rsplit("-", 1)[1])
    except (AttributeError, IndexError, ValueError):
        return 0
