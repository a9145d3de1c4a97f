"""The port's `faithful` runs beside the original's own runs (asr_tf/lab/original_curves.py).

  python tools/original_curves.py --results docs/results/original

reads orig_lr<rate>_s<seed>.jsonl (tools/train_original.py) and runs/faithful_lr<rate>_s<seed>/
(tools/train.py --config air_asr_13 --config faithful ...; another model: name it with --model)
there, writes curves_lr<rate>.png and spread.json beside them and prints the tables.
"""
from absl import app, flags

flags.DEFINE_string("results", "docs/results/original", "The folder of both sides' results.")
flags.DEFINE_integer("first_step", 1000, "First evaluation step of the spread check.")
flags.DEFINE_integer("last_step", 3000, "Last evaluation step of the spread check.")
flags.DEFINE_string("model", "AIR-ASR-13", "The model's name in the figures' titles.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from asr_tf.lab import original_curves

    print(original_curves.write_report(FLAGS.results, (FLAGS.first_step, FLAGS.last_step),
                                       FLAGS.model))


if __name__ == "__main__":
    app.run(main)
