"""Writes an 8x8 grid of generated scenes, or with --reconstruct test scenes beside their
reconstructions with inferred boxes (the paper's Figures 4-6).

  python tools/generate.py --workdir runs/air_asr_13 --out grid.png [--reconstruct]
"""
from absl import app, flags

flags.DEFINE_string("workdir", None, "Training workdir.", required=True)
flags.DEFINE_string("out", None, "PNG path.", required=True)
flags.DEFINE_bool("reconstruct", False, "Test scenes with boxes and reconstructions instead.")
flags.DEFINE_integer("num", 64, "Panels.")
flags.DEFINE_integer("seed", None, "Seed of the samples / evaluation noise (default: the run's).")
flags.DEFINE_string("checkpoint", None, "A checkpoint path (default: the latest).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from asr_tf.data import DataError
    from asr_tf.run import trained, workdir as workdir_lib

    try:
        path = trained.write_figure(FLAGS.workdir, FLAGS.out, reconstruct=FLAGS.reconstruct,
                                    num=FLAGS.num, seed=FLAGS.seed, checkpoint=FLAGS.checkpoint)
    except (FileNotFoundError, workdir_lib.CheckpointError, DataError) as err:
        raise app.UsageError(str(err))
    print(path)


if __name__ == "__main__":
    app.run(main)
