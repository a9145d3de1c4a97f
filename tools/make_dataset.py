"""Write synthetic scenes to an .npz (and optionally a preview PNG with the GT boxes), or a whole
data set as a folder of PNGs with COCO boxes, the form `tools/train.py --data` reads.

  python tools/make_dataset.py --dataset mnist_13 --split test --num 1000 --out scenes.npz \
      [--data_seed 0] [--preview scenes.png]
  python tools/make_dataset.py --dataset mnist_13 --format coco --out DIR \
      [--num 39000] [--num_test 1000] [--data_seed 0]

The .npz holds images [N, S, S] float32, counts [N], boxes_px [N, 4, 4] (x, y, w, h),
box_mask [N, 4]. The folder holds train/ and test/ (the first --num training and --num_test
test scenes, default all, as 000000.png, ... in split-index order, each with annotations.json):
training on it reads the scenes a run on the fly reads (docs/OWN_DATA.md). Logic:
asr_tf.data.scenes.export_scenes, export_folder.
"""
import sys

from absl import app, flags

from asr_tf.data import scenes

flags.DEFINE_string("dataset", None, f"dataset name, one of {sorted(scenes.DATASETS)}")
flags.DEFINE_enum("format", "npz", ["npz", "coco"], "npz: one split's scenes as arrays; coco: "
                  "the data set as a folder DIR/train, DIR/test of PNGs with annotations.json")
flags.DEFINE_string("split", "test", "npz: 'train', 'test' or 'fresh'")
flags.DEFINE_integer("num", None, "npz: number of scenes (split indices 0..num-1; default "
                     "1000); coco: training scenes (default all)")
flags.DEFINE_integer("num_test", None, "coco: test scenes (default all)")
flags.DEFINE_string("out", None, "output .npz path, or the new folder (coco)")
flags.DEFINE_integer("data_seed", 0, "the data set's seed (scenes and train/test split; 0: the "
                     "data set of every run)")
flags.DEFINE_string("preview", None, "npz: optional PNG grid of the first 64 scenes with GT "
                    "boxes")
flags.mark_flags_as_required(["dataset", "out"])
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.format == "coco" and (FLAGS.preview or FLAGS["split"].present):
        raise app.UsageError("--format coco writes both splits and no preview: drop --split "
                             "and --preview")
    if FLAGS.format == "npz" and FLAGS.num_test is not None:
        raise app.UsageError("--num_test is for --format coco")
    try:
        if FLAGS.format == "coco":
            written = scenes.export_folder(FLAGS.dataset, FLAGS.out, FLAGS.num, FLAGS.num_test,
                                           {"data_seed": FLAGS.data_seed})
            print(f"wrote {FLAGS.out}: {written['train']} training and {written['test']} test "
                  f"scenes as {written['bits']}-bit PNGs with annotations.json")
            return 0
        arrays = scenes.export_scenes(
            FLAGS.dataset, FLAGS.split, 1000 if FLAGS.num is None else FLAGS.num, FLAGS.out,
            preview=FLAGS.preview, data_seed=FLAGS.data_seed,
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
