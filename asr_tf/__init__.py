"""asr-tf: AIR, AIR-pPrior and AIR-ASR (Amortized Structural Regularization) in TF 2 / Keras 3.

A port of "Multi-objects Generation with Amortized Structural Regularization" (NeurIPS 2019),
faithful to the original TF 1.12 code (taufikxu/MOG-ASR @ 72407c3; docs/ORIGINAL.md). The map
of the code: WORKSPACE.md.

Importing the package, before any of its modules imports TensorFlow, sets defaults that a
user's own value overrides: ``KERAS_BACKEND=tensorflow`` (Keras 3 on TensorFlow, never the
legacy tf-keras that TFP imports), ``TF_CPP_MIN_LOG_LEVEL=1`` (TensorFlow's C++ INFO lines
hidden, its warnings and errors shown) and absl's verbosity WARNING (``--verbosity 0`` shows
INFO, e.g. TensorFlow's "Sharding callback duration" at every checkpoint; the run's own log,
the ``asr_tf.train`` logger, keeps its INFO lines).

Still printed, because TensorFlow 2.21 writes them before its logging reads any setting: at its
import, twice, absl's "All log messages before absl::InitializeLog()" notice, "oneDNN custom
operations are on" and "Could not find cuda drivers"; on a machine without a GPU driver, at the
first device listing, "failed call to cuInit" (an error line; only a level of 3, which hides
every error, drops it).
"""
import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import flags as _flags, logging as _absl_logging  # noqa: E402

if not _flags.FLAGS["verbosity"].present:  # not given on the command line
    _absl_logging.set_verbosity("warning")  # not a default: app.run raises a default to INFO

__version__ = "0.1.0"
