"""Evaluates a run's latest checkpoint on its test scenes and prints ACC, SE, nELBO, mIoU as JSON.

By default exactly as the run evaluated itself (its test scenes, its noise, its number of test
scenes, all read from the workdir's record): at a checkpoint step it reproduces the logged line.
The output's ``code`` is the code that trained the checkpoint, as the record has it: each
invocation's commit, whether its tree had uncommitted changes (``dirty``), their sha256 and the
file in the workdir that holds them (``diff_file``).

  python tools/evaluate.py --workdir runs/air_asr_13 [--num_test 500] [--deterministic]
  python tools/evaluate.py --workdir runs/air_asr_13 --at_end   # both passes into summary.json
"""
import json
import os

from absl import app, flags

flags.DEFINE_string("workdir", None, "Training workdir.", required=True)
flags.DEFINE_string("checkpoint", None, "A checkpoint path (default: the latest).")
flags.DEFINE_integer("num_test", None,
                     "Test scenes, the first of the run's split (default: all of it, 1000).")
flags.DEFINE_bool("deterministic", False, "Posterior means and z_pres threshold 0.5 (not Q25-Q27).")
flags.DEFINE_integer("seed", None, "Seed of the evaluation noise (default: the run's). The test "
                     "scenes are always the run's data set's.")
flags.DEFINE_string("out", None, "JSON output path (default: <workdir>/evaluation.json).")
flags.DEFINE_bool("at_end", False, "Both passes (one stochastic, one deterministic) of the "
                  "checkpoint, written into <workdir>/summary.json as at_end, as a run's last "
                  "invocation writes them.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from asr_tf.data import DataError
    from asr_tf.run import trained, workdir as workdir_lib

    try:
        if FLAGS.at_end:
            both = trained.end_evaluations(FLAGS.workdir, FLAGS.checkpoint)
            code = workdir_lib.code_of(FLAGS.workdir, both["step"])
            print(json.dumps(dict(both, code=code), indent=1))
            return
        result = trained.evaluate_workdir(FLAGS.workdir, checkpoint=FLAGS.checkpoint,
                                          num_test=FLAGS.num_test, seed=FLAGS.seed,
                                          deterministic=FLAGS.deterministic)
    except (FileNotFoundError, workdir_lib.CheckpointError, DataError) as err:
        raise app.UsageError(str(err))
    result["code"] = workdir_lib.code_of(FLAGS.workdir, result["step"])
    text = json.dumps(result, indent=1)
    print(text)
    with open(FLAGS.out or os.path.join(FLAGS.workdir, "evaluation.json"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    app.run(main)
