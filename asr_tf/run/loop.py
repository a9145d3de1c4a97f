"""``train_eval``: the training loop (docs/ORIGINAL.md §7–9).

A run lives in one workdir (its layout: asr_tf/run/workdir.py). Resume: the same command again
restores the latest checkpoint and continues at its step with the same next batch (the data
pipeline is random-access by step).

One process or many (``strategy``, asr_tf/run/distribute.py): the same loop and the same step
(training.train_step); only the chief writes the workdir and evaluates, and checkpoints are
interchangeable between the two.
"""
import json
import logging
import os
import signal
import time

import gin
import keras
import numpy as np
import tensorflow as tf

from asr_tf import counts
from asr_tf import metrics as metrics_lib
from asr_tf import models
from asr_tf import objectives
from asr_tf import training
from asr_tf.data import files, pipeline
from asr_tf.run import distribute
from asr_tf.run import evaluation
from asr_tf.run import summaries
from asr_tf.run import workdir as workdir_lib
from asr_tf.run import xla_cpu


@gin.configurable(denylist=["workdir"])
def train_eval(workdir, num_steps=None, num_epochs=300, batch_size=64, eval_every=200,
               log_every=20, checkpoint_every=1000, keep_checkpoints=3, image_every=2000,
               num_test=None, seed=0, jit_compile=True, fresh_scenes=False, max_steps=None,
               progress=True, strategy=None, max_minutes=None):
    """Trains and evaluates one run; resumes from ``workdir`` if it holds a checkpoint.

    Args:
      workdir: run folder (created).
      num_steps: total iterations; None -> floor(num_epochs * N_train / batch_size) (Q41).
      eval_every: iterations between test evaluations (200, docs/ORIGINAL.md §8).
      log_every: iterations averaged per training-summary point (20); TensorBoard shows each
        point when it is logged.
      checkpoint_every: iterations between checkpoints (a run killed in between resumes from
        the last one).
      image_every: iterations between image summaries (reconstructions, prior samples).
      num_test: test scenes (None: the data set's num_test, 1000; Q7).
      seed: the run's seed: initial weights, noise and the order of the training scenes. The
        scenes and the train/test split are the data set's (``run_spec.data_seed``).
      jit_compile: XLA-compile the train step (one process; same numbers, faster).
      fresh_scenes: unlimited new training scenes instead of the fixed training set.
      max_steps: stop this invocation at this iteration (cuts a run short; resumable).
      max_minutes: stop this invocation after this much wall time (evaluates and checkpoints
        at the step where it stops; resumable).
      strategy: None or 'default' (this process alone), 'mirrored', 'multi_worker' (TF_CONFIG)
        or a tf.distribute.Strategy: ``batch_size`` is the global batch, split over the
        replicas. Non-chief workers write into a temporary folder and do not evaluate.
    Returns:
      the summary dict written to summary.json: ``final`` (the configured evaluation at the
      last step), ``best`` (Q28), ``best_by_test``, and ``at_end``, the last step's paper
      evaluation (one stochastic pass, Q25-Q27) and deterministic one side by side.
    """
    xla_cpu.xla_cpu_codegen()  # before the first XLA compilation of this process
    os.makedirs(workdir, exist_ok=True)
    dist = distribute.Distributed(strategy, batch_size)
    out = dist.output_dir(workdir)  # what this worker writes
    workdir_lib.lock(out)  # one trainer per workdir
    # Everything that can refuse the run does so before the record is written: other seeds or
    # data than the workdir's, bad data (each file checked), data the model cannot take.
    data, data_seed = workdir_lib.bound_data()
    workdir_lib.check_record(out, seed, data_seed, data)
    spec = workdir_lib.run_spec()
    if spec.data is not None and fresh_scenes:
        raise files.DataError(f"train_eval.fresh_scenes: {spec.data} is a fixed set of images")
    in_memory = pipeline.prepare(spec)
    keras.utils.set_random_seed(seed)  # initial weights
    with dist.scope():
        model = models.model_for(spec)
        objective = objectives.objective_for(spec)
        optimizer = training.make_optimizer(model)
        generator = tf.random.Generator.from_seed(seed + 1)
    workdir_lib.write_record(out, seed, spec.data_seed, spec.data,
                             start_step=workdir_lib.restored_step(workdir))
    log = _file_logger(out)
    dist.prepare(optimizer)
    objectives.warn_if_count_min_dropped(objective, model.quirks)
    step_var = tf.Variable(0, dtype=tf.int64, name="step")
    best = metrics_lib.BestTracker()
    best_var = tf.Variable(json.dumps(best.state()), dtype=tf.string, name="best_state")
    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, generator=generator,
                               step=step_var, best_state=best_var)
    manager = workdir_lib.checkpoint_manager(ckpt, workdir, keep_checkpoints)
    if manager.latest_checkpoint:
        workdir_lib.restore_or_fail(ckpt, manager.latest_checkpoint)
        best = metrics_lib.BestTracker.from_state(json.loads(best_var.numpy().decode()))
        log.info("restored %s at step %d", manager.latest_checkpoint, int(step_var.numpy()))
    if out != workdir:  # a non-chief worker saves too (collectively), into its temporary folder
        manager = workdir_lib.checkpoint_manager(ckpt, out, keep_checkpoints)
    start = int(step_var.numpy())

    total = num_steps or pipeline.iterations_for_epochs(spec, num_epochs, batch_size)
    stop_at = min(total, max_steps) if max_steps else total
    log.info("run %s: %s, %d/%d steps, batch %d, %s", os.path.basename(workdir), spec.name, start,
             total, batch_size, type(model).__name__)
    if spec.data is not None:
        log.info("data %s: %d train / %d test images on the %d px canvas, %s, %s", spec.data,
                 spec.num_train, spec.num_test, spec.canvas_px,
                 "with boxes" if spec.has_boxes else "without boxes",
                 "in memory" if in_memory else "streamed from the files")
    log.info("%s", dist.describe())
    log.info("XLA_FLAGS: %s", os.environ.get("XLA_FLAGS") or "(none)")
    evaluator = evaluation.Evaluator(model, spec, num_test, seed)
    run_log = summaries.RunLog(out, resumed_at=start)  # cuts what was logged after ``start``
    dist.check_same_step(start)
    data = dist.dataset(spec, seed, fresh_scenes, start)
    jit = bool(jit_compile) and dist.jit_allowed
    window, t_window, last_eval = [], time.time(), None
    bar = _progress(start, stop_at, progress)
    step, t_start = start, time.time()
    stop_requested = _stop_on_sigterm()
    try:
        while step < stop_at:
            batch = next(data)
            logs = dist.local(training.train_step(model, optimizer, generator, batch,
                                                  tf.constant(step, tf.int64), objective,
                                                  dist.strategy, batch_size, jit))
            step += 1
            step_var.assign(step)
            stop = stop_requested() or (max_minutes
                                        and time.time() - t_start > 60.0 * max_minutes)
            if dist.any_worker(stop):  # all workers stop at the same step
                stop_at = step  # evaluate, checkpoint and leave below
            window.append({k: float(v) for k, v in logs.items()})
            best.observe_train_loss(step, window[-1]["loss"])
            if step % log_every == 0:
                mean = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
                dt = time.time() - t_window
                for k, v in mean.items():
                    run_log.scalar("train", k, v, step)
                rate = training.update_rate(optimizer, step)  # of this step's update
                run_log.scalar("train", "learning_rate", rate, step)
                run_log.scalar("train", "steps_per_sec", len(window) / dt, step)
                run_log.scalar("train", "images_per_sec", len(window) * batch_size / dt, step)
                window, t_window = [], time.time()
                bar.set_postfix(loss=f"{mean['loss']:.1f}",
                                acc=last_eval and f"{last_eval['acc']:.3f}")
            if (step % eval_every == 0 or step == stop_at) and dist.is_chief:
                result, outputs = evaluator(step)
                best.observe_eval(step, result)
                last_eval = result
                for k, v in result.items():
                    run_log.scalar("eval", k, v, step)
                run_log.metrics_line(dict(step=step, wall_time=time.time(), **result))
                if step % image_every == 0 or step == stop_at:
                    for tag, img in evaluation.eval_images(model, spec, outputs, evaluator.test,
                                                           step, seed).items():
                        run_log.image("eval", tag, img, step)
                log.info("step %d: %s", step, " ".join(  # the count histogram: TensorBoard only
                    f"{k}={v:.4g}" for k, v in result.items()
                    if not k.startswith(counts.COUNT_SCALAR_PREFIXES)))
            run_log.flush()  # live in TensorBoard; before the checkpoint of this step
            if step % checkpoint_every == 0 or step == stop_at:
                best_var.assign(json.dumps(best.state()))
                manager.save(checkpoint_number=step)
            bar.update(1)
    finally:  # after an exception too: nothing queued is written after the next start's cut
        run_log.close()
    bar.close()
    workdir_lib.write_operative_config(out)
    summary = dict(step=step, total_steps=total, **best.summary())
    if not spec.has_boxes:
        summary["box_metrics"] = evaluation.no_box_metrics(spec)
    if dist.is_chief and step > start:
        summary["at_end"] = evaluation.both_passes(evaluator, step)
    workdir_lib.write_summary(out, summary)
    dist.finish()
    workdir_lib.unlock(out)
    return summary


def summary_line(workdir, summary):
    """One line for the console at the end of an invocation (summary.json keeps the rest)."""
    def metrics(result):
        return " ".join(f"{name} {result[key]:.3g}" for key, name in (
            ("acc", "ACC"), ("se", "SE"), ("miou", "mIoU"), ("nelbo", "nELBO")) if key in result)

    end = summary.get("at_end")
    text = (f"{workdir}: step {summary['step']:,}/{summary['total_steps']:,}; "
            + (f"{metrics(end['stochastic'])} (one stochastic pass), "
               f"{metrics(end['deterministic'])} (deterministic)" if end
               else metrics(summary.get("final") or {})))
    if "box_metrics" in summary:
        text += f"; box metrics {summary['box_metrics']}"
    return text + f"; {os.path.join(workdir, workdir_lib.SUMMARY_FILE)}"


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
    path = os.path.join(workdir, workdir_lib.LOG_FILE)
    if not any(getattr(h, "baseFilename", None) == os.path.abspath(path) for h in log.handlers):
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
    return log
