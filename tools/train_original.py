"""Runs the original code's own training and logs its test passes as JSON lines
(asr_tf/lab/original_run.py), to set beside the port's runs.

  python tools/train_original.py --original DIR --out docs/results/original/orig_lr1e-4_s0.jsonl \
      --lr 1e-4 --seed 0 --max_steps 3000 [--threads 1] [--model asr13|pprior13|air13]

DIR is a prepared copy of the original with its data set written (docs/ORIGINAL.md §12).
--seed is the original's TensorFlow graph seed (its code: 1235).
"""
from absl import app, flags

flags.DEFINE_string("original", None, "A prepared copy of the original code.", required=True)
flags.DEFINE_string("out", None, "The JSON-lines file to write.", required=True)
flags.DEFINE_float("lr", 1e-4, "Its Adam rate (its code: 1e-4, the paper: 1e-3).")
flags.DEFINE_integer("seed", 1235, "Its TensorFlow graph seed.")
flags.DEFINE_integer("max_steps", 3000, "Training steps.")
flags.DEFINE_integer("threads", 1, "Its session's threads.")
flags.DEFINE_enum("model", "asr13", ["asr13", "pprior13", "air13"], "Which run of the original.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from asr_tf.lab import original_run

    try:
        code = original_run.launch(FLAGS.original, FLAGS.out, FLAGS.lr, FLAGS.seed,
                                   FLAGS.max_steps, FLAGS.threads, FLAGS.model)
    except (FileNotFoundError, ValueError) as err:
        raise app.UsageError(str(err))
    if code:
        raise SystemExit(f"the original's training exited with code {code}")


if __name__ == "__main__":
    app.run(main)
