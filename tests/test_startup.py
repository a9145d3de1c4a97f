"""How the tools start and end: quietly (no TensorFlow load-time INFO lines, warnings still
shown), with a clear one-line error for a workdir that is not one, and one line at the end."""
import os
import subprocess
import sys

import pytest

from asr_tf.run import loop

LOAD_TIME_LINES = ("oneDNN custom operations are on", "Could not find cuda drivers",
                   "All log messages before absl::InitializeLog", "failed call to cuInit")
# After the import: devices listed, threads still settable, TensorFlow's Python logger's level.
# After the import: devices listed, threads still settable; absl's handler passes a record of
# TensorFlow's files only from WARNING up (prints the three verdicts: INFO, WARNING, ours).
AFTER_IMPORT = (
    "import logging, os, sys, tensorflow as tf; from absl import logging as absl_logging; "
    "print(tf.config.list_physical_devices()); "
    "tf.config.threading.set_intra_op_parallelism_threads(1); "
    "tf_file = os.path.join(os.path.dirname(tf.__file__), 'python', 'x.py'); "
    "rec = lambda level, path: logging.LogRecord('absl', level, path, 1, 'm', (), None); "
    "h = absl_logging.get_absl_handler(); "
    "print([bool(h.filter(rec(logging.INFO, tf_file))), "
    "bool(h.filter(rec(logging.WARNING, tf_file))), "
    "bool(h.filter(rec(logging.INFO, os.path.abspath('asr_tf/run/loop.py'))))]); "
    "print('warning: kept', file=sys.stderr)")


def _python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={k: v for k, v in dict(os.environ, **env).items()
                                            if v is not None})


def test_importing_asr_tf_hides_tensorflows_load_time_lines_only():
    quiet = _python("import asr_tf.run.loop; " + AFTER_IMPORT, TF_CPP_MIN_LOG_LEVEL=None)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert not any(line in quiet.stderr for line in LOAD_TIME_LINES), quiet.stderr
    assert "warning: kept" in quiet.stderr
    assert quiet.stdout.splitlines()[1] == "[False, True, True]"  # TF's Python INFO hidden
    # A user's level 0 shows everything: the lines are TensorFlow's, and the filter hid them.
    loud = _python("import asr_tf.run.loop; " + AFTER_IMPORT, TF_CPP_MIN_LOG_LEVEL="0")
    assert LOAD_TIME_LINES[0] in loud.stderr or LOAD_TIME_LINES[1] in loud.stderr
    assert loud.stdout.splitlines()[0] == quiet.stdout.splitlines()[0]  # the same devices
    assert loud.stdout.splitlines()[1] == "[True, True, True]"
    # The numpy parts of the data package load without TensorFlow.
    numpy_only = _python("import sys, asr_tf.data.scenes; print('tensorflow' in sys.modules)")
    assert numpy_only.stdout.strip() == "False", numpy_only.stderr[-2000:]
    # An import error still reaches the user.
    broken = _python("import asr_tf; import tensorflow; raise SystemExit('boom: kept')",
                     TF_CPP_MIN_LOG_LEVEL=None)
    assert "boom: kept" in broken.stderr


@pytest.mark.parametrize("tool, args", [("evaluate.py", []),
                                        ("generate.py", ["--out", "x.png"]),
                                        ("diagnose_counts.py", [])])
def test_tools_name_a_workdir_that_is_not_one(tmp_path, repo_root, tool, args):
    out = subprocess.run([sys.executable, str(repo_root / "tools" / tool), "--workdir",
                          str(tmp_path / "nowhere"), *args], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert out.returncode != 0
    assert "nowhere/config.gin not found" in out.stderr and "Traceback" not in out.stderr
    assert not os.listdir(tmp_path)  # nothing written


def test_summary_line_is_one_line_with_both_end_evaluations():
    end = {"step": 9, "stochastic": {"acc": 0.9123, "se": 30.04, "miou": 0.61, "nelbo": 350.2,
                                     "count_frac_1obj_2": 0.07},
           "deterministic": {"acc": 1.0, "se": 29.5, "miou": 0.62, "nelbo": 349.0}}
    line = loop.summary_line("runs/w", {"step": 9, "total_steps": 20000, "at_end": end,
                                        "final": end["stochastic"]})
    assert "\n" not in line
    assert line == ("runs/w: step 9/20,000; ACC 0.912 SE 30 mIoU 0.61 nELBO 350 (one stochastic "
                    "pass), ACC 1 SE 29.5 mIoU 0.62 nELBO 349 (deterministic); "
                    "runs/w/summary.json")
    resumed_at_end = loop.summary_line("w", {"step": 5, "total_steps": 5, "final": {"acc": 0.5}})
    assert resumed_at_end == "w: step 5/5; ACC 0.5; w/summary.json"
