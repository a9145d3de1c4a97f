"""Trains one run: python tools/train.py --config configs/air_asr_14.gin [--workdir W].

Overlays follow the run's config: ``--config air_asr_13 --config faithful`` (the original
code's behaviour), ``--config size``, ``--config decay``, ``--config floor20k`` (WORKSPACE.md).
The run lives in --workdir, by default runs/<configs joined by '+'> (runs/air_asr_14,
runs/air_asr_13+faithful): running the same command again resumes it from its latest
checkpoint. Several processes or devices: --strategy mirrored|multi_worker (docs/DISTRIBUTED.md).
Your own images: --data DIR (a folder with train/ and test/) or --data tfds:NAME[/CONFIG]
(docs/OWN_DATA.md); the run's config still gives the model, the constraints and the canvas.
"""
from absl import app, flags

from asr_tf.data import files
from asr_tf.run import config

flags.DEFINE_multi_string("config", [], "Config name or .gin path; repeatable: a run's config, "
                          "then overlays. The configs: " + ", ".join(config.available_configs())
                          + "; the overlays: " + ", ".join(config.OVERLAYS))
flags.DEFINE_multi_string("gin_param", [], "Extra gin binding, e.g. 'train_eval.eval_every=500'.")
flags.DEFINE_string("workdir", None, "Run folder (default runs/<configs joined by '+'>, relative "
                    "to the current folder; the same command resumes it).")
flags.DEFINE_integer("seed", None, "The run's seed (train_eval.seed): initial weights, noise "
                     "and the order of the training scenes; the scenes and the test set are the "
                     "data set's (run_spec.data_seed).")
flags.DEFINE_string("data", None, "The run's images instead of its config's synthetic data set "
                    "(run_spec.data): a folder holding train/ and test/ (PNG or JPEG, optional "
                    "annotations.json in COCO form) or tfds:NAME[/CONFIG]; docs/OWN_DATA.md.")
flags.DEFINE_integer("max_steps", None, "Stop at this step (the run stays resumable).")
flags.DEFINE_float("max_minutes", None, "Stop after this much wall time: evaluate, checkpoint, "
                   "exit (the run stays resumable).")
flags.DEFINE_integer("threads", None, "TensorFlow intra-op threads (default: all cores).")
flags.DEFINE_enum("strategy", None, ["default", "mirrored", "multi_worker"],
                  "tf.distribute strategy (default: the binding train_eval.strategy, else none). "
                  "multi_worker reads the cluster from TF_CONFIG and needs --workdir.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import tensorflow as tf

    from asr_tf.run import loop, workdir as workdir_lib

    if FLAGS.threads:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.threads)

    if not FLAGS.config:
        raise app.UsageError(f"--config is required; one of {', '.join(config.available_configs())}")
    # Flags that define the run become bindings, so that the workdir's config.gin records them.
    bindings = list(FLAGS.gin_param)
    if FLAGS.seed is not None:
        bindings.append(f"train_eval.seed = {FLAGS.seed}")
    if FLAGS.strategy is not None:
        bindings.append(f"train_eval.strategy = '{FLAGS.strategy}'")
    if FLAGS.data is not None:  # recorded as an absolute path: tools find it from any folder
        bindings.append(f"run_spec.data = {files.resolve(FLAGS.data)!r}")
    try:
        config_files = config.parse(FLAGS.config, bindings)
    except ValueError as err:
        raise app.UsageError(str(err))
    if FLAGS.strategy == "multi_worker" and not FLAGS.workdir:
        raise app.UsageError("--strategy multi_worker needs --workdir (the same on every worker)")
    workdir = FLAGS.workdir or config.default_workdir(config_files)
    kwargs = {}
    if FLAGS.max_steps is not None:  # this invocation only: not part of the run
        kwargs["max_steps"] = FLAGS.max_steps
    if FLAGS.max_minutes is not None:
        kwargs["max_minutes"] = FLAGS.max_minutes
    print(f"workdir: {workdir}")
    try:
        summary = loop.train_eval(workdir, **kwargs)
    except (workdir_lib.RecordMismatchError, workdir_lib.CheckpointError,
            workdir_lib.WorkdirBusyError, files.DataError) as err:
        raise app.UsageError(str(err))
    print(loop.summary_line(workdir, summary))


if __name__ == "__main__":
    app.run(main)
