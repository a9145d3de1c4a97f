"""Strategies by name, sharded data, and who writes what: the run's tf.distribute side.

``train_eval(strategy=...)`` (gin ``train_eval.strategy``, ``tools/train.py --strategy``):

  'default'       this process alone: ``tf.distribute.get_strategy()``, the default strategy
                  object (the train step is the same function; XLA-compiled).
  'mirrored'      MirroredStrategy over the local GPUs, or over ``make_strategy.logical_cpus``
                  logical CPU devices (tests), else the one CPU.
  'multi_worker'  MultiWorkerMirroredStrategy, the cluster from ``TF_CONFIG``, ring
                  all-reduce over gRPC (``make_strategy.communication``: 'ring' or 'auto').

The step itself (one for every strategy) is training.train_step. Here:

* Data. Replica i gets rows [i*B/n, (i+1)*B/n) of the batch one process would get at that
  step (``pipeline.make_dataset(num_shards=n, shard_index=i)``, random access by global
  position p = step*B + i*B/n + j), tagged with ``shard`` = i. Each worker synthesises only
  its own replicas' scenes; no two replicas see the same scene in a step, and the union is
  the single-process batch.
* Checkpoints, TensorBoard, metrics.jsonl, summary.json and evaluation are the chief's
  (worker 0). Every worker saves (the MWMS protocol); the others write into a temporary
  directory that is deleted at the end. A resume restores ``workdir/ckpt`` on every worker, so
  ``workdir`` must be readable by all of them (shared filesystem); the workers check that they
  restored the same step. A stop (SIGTERM, ``max_minutes``) is agreed on by all workers
  (``any_worker``) so that they stop at the same step, and the run ends with a barrier so that
  no worker exits while the chief still evaluates and checkpoints.

Under a strategy with several replicas the step is not XLA-compiled (its all-reduces sit
between the forward and the backward pass), and running all T glimpse steps costs up to
T/T_exec more than the single-process loop. Checkpoints move freely between a single process
and a cluster (the generator state advances as in one process).
"""
import atexit
import logging
import os
import shutil
import tempfile

import gin
import numpy as np
import tensorflow as tf

from asr_tf.data import pipeline

STRATEGIES = ("default", "mirrored", "multi_worker")
_COMMUNICATION = {"ring": "RING", "auto": "AUTO"}


@gin.configurable
def make_strategy(name="default", logical_cpus=None, communication="ring"):
    """A tf.distribute strategy by name; 'default' (or None) is this process alone, the default
    strategy object.

    Args:
      name: one of STRATEGIES.
      logical_cpus: 'mirrored' without GPUs: split the CPU into this many logical devices,
        one replica each (must run before TensorFlow initialises its devices).
      communication: 'multi_worker' all-reduce, 'ring' (gRPC, CPU) or 'auto'.
    """
    if name in (None, "default"):
        return tf.distribute.get_strategy()
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
                           "asr_tf/run/distribute.py")
    optimizer._all_reduce_sum_gradients = lambda grads_and_vars: list(grads_and_vars)


def is_single_process(strategy):
    """Whether ``strategy`` is this process alone (the default strategy): XLA applies."""
    return not tf.distribute.has_strategy() and strategy is tf.distribute.get_strategy()


class Distributed:
    """One run's strategy: its scope, sharded data, and who writes and evaluates."""

    def __init__(self, strategy, global_batch):
        if strategy is None or isinstance(strategy, str):
            strategy = make_strategy(strategy)
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
        self._any_fn = None
        self.jit_allowed = is_single_process(strategy)
        # Replicas on this worker (the default strategy has no worker_devices: one).
        self.local_replicas = (1 if self.jit_allowed
                               else len(strategy.extended.worker_devices))

    def describe(self):
        local = self.local_replicas
        where = "" if self.is_chief else f"; writing to the temporary folder {self._temp_dir}"
        return (f"{type(self.strategy).__name__} ({self.task}, chief={self.is_chief}): "
                f"{self.num_replicas} replicas ({local} on this worker), global batch "
                f"{self.global_batch}, per-replica batch {self.replica_batch}; train step "
                f"{'XLA-compiled if jit_compile' if self.jit_allowed else 'without XLA'}{where}")

    def local(self, logs):
        """A dict of strategy.run results -> the first local replica's values."""
        return {k: self.strategy.experimental_local_results(v)[0] for k, v in logs.items()}

    def prepare(self, optimizer):
        """Makes ``optimizer.apply_gradients`` take the step's already all-reduced gradients."""
        _apply_reduced_gradients(optimizer)

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
        if self.num_replicas == self.local_replicas:
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
