"""Exports a trained run as a TF Serving SavedModel: <export_dir>/<version>/ + models.config.

  python tools/export.py --workdir runs/air_asr_14 --export_dir models/air_asr_14 \
      [--version N] [--checkpoint PATH] [--stochastic_default]

Signatures and serving commands: docs/SERVING.md.
"""
import json
import sys

from absl import app, flags

flags.DEFINE_string("workdir", None, "Training workdir (config.gin + ckpt/).", required=True)
flags.DEFINE_string("export_dir", None, "Model base path; its basename is the served model name.",
                    required=True)
flags.DEFINE_integer("version", None, "Version folder (default: 1 + the largest existing).")
flags.DEFINE_string("checkpoint", None, "A checkpoint path (default: the latest).")
flags.DEFINE_bool("stochastic_default", False,
                  "serving_default = the stochastic pass (images, seed); the deterministic one "
                  "becomes infer_deterministic.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from asr_tf import export
    from asr_tf.run import trained

    try:
        model = trained.load_trained(FLAGS.workdir, checkpoint=FLAGS.checkpoint).model
        path = export.export_saved_model(model, FLAGS.export_dir, version=FLAGS.version,
                                         stochastic_default=FLAGS.stochastic_default)
    except (FileNotFoundError, FileExistsError, RuntimeError, ValueError) as err:
        sys.exit(f"export: {type(err).__name__}: {err}")  # CheckpointError is a RuntimeError
    print(json.dumps({"saved_model": path, "model_config": export.MODEL_CONFIG_FILE,
                      "model": model.kind}, indent=1))


if __name__ == "__main__":
    app.run(main)
