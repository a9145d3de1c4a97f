"""Throughput benchmarks; prints one JSON line. Modes live in asr_tf.benchmarks.BENCHMARKS.

  python tools/benchmark.py --what data --dataset mnist_13
  python tools/benchmark.py --what train --config air_asr_14 --batches 50 --warmup_batches 5
  python tools/benchmark.py --what sampler
  python tools/benchmark.py --what tensorboard --config air_asr_14   # first scalar served
"""
import json
import sys

from absl import app, flags

from asr_tf import benchmarks

flags.DEFINE_string("what", "data", f"benchmark mode, one of {sorted(benchmarks.BENCHMARKS)}")
flags.DEFINE_string("dataset", "mnist_13", "dataset name (data mode)")
flags.DEFINE_integer("batch_size", 64, "batch size")
flags.DEFINE_integer("batches", 200, "measured batches")
flags.DEFINE_integer("warmup_batches", 20, "batches before measuring")
flags.DEFINE_integer("seed", 0, "seed")
flags.DEFINE_bool("fresh_scenes", False, "data mode: never-repeating scenes")
flags.DEFINE_string("config", "air_asr_14", "train mode: the config whose data and model to "
                    "time; tensorboard mode: the config to train")
flags.DEFINE_string("kinds", "air,pprior,asr", "train mode: model kinds to time")
flags.DEFINE_string("jit_modes", "0,1", "train mode: 0 = plain tf.function, 1 = XLA")
flags.DEFINE_string("export_path", None, "serving mode: a SavedModel version folder")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    options = {name: FLAGS[name].value for name in
               ("dataset", "batch_size", "batches", "warmup_batches", "seed", "fresh_scenes",
                "config", "kinds", "jit_modes", "export_path")}
    try:
        result = benchmarks.run(FLAGS.what, **options)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    app.run(main)
