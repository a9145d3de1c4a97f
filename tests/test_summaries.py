"""TensorBoard summaries and metrics.jsonl (asr_tf/run/summaries.py): each step once across kills."""
import glob
import json
import os
import shutil

import pytest

from asr_tf.run import summaries
from conftest import scalars


class _Crash(Exception):
    pass


def _logged(workdir):
    """(train loss (step, value)s, eval acc steps, metrics.jsonl steps) as readers find them."""
    path = os.path.join(workdir, "metrics.jsonl")
    lines = open(path).read().splitlines() if os.path.exists(path) else []
    return (scalars(os.path.join(workdir, "train"), "loss"),
            [s for s, _ in scalars(os.path.join(workdir, "eval"), "acc")],
            [json.loads(line)["step"] for line in lines])


def _log_steps(run_log, first, last, value_scale, checkpoint_at=None):
    """What the loop logs: a loss each step, an evaluation every 3 steps, a flush each step.
    Returns the files' sizes after the flush of step ``checkpoint_at``."""
    sizes = None
    for s in range(first, last + 1):
        run_log.scalar("train", "loss", s * value_scale, s)
        if s % 3 == 0:
            run_log.scalar("eval", "acc", s * value_scale, s)
            run_log.metrics_line({"step": s})
        run_log.flush()
        if s == checkpoint_at:
            sizes = {path: os.path.getsize(path) for path in _run_files(run_log.workdir)}
    return sizes


def _run_files(workdir):
    return sorted(glob.glob(os.path.join(workdir, "*", "*tfevents*"))
                  + [os.path.join(workdir, "metrics.jsonl")])


def _expected_after_resume(last):
    return ([(s, float(s) if s <= 3 else 10.0 * s) for s in range(1, last + 1)],
            list(range(3, last + 1, 3)), list(range(3, last + 1, 3)))


def test_resume_after_a_kill_at_any_byte_logs_each_step_once(tmp_path):
    """A kill -9 leaves every file a prefix of what the killed process wrote (it only appends):
    for each file and each of its lengths after the step-3 checkpoint (the other files
    complete), the run resumed from step 3 has every step once, and the resumed values."""
    killed = str(tmp_path / "killed")
    run_log = summaries.RunLog(killed, resumed_at=0)
    at_checkpoint = _log_steps(run_log, 1, 6, 1.0, checkpoint_at=3)
    run_log.close()
    full = {path: open(path, "rb").read() for path in _run_files(killed)}
    assert set(full) == set(at_checkpoint) and len(full) == 3
    trials = 0
    for torn, data in full.items():
        for length in range(at_checkpoint[torn], len(data) + 1):
            workdir = str(tmp_path / f"trial{trials}")
            shutil.copytree(killed, workdir)
            with open(torn.replace(killed, workdir), "wb") as f:
                f.write(data[:length])
            run_log = summaries.RunLog(workdir, resumed_at=3)
            _log_steps(run_log, 4, 7, 10.0)
            run_log.close()
            assert _logged(workdir) == _expected_after_resume(7), (torn, length)
            shutil.rmtree(workdir)
            trials += 1
    assert trials > 200  # every byte of the records after step 3


def test_kill_during_the_cut_then_resume(tmp_path, monkeypatch):
    workdir = str(tmp_path)
    run_log = summaries.RunLog(workdir, resumed_at=0)
    _log_steps(run_log, 1, 6, 1.0)
    run_log.close()
    real_replace = os.replace

    def killed_at_second_replace(src, dst):
        killed_at_second_replace.calls += 1
        if killed_at_second_replace.calls == 2:
            raise _Crash()
        real_replace(src, dst)

    killed_at_second_replace.calls = 0
    monkeypatch.setattr(summaries.os, "replace", killed_at_second_replace)
    with pytest.raises(_Crash):
        summaries.RunLog(workdir, resumed_at=3)  # one file cut, the next one's copy written
    monkeypatch.undo()
    assert glob.glob(os.path.join(workdir, "*", summaries._CUT_TMP))
    run_log = summaries.RunLog(workdir, resumed_at=3)
    assert not glob.glob(os.path.join(workdir, "*", summaries._CUT_TMP))
    _log_steps(run_log, 4, 6, 10.0)
    run_log.close()
    assert _logged(workdir) == _expected_after_resume(6)


def test_unknown_summary_run_is_an_error(tmp_path):
    run_log = summaries.RunLog(str(tmp_path), resumed_at=0)
    with pytest.raises(ValueError, match="unknown summary run 'test'"):
        run_log.scalar("test", "loss", 1.0, 7)
    run_log.close()
