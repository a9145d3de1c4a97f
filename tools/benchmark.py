"""Throughput benchmarks; prints one JSON line. Modes live in asr_tf.lab.benchmarks.BENCHMARKS.

  python tools/benchmark.py --what data --dataset mnist_13
  python tools/benchmark.py --what data --data DIR   # a folder (or tfds:NAME), streamed and cached
  python tools/benchmark.py --what train --config air_asr_14 --batches 50 --warmup_batches 5
  python tools/benchmark.py --what sampler
  python tools/benchmark.py --what tensorboard --config air_asr_14   # first scalar served
  python tools/benchmark.py --what serving --export_path models/air_asr_14/1 --dataset mnist_14
  # side by side with another checkout (two step processes, alternating blocks of 10 steps):
  python tools/benchmark.py --what train --kinds asr --jit_modes 1 --compare_with ../base417 \
      --batches 100 --warmup_batches 10
  # this tree with and without a binding, side by side:
  python tools/benchmark.py --what train --kinds asr --jit_modes 0,1 \
      --with_binding "xla_cpu_codegen.vector_width = 256"
"""
import json
import sys

from absl import app, flags

from asr_tf.lab import benchmarks, step_compare

flags.DEFINE_string("what", "data", f"benchmark mode, one of {sorted(benchmarks.BENCHMARKS)}; "
                    "serve_steps is one side of --compare_with")
flags.DEFINE_string("dataset", "mnist_13", "dataset name (data mode; serving mode: its test "
                    "scenes are the requests, give the model's own, e.g. mnist_14)")
flags.DEFINE_integer("batch_size", 64, "batch size")
flags.DEFINE_integer("batches", 200, "measured batches")
flags.DEFINE_integer("warmup_batches", 20, "batches before measuring")
flags.DEFINE_integer("seed", 0, "seed")
flags.DEFINE_bool("fresh_scenes", False, "data mode: never-repeating scenes")
flags.DEFINE_string("data", None, "data mode: a data set from files (a folder or tfds:NAME), on "
                    "the canvas of --dataset: its scan, its decoding once, its rate streamed "
                    "from the files and from memory")
flags.DEFINE_string("config", "air_asr_14", "train mode: the config whose data and model to "
                    "time; tensorboard mode: the config to train")
flags.DEFINE_string("kinds", "air,pprior,asr", "train mode: model kinds to time")
flags.DEFINE_string("jit_modes", "0,1", "train mode: 0 = plain tf.function, 1 = XLA")
flags.DEFINE_string("export_path", None, "serving mode: a SavedModel version folder")
flags.DEFINE_integer("clients", 8, "serving mode: concurrent gRPC clients")
flags.DEFINE_integer("requests_per_client", 100, "serving mode: requests per client and load")
flags.DEFINE_string("serving_batch_sizes", "1,16", "serving mode: images per request")
flags.DEFINE_integer("load_rounds", 2, "serving mode: loads per batch size (memory steady?)")
flags.DEFINE_string("compare_with", None, "train mode: another checkout (e.g. a git worktree "
                    "of the baseline commit) whose training step runs beside this one's, in "
                    "alternating blocks")
flags.DEFINE_multi_string("with_binding", [], "train mode, side by side: a gin binding for "
                          "this tree's step only (e.g. \"xla_cpu_codegen.vector_width = "
                          "256\"); the baseline is --compare_with or this tree without it")
flags.DEFINE_integer("threads", None, "train mode, side by side (and serve_steps): TensorFlow "
                     "threads of the steps and of the matmul yardstick (default: all cores; 1 as "
                     "the Tables runs train)")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    options = {name: FLAGS[name].value for name in
               ("dataset", "data", "batch_size", "batches", "warmup_batches", "seed",
                "fresh_scenes", "config", "kinds", "jit_modes", "export_path", "clients",
                "requests_per_client", "serving_batch_sizes", "load_rounds")}
    try:
        if FLAGS.what == "serve_steps":  # one side of --compare_with (asr_tf/lab/step_compare.py)
            if FLAGS.threads:
                import tensorflow as tf

                tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
                tf.config.threading.set_inter_op_parallelism_threads(FLAGS.threads)
            step_compare.serve_steps(with_bindings=FLAGS.with_binding, **options)
            return 0
        if FLAGS.compare_with or FLAGS.with_binding:
            if FLAGS.what != "train":
                raise ValueError("--compare_with / --with_binding compare training steps: use "
                                 "them with --what train")
            result = step_compare.compare_steps(FLAGS.compare_with,
                                                with_bindings=FLAGS.with_binding,
                                                threads=FLAGS.threads, **options)
        else:
            result = benchmarks.run(FLAGS.what, **options)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    app.run(main)
