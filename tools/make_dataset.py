"""Write synthetic scenes to an .npz (and optionally a preview PNG with the GT boxes).

  python tools/make_dataset.py --dataset mnist_13 --split test --num 1000 --out scenes.npz \
      [--data_seed 0] [--preview scenes.png]

The .npz holds images [N, S, S] float32, counts [N], boxes_px [N, 4, 4] (x, y, w, h),
box_mask [N, 4]. Logic: asr_tf.data.scenes.export_scenes.
"""
import sys

from absl import app, flags

from asr_tf.data import scenes

flags.DEFINE_string("dataset", None, f"dataset name, one of {sorted(scenes.DATASETS)}")
flags.DEFINE_string("split", "test", "'train', 'test' or 'fresh'")
flags.DEFINE_integer("num", 1000, "number of scenes (split indices 0..num-1)")
flags.DEFINE_string("out", None, "output .npz path")
flags.DEFINE_integer("data_seed", 0, "the data set's seed (scenes and train/test split; 0: the "
                     "data set of every run)")
flags.DEFINE_string("preview", None, "optional PNG grid of the first 64 scenes with GT boxes")
flags.mark_flags_as_required(["dataset", "out"])
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        arrays = scenes.export_scenes(
            FLAGS.dataset, FLAGS.split, FLAGS.num, FLAGS.out, preview=FLAGS.preview,
            data_seed=FLAGS.data_seed,
        )
    except (ValueError, scenes.SceneSynthesisError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    counts = arrays["counts"]
    print(f"wrote {len(counts)} scenes to {FLAGS.out} (counts: "
          + ", ".join(f"{c}: {(counts == c).sum()}" for c in sorted(set(counts.tolist())))
          + (f"; preview {FLAGS.preview})" if FLAGS.preview else ")"))
    return 0


if __name__ == "__main__":
    app.run(main)
