"""asr-tf: AIR, AIR-pPrior and AIR-ASR (Amortized Structural Regularization) in TF 2 / Keras 3.

A port of the NeurIPS paper "Multi-objects Generation with Amortized Structural
Regularization", faithful to the original TF 1.12 code (taufikxu/MOG-ASR @ 72407c3).
See WORKSPACE.md for the map of the code.

Importing the package sets two environment defaults, each only if the variable is unset (a
user's own value wins), before any of its modules imports TensorFlow:

* ``KERAS_BACKEND=tensorflow``: Keras 3 must run on TensorFlow; never the legacy tf-keras
  (TFP imports it, we do not use it).
* ``TF_CPP_MIN_LOG_LEVEL=1``: TensorFlow's C++ INFO lines hidden (the CPU-feature notice,
  XLA service lines), its warnings and errors shown.

and imports TensorFlow once, quietly: TF 2.21 prints its load-time INFO lines ("oneDNN custom
operations are on", "Could not find cuda drivers", the CPU-feature notice) twice, once from
libtensorflow_framework.so.2 and once from the profiler plugin, which carries its own copy of
that start-up code, and absl writes them before its logging is initialised, whatever the log
level (upstream: tensorflow/tensorflow#100442). While TensorFlow loads, the process's stderr
goes to a temporary file; what it wrote is then passed on except those INFO lines, so a warning
or an error of the import still shows. ``TF_CPP_MIN_LOG_LEVEL=0`` (the user's) shows them all.
"""
import os as _os
import re as _re
import sys as _sys
import tempfile as _tempfile

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

# TensorFlow's load-time INFO lines (absl's "I<mmdd> <time> <thread> <file>:<line>]" prefix),
# absl's notice before them, and the CPU-feature notice's second line.
_LOAD_TIME_INFO = _re.compile(
    r"I\d{4} \d+:\d+:\d+\.\d+ +\d+ \S+:\d+\] "
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler")


def _import_tensorflow_quietly():
    if "tensorflow" in _sys.modules or _os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0":
        return
    _sys.stderr.flush()
    saved = _os.dup(2)
    with _tempfile.TemporaryFile() as captured:
        _os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            _sys.stderr.flush()
            _os.dup2(saved, 2)
            _os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not _LOAD_TIME_INFO.match(line):
                    _sys.stderr.write(line)
            _sys.stderr.flush()


_import_tensorflow_quietly()

__version__ = "0.1.0"
