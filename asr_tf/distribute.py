"""Training under ``tf.distribute``: strategies by name, sharded data, the global-batch step.

``train_eval(strategy=...)`` (gin ``train_eval.strategy``, ``tools/train.py --strategy``):

  'default'       one process, no tf.distribute: training.train_step, unchanged (and XLA).
  'mirrored'      MirroredStrategy over the local GPUs, or over ``make_strategy.logical_cpus``
                  logical CPU devices (tests), else the one CPU.
  'multi_worker'  MultiWorkerMirroredStrategy, the cluster from ``TF_CONFIG``, ring
                  all-reduce over gRPC (``make_strategy.communication``: 'ring' or 'auto').

The step is the single-process step on the global batch B (``train_eval.batch_size``),
computed by n replicas of B/n images each:

* Data. Replica i gets rows [i*B/n, (i+1)*B/n) of the batch one process would get at that
  step (``pipeline.make_dataset(num_shards=n, shard_index=i)``, random access by global
  position p = step*B + i*B/n + j). Each worker synthesises only its own replicas' scenes; no
  two replicas see the same scene in a step, and the union is the single-process batch.
* Noise. Every replica draws the *global* noise [T, B, ...] from the run's generator in
  cross-replica context (same seed and state everywhere, and no replica-id folding), the
  same draws the single-process step makes, and keeps its own rows (the rows of its data
  shard). The generator state advances as in one process, so checkpoints move freely
  between a single process and a cluster and continue the same noise stream.
* Glimpse steps. The loop runs while *any* image of the batch is active, and the penalties
  run over every executed step (Q16, Q17): both are properties of the global batch. Each
  replica runs all T steps (``model(..., all_steps=True)``), the executed steps of the global
  batch are all-reduced (T_exec = max over replicas of min(T, 1 + max count)), and every
  per-step record after them is zeroed, as the single-process loop leaves it. (An all-reduce
  in the loop condition itself is refused by tf.distribute: no collectives in control flow.)
* Per-image terms (nELBO, F1-F7, entropy, R1): each replica's loss is its per-image sum
  divided by the *global* B, so the sum over replicas of the replica losses (and of their
  gradients) is the global batch mean.
* R2 (count margin, gamma_m) is a batch-level term: CE(u_bar, p_bar) with p_bar the mean over
  the global batch of z_pres_prob [B, T]. Each replica all-reduces (SUM) its sum over images
  of z_pres_prob [T]; p_bar = sum / B is formed on every replica; R2(p_bar) is the logged
  value. Its gradient reaches the weights through a surrogate,
      gamma_m * sum_t stop_gradient(dR2/dp_bar_t) * sum_{b in replica} p[b, t] / B,
  whose gradient summed over replicas is gamma_m * sum_t dR2/dp_bar_t * dp_bar_t/dtheta,
  exactly the gradient of gamma_m * R2(p_bar) (dp_bar/dp[b] = 1/B for every image b).
* Gradients. The replica gradients are all-reduced (SUM) first; then the per-variable
  NaN/Inf -> 0 and clip_by_norm(1.0) of training.process_gradients run on the global
  gradient (identically on every replica), then Adam. Keras would all-reduce again inside
  apply_gradients in a replica context, so that reduction is turned off for our optimizer
  (``_apply_reduced_gradients``).

Hence the loss and update equal the single-process ones on the same weights, data and noise
up to float summation order (tests/test_distribute.py compares them). Under a strategy the
step is not XLA-compiled (its all-reduces sit between the forward and the backward pass), and
running all T steps costs up to T/T_exec more than the single-process loop.

Checkpoints, TensorBoard, metrics.jsonl, summary.json and evaluation are the chief's
(worker 0). Every worker saves (the MWMS protocol); the others write into a temporary
directory that is deleted at the end. A resume restores ``workdir/ckpt`` on every worker, so
``workdir`` must be readable by all of them (shared filesystem); the workers check that they
restored the same step. A stop (SIGTERM, ``max_minutes``) is agreed on by all workers
(``any_worker``) so that they stop at the same step, and the run ends with a barrier so that
no worker exits while the chief still evaluates and checkpoints.
"""
import atexit
import logging
import os
import shutil
import tempfile

import gin
import numpy as np
import tensorflow as tf

from asr_tf import objectives
from asr_tf import training
from asr_tf.data import pipeline
from asr_tf.models.base import RECORD_KEYS

STRATEGIES = ("default", "mirrored", "multi_worker")
_COMMUNICATION = {"ring": "RING", "auto": "AUTO"}


@gin.configurable
def make_strategy(name="default", logical_cpus=None, communication="ring"):
    """A tf.distribute strategy by name (None for 'default').

    Args:
      name: one of STRATEGIES.
      logical_cpus: 'mirrored' without GPUs: split the CPU into this many logical devices,
        one replica each (must run before TensorFlow initialises its devices).
      communication: 'multi_worker' all-reduce, 'ring' (gRPC, CPU) or 'auto'.
    """
    if name in (None, "default"):
        return None
    if name == "mirrored":
        gpus = tf.config.list_physical_devices("GPU")
        if logical_cpus and not gpus:
            cpu = tf.config.list_physical_devices("CPU")[0]
            try:
                tf.config.set_logical_device_configuration(
                    cpu, [tf.config.LogicalDeviceConfiguration()] * int(logical_cpus))
            except RuntimeError as err:
                raise RuntimeError("make_strategy.logical_cpus must be set before TensorFlow "
                                   f"initialises its devices: {err}") from err
        devices = None if gpus else [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        if communication not in _COMMUNICATION:
            raise ValueError(f"make_strategy.communication must be one of "
                             f"{sorted(_COMMUNICATION)}, got {communication!r}")
        if "TF_CONFIG" not in os.environ:
            logging.getLogger("asr_tf.train").warning(
                "strategy 'multi_worker' without TF_CONFIG: a cluster of this one process")
        impl = getattr(tf.distribute.experimental.CommunicationImplementation,
                       _COMMUNICATION[communication])
        return tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=tf.distribute.experimental.CommunicationOptions(
                implementation=impl))
    raise ValueError(f"strategy {name!r} is not one of {STRATEGIES}")


def _apply_reduced_gradients(optimizer):
    """Makes ``optimizer.apply_gradients`` take already all-reduced gradients as they are.

    Keras 3 (TF backend) sums the gradients over replicas inside apply_gradients when it is
    called in a replica context. Ours are summed *before* the NaN zeroing and the clipping,
    so that second reduction (which would multiply them by n) is switched off here.
    """
    if not callable(getattr(optimizer, "_all_reduce_sum_gradients", None)):
        raise RuntimeError(f"{type(optimizer).__name__} has no _all_reduce_sum_gradients: this "
                           "Keras version aggregates gradients differently; update "
                           "asr_tf/distribute.py")
    optimizer._all_reduce_sum_gradients = lambda grads_and_vars: list(grads_and_vars)


class Distributed:
    """One run's strategy: its scope, sharded data, train step and who writes what."""

    def __init__(self, strategy, global_batch):
        self.strategy = strategy
        self.num_replicas = strategy.num_replicas_in_sync
        if global_batch % self.num_replicas:
            raise ValueError(f"train_eval.batch_size={global_batch} is not divisible by the "
                             f"{self.num_replicas} replicas")
        self.global_batch = global_batch
        self.replica_batch = global_batch // self.num_replicas
        self.is_chief = bool(strategy.extended.should_checkpoint)
        resolver = getattr(strategy, "cluster_resolver", None)
        self.task = (f"{resolver.task_type}:{resolver.task_id}"
                     if resolver is not None and resolver.task_type else "local")
        self._temp_dir = None
        self._step_fn = None
        self._any_fn = None

    @classmethod
    def create(cls, strategy, global_batch):
        """None for strategy None/'default' (the plain single-process path), else a Distributed."""
        if isinstance(strategy, str) or strategy is None:
            strategy = make_strategy(strategy)
        return None if strategy is None else cls(strategy, global_batch)

    def describe(self):
        local = len(self.strategy.extended.worker_devices)
        where = "" if self.is_chief else f"; writing to the temporary folder {self._temp_dir}"
        return (f"{type(self.strategy).__name__} ({self.task}, chief={self.is_chief}): "
                f"{self.num_replicas} replicas ({local} on this worker), global batch "
                f"{self.global_batch}, per-replica batch {self.replica_batch}; train step "
                f"without XLA{where}")

    def scope(self):
        return self.strategy.scope()

    def output_dir(self, workdir):
        """Where this worker writes: ``workdir`` for the chief, a temporary folder otherwise."""
        if self.is_chief:
            return workdir
        if self._temp_dir is None:
            self._temp_dir = tempfile.mkdtemp(prefix=f"asr_tf_{self.task.replace(':', '')}_")
            atexit.register(self.cleanup)  # also if training fails
        return self._temp_dir

    def finish(self):
        """End of training: waits until every worker is done (the chief's last evaluation and
        checkpoint; a worker that exits early is reported as crashed to the others), then
        deletes a non-chief worker's temporary folder."""
        self.any_worker(False)
        self.cleanup()

    def cleanup(self):
        """Deletes a non-chief worker's temporary folder (its checkpoints, logs, summaries)."""
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    def any_worker(self, flag):
        """``flag`` or-ed over the workers (one tiny all-reduce; none with a single worker).

        A stop (SIGTERM, a time limit) must happen at the same step everywhere: a worker that
        leaves alone leaves the others waiting in their next all-reduce.
        """
        if self.num_replicas == len(self.strategy.extended.worker_devices):
            return bool(flag)  # one worker: nothing to agree on
        if self._any_fn is None:
            self._any_fn = tf.function(lambda x: self.strategy.reduce(
                tf.distribute.ReduceOp.SUM, self.strategy.run(lambda: x), axis=None))
        return bool(self._any_fn(tf.constant(float(bool(flag)))) > 0)

    def check_same_step(self, step):
        """Raises if the workers restored different checkpoints (workdir not shared?)."""
        gather = tf.function(lambda: self.strategy.gather(
            self.strategy.run(lambda: tf.constant([step], tf.int64)), axis=0))
        steps = np.unique(gather().numpy())
        if len(steps) != 1:
            raise RuntimeError(f"the workers start at different steps {steps.tolist()}: every "
                               "worker must read the chief's workdir/ckpt (a shared filesystem)")

    # ------------------------------------------------------------------ data
    def dataset(self, spec, seed, fresh_scenes, start_step):
        """Iterator over per-replica batches: replica i's rows of each single-process batch."""
        replica_batch = self.replica_batch

        def dataset_fn(context):
            local = context.num_replicas_in_sync // context.num_input_pipelines
            shards = [context.input_pipeline_id * local + r for r in range(local)]
            parts = [pipeline.make_dataset(spec, split="train", batch_size=replica_batch,
                                           seed=seed, fresh_scenes=fresh_scenes,
                                           start_step=start_step, num_shards=self.num_replicas,
                                           shard_index=i)
                     .map(lambda b, i=i: dict(b, shard=tf.constant(i, tf.int32)))
                     for i in shards]
            if len(parts) == 1:
                return parts[0]
            # Local replicas take consecutive elements in turn: replica r gets shard r.
            return tf.data.Dataset.choose_from_datasets(parts, tf.data.Dataset.range(local).repeat())

        return iter(self.strategy.distribute_datasets_from_function(dataset_fn))

    # ------------------------------------------------------------------ step
    def train_step(self, model, optimizer, generator, batch, step, weights):
        """One update on the global batch; returns the dict of scalar logs of training.train_step
        (global-batch values)."""
        if self._step_fn is None:
            _apply_reduced_gradients(optimizer)
            self._step_fn = self._make_step_fn(model, optimizer, generator, weights)
        logs = self._step_fn(batch, tf.constant(step, tf.int64))
        return {k: self.strategy.experimental_local_results(v)[0] for k, v in logs.items()}

    def _make_step_fn(self, model, optimizer, generator, weights):
        strategy, n = self.strategy, self.num_replicas
        global_batch, replica_batch = self.global_batch, self.replica_batch
        t_max = model.max_steps

        def replica_step(batch, noise, step):
            ctx = tf.distribute.get_replica_context()
            images = batch["image"]
            noise = {k: tf.reshape(v, [t_max, n, replica_batch] + v.shape[2:].as_list())[
                :, batch["shard"]] for k, v in noise.items()}  # this replica's rows
            variables = model.trainable_variables
            with tf.GradientTape() as tape:
                outputs = model(images, noise, step=step, training=True, all_steps=True)
                p_sum = tf.reduce_sum(outputs["z_pres_prob"], 0)  # [T]
                with tape.stop_recording():
                    ran = tf.cast(tf.range(t_max) < outputs["steps_executed"], tf.float32)
                    p_sum_all, ran_all = ctx.all_reduce(
                        tf.distribute.ReduceOp.SUM, [tf.stop_gradient(p_sum), ran])
                    step_mask = tf.cast(ran_all > 0, tf.float32)  # [T], the global batch's
                    margin, d_margin = _count_margin_and_grad(
                        p_sum_all / global_batch, step_mask, weights.counts)
                outputs = _mask_steps(outputs, step_mask)
                per_image, terms = objectives.per_image_loss(images, outputs, weights,
                                                             model.canvas_px, model.quirks)
                loss = tf.reduce_sum(per_image) / global_batch
                if objectives.uses_count_margin(weights):  # R2's gradient, see module doc
                    loss += weights.gamma_m * tf.reduce_sum(d_margin * p_sum) / global_batch
            grads = tape.gradient(loss, variables)  # None for unused heads (Q12)
            pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
            sums = {k: tf.reduce_sum(v) for k, v in terms.items()}
            sums["per_image"] = tf.reduce_sum(per_image)
            sums["count"] = tf.reduce_sum(tf.cast(outputs["count"], tf.float32))
            reduced_grads, sums = ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                                                 ([g for g, _ in pairs], sums))
            grads = training.process_gradients(reduced_grads, model.quirks.per_variable_clip)
            optimizer.apply_gradients(zip(grads, [v for _, v in pairs]))
            logs = {k: sums[k] / global_batch for k in terms}
            if not objectives.uses_count_margin(weights):
                margin = tf.constant(0.0)
            logs["count_margin"] = margin
            logs["loss"] = sums["per_image"] / global_batch + weights.gamma_m * margin
            logs["steps_executed"] = tf.reduce_sum(step_mask)
            logs["count_mean"] = sums["count"] / global_batch
            return logs

        @tf.function
        def step_fn(batch, step):
            with strategy.scope():  # cross-replica draws: the single-process noise, unfolded
                noise = model.sample_noise(global_batch, generator)
            return strategy.run(replica_step, args=(batch, noise, step))

        return step_fn


def _count_margin_and_grad(p_bar, step_mask, counts):
    """R2 at the global p_bar [T] and dR2/dp_bar [T]."""
    with tf.GradientTape() as tape:
        tape.watch(p_bar)
        margin = objectives.count_margin_penalty(p_bar[None], step_mask, counts)
    return margin, tape.gradient(margin, p_bar)


def _mask_steps(outputs, step_mask):
    """Zeroes the per-step records [B, T, ...] after the global batch's executed steps."""
    out = dict(outputs)
    for k in RECORD_KEYS:
        v = outputs[k]
        out[k] = v * tf.reshape(step_mask, [1, -1] + [1] * (v.shape.rank - 2))
    out["step_mask"] = step_mask
    out["steps_executed"] = tf.cast(tf.reduce_sum(step_mask), tf.int32)
    return out
