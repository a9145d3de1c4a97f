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

and has TensorFlow's first import run quietly, whenever a module imports it (the numpy parts
of asr_tf/data import without it): TF 2.21 prints its load-time INFO lines ("oneDNN custom
operations are on", "Could not find cuda drivers") twice, once from libtensorflow_framework.so.2
and once from the profiler plugin, which carries its own copy of that start-up code, and absl
writes them before its logging is initialised, whatever the log level (upstream:
tensorflow/tensorflow#100442). While TensorFlow's package executes, the process's stderr goes to
a temporary file; what it wrote is then passed on except those INFO lines, so a warning or an
error of the import still shows. The GPU platform is probed in the same quiet window
(``tf.config.list_physical_devices("GPU")``; threads and visible devices can still be set after
it), because on a machine without a GPU driver its first use writes the error line "failed call
to cuInit" that only means "no GPU: TensorFlow runs on the CPU"; that line is dropped too. And
absl's handler (the tools' log) drops the INFO records of TensorFlow's own Python files (e.g.
"Sharding callback duration" at every checkpoint); their warnings and errors pass, and so does
everything of asr_tf. ``TF_CPP_MIN_LOG_LEVEL=0`` (the user's) shows them all.
"""
import contextlib as _contextlib
import importlib.abc as _importlib_abc
import importlib.machinery as _importlib_machinery
import logging as _logging
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
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler"
    r"|E\d{4} \d+:\d+:\d+\.\d+ +\d+ cuda_platform\.cc:\d+\] failed call to cuInit: ")


@_contextlib.contextmanager
def _load_time_lines_hidden():
    """Captures file descriptor 2 while the body runs, then writes back all but the load-time
    INFO lines."""
    _sys.stderr.flush()
    saved = _os.dup(2)
    with _tempfile.TemporaryFile() as captured:
        _os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            _sys.stderr.flush()
            _os.dup2(saved, 2)
            _os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not _LOAD_TIME_INFO.match(line):
                    _sys.stderr.write(line)
            _sys.stderr.flush()


class _TensorFlowInfoHidden(_logging.Filter):
    """Drops the INFO (and DEBUG) records logged from files under TensorFlow's package folder."""

    def __init__(self, package_dir):
        super().__init__()
        self.package_dir = package_dir

    def filter(self, record):
        return (record.levelno >= _logging.WARNING
                or not record.pathname.startswith(self.package_dir))


class _QuietLoader(_importlib_abc.Loader):
    """TensorFlow's own loader, its package executed under :func:`_load_time_lines_hidden`."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__spec__.loader = module.__loader__ = self.loader  # TensorFlow's own, after
        with _load_time_lines_hidden():
            self.loader.exec_module(module)
            module.config.list_physical_devices("GPU")
        from absl import logging as absl_logging

        absl_logging.get_absl_handler().addFilter(
            _TensorFlowInfoHidden(_os.path.dirname(module.__file__) + _os.sep))


class _QuietTensorFlowFinder(_importlib_abc.MetaPathFinder):
    """Finds the first ``import tensorflow`` as usual and hands it to :class:`_QuietLoader`."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        _sys.meta_path.remove(self)
        spec = _importlib_machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


if "tensorflow" not in _sys.modules and _os.environ["TF_CPP_MIN_LOG_LEVEL"] != "0":
    _sys.meta_path.insert(0, _QuietTensorFlowFinder())

__version__ = "0.1.0"
