"""Compares trained runs' counts and boxes with their data set's reference boxes on its test
split (docs/OWN_DATA.md, "A real example": AIR and AIR-ASR against the source extractor).

  python tools/compare_reference.py --run air=runs/hubble_air --run asr=runs/hubble_asr \
      --out docs/results/own_data/hubble

Writes OUT/comparison.json (count accuracy, count MAE and bias, confusion, mIoU, box sides; the
deterministic pass and one stochastic pass of each run), OUT/reference.png and per run
OUT/<name>_reconstructions.png, OUT/<name>_samples.png; prints the table. Logic:
asr_tf.lab.reference_compare.
"""
from absl import app, flags

flags.DEFINE_multi_string("run", None, "NAME=WORKDIR, a trained run (repeat; one data set)",
                          required=True)
flags.DEFINE_string("out", None, "output folder", required=True)
flags.DEFINE_integer("num_figure", 32, "test canvases in the figures")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from asr_tf.data import DataError
    from asr_tf.lab import reference_compare
    from asr_tf.run import workdir as workdir_lib

    runs = dict(r.split("=", 1) for r in FLAGS.run if "=" in r)
    if len(runs) != len(FLAGS.run):
        raise app.UsageError("--run takes NAME=WORKDIR, each NAME once")
    try:
        comparison = reference_compare.compare(runs, FLAGS.out, FLAGS.num_figure)
    except (FileNotFoundError, ValueError, workdir_lib.CheckpointError, DataError) as err:
        raise app.UsageError(str(err))
    print(reference_compare.markdown_table(comparison))


if __name__ == "__main__":
    app.run(main)
