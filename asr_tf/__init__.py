"""asr-tf: AIR, AIR-pPrior and AIR-ASR (Amortized Structural Regularization) in TF 2 / Keras 3.

A port of the NeurIPS paper "Multi-objects Generation with Amortized Structural
Regularization", faithful to the original TF 1.12 code (taufikxu/MOG-ASR @ 72407c3).
See WORKSPACE.md for the map of the code.
"""
import os as _os

# Keras 3 must run on TensorFlow; never the legacy tf-keras (TFP imports it, we do not use it).
_os.environ.setdefault("KERAS_BACKEND", "tensorflow")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
