"""The port against the original code, tensor by tensor (asr_tf/lab/original_compare.py).

  python tools/compare_original.py --original DIR --config air_asr_13 --config faithful \
      [--batch 32] [--seed 0] [--weights_from WORKDIR] [--out report.json] [--markdown report.md]

DIR is a prepared copy of the original (taufikxu/MOG-ASR @ 72407c3, edited to run under
tf.compat.v1; docs/ORIGINAL.md §12). Prints how many values agree to
rounding per section and lists the ones that differ.
"""
import json

from absl import app, flags

flags.DEFINE_string("original", None, "A prepared copy of the original code.", required=True)
flags.DEFINE_multi_string("config", [], "The port's configs (a run's, then overlays).")
flags.DEFINE_multi_string("gin_param", [], "Extra gin bindings for the port.")
flags.DEFINE_integer("batch", 32, "Test scenes in the batch.")
flags.DEFINE_integer("seed", 0, "Seed of the noise and of the original's initialisers.")
flags.DEFINE_string("weights_from", None, "A port workdir whose latest checkpoint gives the "
                    "weights (default: the original's own initialisation).")
flags.DEFINE_string("out", None, "Write the full report as JSON here.")
flags.DEFINE_string("markdown", None, "Write the report as markdown tables here.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from asr_tf.lab import original_compare, original_report, original_run

    if not FLAGS.config and not FLAGS.weights_from:
        raise app.UsageError("give --config (e.g. --config air_asr_13 --config faithful) or "
                             "--weights_from")
    try:
        original_run.check_prepared(FLAGS.original)
        report = original_compare.compare(FLAGS.original, FLAGS.config, FLAGS.gin_param,
                                          batch=FLAGS.batch, seed=FLAGS.seed,
                                          weights_from=FLAGS.weights_from)
    except (FileNotFoundError, ValueError) as err:
        raise app.UsageError(str(err))
    report.pop("arrays")
    for section, rows in original_report.summarize(report).items():
        print(f"{section:8s} rounding {rows['rounding']:3d}  amplified {rows['amplified']:3d}  "
              f"different {len(rows['different'])}")
        for name, rel, control in rows["different"]:
            print(f"    {name}: rel {rel:.2e}" + ("" if control is None else
                                                   f", control {control:.2e}"))
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            json.dump(report, f, indent=1)
    if FLAGS.markdown:
        with open(FLAGS.markdown, "w") as f:
            f.write(original_report.markdown(report))


if __name__ == "__main__":
    app.run(main)
