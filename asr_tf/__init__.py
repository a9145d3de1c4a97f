"""asr-tf: AIR, AIR-pPrior and AIR-ASR (Amortized Structural Regularization) in TF 2 / Keras 3.

A port of the NeurIPS paper "Multi-objects Generation with Amortized Structural
Regularization", faithful to the original TF 1.12 code (taufikxu/MOG-ASR @ 72407c3).
See WORKSPACE.md for the map of the code.

Importing the package sets two environment defaults, each only if the variable is unset (a
user's own value wins), before any of its modules imports TensorFlow:

* ``KERAS_BACKEND=tensorflow``: Keras 3 must run on TensorFlow; never the legacy tf-keras
  (TFP imports it, we do not use it).
* ``TF_CPP_MIN_LOG_LEVEL=1``: TensorFlow's C++ INFO lines hidden (the CPU-feature notice,
  XLA service lines), its warnings and errors shown. It takes effect only if TensorFlow is
  not imported yet. It cannot hide the lines TF 2.21 prints while its libraries load
  ("oneDNN custom operations are on", "Could not find cuda drivers", twice: once from
  libtensorflow_framework.so.2 and once from the profiler plugin
  ``tensorflow/python/profiler/internal/_pywrap_profiler_plugin.so``, which carries its own
  copy of that start-up code): absl writes them before its logging is initialised, whatever
  the log level (upstream: tensorflow/tensorflow#100442).
"""
import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

__version__ = "0.1.0"
