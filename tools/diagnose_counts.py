"""Prints how a trained run counts: inferred counts per true count, presence probability per
glimpse step, and for plain AIR the nELBO of every count given the model's own glimpses.

  python tools/diagnose_counts.py --workdir runs/air_13 [--checkpoint runs/air_13/ckpt/ckpt-4000]
"""
import json
import os

from absl import app, flags

flags.DEFINE_string("workdir", None, "Training workdir.", required=True)
flags.DEFINE_string("checkpoint", None, "A checkpoint path (default: the latest).")
flags.DEFINE_integer("num_test", None, "Test scenes (default: the run's record).")
flags.DEFINE_integer("seed", None, "Seed of the test-pass noise (default: the run's record).")
flags.DEFINE_bool("ledger", True, "AIR: price every count with the model's own glimpses.")
flags.DEFINE_float("ledger_prior_logit", None,
                   "Price presence at this prior log-odds (default: the run's at its step).")
flags.DEFINE_string("out", None, "JSON output path (default: <workdir>/count_diagnostics_<step>.json).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from asr_tf.data import DataError
    from asr_tf.lab import diagnostics
    from asr_tf.run import workdir as workdir_lib

    try:
        result = diagnostics.diagnose_workdir(FLAGS.workdir, checkpoint=FLAGS.checkpoint,
                                              num_test=FLAGS.num_test, seed=FLAGS.seed,
                                              ledger=FLAGS.ledger,
                                              ledger_prior_logit=FLAGS.ledger_prior_logit)
    except (FileNotFoundError, workdir_lib.CheckpointError, DataError) as err:
        raise app.UsageError(str(err))
    print(result["markdown"])
    if "ledger_check" in result:
        print(f"ledger check (|nll of the pass - ledger nll at the inferred count|, max): "
              f"{result['ledger_check']:.2e}")
    tag = "" if FLAGS.ledger_prior_logit is None else f"_prior{FLAGS.ledger_prior_logit:g}"
    out = FLAGS.out or os.path.join(FLAGS.workdir, f"count_diagnostics_{result['step']}{tag}.json")
    with open(out, "w") as f:
        json.dump(diagnostics.to_json({k: v for k, v in result.items() if k != "markdown"}), f,
                  indent=1)
    print(out)


if __name__ == "__main__":
    app.run(main)
