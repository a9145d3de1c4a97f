"""How the tools start and end: quietly (asr_tf's defaults, set before TensorFlow's first import;
warnings still shown), with a clear one-line error for a workdir that is not one, and one line
at the end."""
import os
import re
import subprocess
import sys

import pytest

from asr_tf.run import loop

# The lines TensorFlow 2.21 writes before its logging reads any setting (asr_tf/__init__.py):
# at its import (absl's notice, oneDNN, CUDA drivers) and at the first device listing.
UNSILENCEABLE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"
    r"|I\d{4} [\d:.]+ +\d+ port\.cc:\d+\] oneDNN custom operations are on"
    r"|I\d{4} [\d:.]+ +\d+ cudart_stub\.cc:\d+\] Could not find cuda drivers"
    r"|E\d{4} [\d:.]+ +\d+ cuda_platform\.cc:\d+\] failed call to cuInit")
# Imports the package and TensorFlow, lists the devices, compiles with XLA (C++ INFO lines at
# level 0), logs through absl at INFO and WARNING.
START = ("import os, asr_tf.run.loop, tensorflow as tf; from absl import logging; "
         "print(os.environ['KERAS_BACKEND'], os.environ['TF_CPP_MIN_LOG_LEVEL']); "
         "print(tf.config.list_physical_devices()); "
         "print(tf.function(lambda x: 2 * x, jit_compile=True)(tf.ones([2])).numpy()); "
         "logging.info('absl info'); logging.warning('absl warning')")
# An absl app as the tools are: absl INFO hidden unless --verbosity says otherwise, the run's
# own INFO lines (logger asr_tf.train) and warnings shown. No TensorFlow import.
APP = ("import logging, sys; from absl import app, logging as absl_logging; import asr_tf\n"
       "def main(_):\n"
       "    run_log = logging.getLogger('asr_tf.train'); run_log.setLevel(logging.INFO)\n"
       "    absl_logging.info('absl info'); absl_logging.warning('absl warning')\n"
       "    run_log.info('run info')\n"
       "    print('tensorflow' in sys.modules)\n"
       "app.run(main)")


def _python(code, *args, **env):
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=300, env={k: v for k, v in dict(os.environ, **env).items()
                                            if v is not None})


def test_start_up_prints_only_what_tensorflow_writes_before_its_settings():
    quiet = _python(START, TF_CPP_MIN_LOG_LEVEL=None, KERAS_BACKEND=None)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert quiet.stdout.splitlines()[0] == "tensorflow 1"  # the defaults
    shown = [line for line in quiet.stderr.splitlines() if not UNSILENCEABLE.match(line)]
    assert shown == ["WARNING:absl:absl warning"], quiet.stderr
    # A user's level 0 wins, and shows what level 1 hid: the CPU-feature notice, XLA's lines.
    loud = _python(START, TF_CPP_MIN_LOG_LEVEL="0", KERAS_BACKEND=None)
    assert loud.stdout.splitlines()[0] == "tensorflow 0"
    assert loud.stdout.splitlines()[1:] == quiet.stdout.splitlines()[1:]  # the same devices, 2*x
    assert "cpu_feature_guard" in loud.stderr and "Compiled cluster using XLA" in loud.stderr
    assert "cpu_feature_guard" not in quiet.stderr and "XLA" not in quiet.stderr
    # The numpy parts of the data package load without TensorFlow.
    numpy_only = _python("import sys, asr_tf.data.scenes; print('tensorflow' in sys.modules)")
    assert numpy_only.stdout.strip() == "False", numpy_only.stderr[-2000:]


def test_absl_apps_log_warnings_and_the_runs_own_lines_unless_told_more():
    quiet = _python(APP)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert quiet.stdout.strip() == "False"  # importing asr_tf does not import TensorFlow
    assert "absl warning" in quiet.stderr and "run info" in quiet.stderr
    assert "absl info" not in quiet.stderr
    loud = _python(APP, "--verbosity", "0")
    assert all(m in loud.stderr for m in ("absl info", "absl warning", "run info")), loud.stderr


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
