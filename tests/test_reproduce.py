"""The Table 1 report: common-step selection, mean/std over seeds, the markdown table."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from asr_tf import reproduce


def _write_run(runs_dir, config, seed, rows):
    workdir = reproduce.workdir_for(runs_dir, config, seed)
    os.makedirs(workdir)
    with open(os.path.join(workdir, "log.txt"), "w") as f:
        f.write("2026-01-01 00:00:00,000 run x: mnist_13, 0/182812 steps\n")
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        for step, acc in rows:
            f.write(json.dumps(dict(step=step, wall_time=0.0, acc=acc, se=100.0 - step / 10,
                                    nelbo=500.0, miou=acc / 2)) + "\n")


def test_summarize_at_the_common_step(tmp_path):
    runs = str(tmp_path)
    _write_run(runs, "air_asr_13", 0, [(200, 0.5), (400, 0.9), (600, 0.95)])
    _write_run(runs, "air_asr_13", 1, [(200, 0.7), (400, 0.8)])
    _write_run(runs, "air_13", 0, [(200, 0.1), (400, 0.2), (600, 0.3)])
    seeds = {"air_asr_13": [0, 1], "air_13": [0]}
    step, table, _ = reproduce.summarize(runs, ["air_13", "air_asr_13"], seeds)
    assert step == 400  # the largest step every run has evaluated
    mean, std = table["air_asr_13"]["acc"]
    assert np.isclose(mean, 0.85) and np.isclose(std, 0.05)
    assert table["air_13"]["acc"] == (0.2, 0.0)
    text = reproduce.markdown_table(table, step)
    assert "AIR-ASR-13" in text and "0.85 ± 0.05" in text and "0.96 ± 0.00" in text  # paper ACC
    step, table, _ = reproduce.summarize(runs, ["air_13", "air_asr_13"], seeds, step=300)
    assert table["air_13"]["acc"] == (0.1, 0.0)  # the last evaluation at or before step 300
    step, table, _ = reproduce.summarize(runs, ["air_13", "air_asr_13"], seeds, step=600)
    assert table["air_asr_13"]["seeds"] == [0]  # seed 1 stopped at 400: left out, not reused
    assert table["air_asr_13"]["acc"] == (0.95, 0.0)
    step, table, _ = reproduce.summarize(runs, ["air_13", "air_asr_13"], seeds, step=800)
    assert table == {}  # nobody trained that far
    _, _, by_run = reproduce.summarize(runs, ["air_13", "air_asr_13"], seeds)
    lines = reproduce.per_seed_table(by_run, 600).splitlines()
    assert lines[2:] == ["| `air_13` seed 0 | 500.0 | 0.300 | 40.0 | 0.150 |",
                         "| `air_asr_13` seed 0 | 500.0 | 0.950 | 40.0 | 0.475 |"]  # seed 1: 400


def test_row_configs_rejects_unknown_rows():
    assert reproduce.row_configs("14") == ["air_14", "air_pprior_14", "air_asr_14"]
    assert reproduce.row_configs("13", "size") == ["air_13", "air_pprior_13", "air_asr_13_size"]
    with pytest.raises(ValueError, match="air_asr_14_size"):
        reproduce.row_configs("14", "size")  # no such config (yet)
    assert reproduce.display_name("air_asr_13_size") == "AIR-ASR-13 (size)"
    assert reproduce.display_name("air_pprior_24") == "AIR-pPrior-24"
    assert reproduce.paper_row("air_asr_13_size")["se"] == (28.84, 1.11)  # the row it varies
    try:
        reproduce.row_configs("99")
    except ValueError as err:
        assert "99" in str(err)
    else:
        raise AssertionError("row 99 accepted")


def test_training_minutes_skip_the_pause_between_invocations(tmp_path):
    import time

    workdir = str(tmp_path)
    t0 = time.mktime(time.strptime("2026-01-01 10:00:00", "%Y-%m-%d %H:%M:%S"))
    with open(os.path.join(workdir, "log.txt"), "w") as f:
        f.write("2026-01-01 10:00:00,000 run x: mnist_13, 0/182812 steps\n"
                "2026-01-01 10:05:00,000 step 200: acc=0.5\n"
                "2026-01-01 12:00:00,000 restored ckpt-200 at step 200\n"
                "2026-01-01 12:00:00,000 run x: mnist_13, 200/182812 steps\n")
    records = [dict(step=200, wall_time=t0 + 300), dict(step=400, wall_time=t0 + 7200 + 240),
               dict(step=600, wall_time=t0 + 7200 + 480)]
    assert reproduce.training_minutes(workdir, records, 200) == 5.0
    assert reproduce.training_minutes(workdir, records, 400) == 9.0  # 5 + 4, not the 2 h pause
    assert reproduce.training_minutes(workdir, records, 10_000) == 13.0
    assert np.isnan(reproduce.training_minutes(str(tmp_path / "none"), records, 200))


def test_train_passes_the_variant_bindings(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(reproduce.subprocess, "call", lambda cmd, **kw: calls.append(cmd) or 0)
    workdir = str(tmp_path / "v" / "air_asr_13_s2")
    assert reproduce.train("air_asr_13", workdir, 2, max_steps=50,
                           extra=["make_optimizer.decay_steps = (40,)"]) == 0
    cmd = calls[0]
    assert cmd[cmd.index("--config") + 1] == "air_asr_13" and cmd[cmd.index("--seed") + 1] == "2"
    assert cmd[cmd.index("--max_steps") + 1] == "50"
    assert cmd[-2:] == ["--gin_param", "make_optimizer.decay_steps = (40,)"]
    assert os.path.exists(workdir + ".log")  # the run's log beside its workdir


def test_reproduce_tool_reports_a_named_asr_variant(tmp_path, repo_root):
    runs, out_dir = str(tmp_path / "runs"), str(tmp_path / "out")
    _write_run(runs, "air_asr_13_size", 0, [(200, 0.5), (400, 0.9)])
    _write_run(runs, "air_13", 0, [(200, 0.1), (400, 0.2)])
    tool = [sys.executable, str(repo_root / "tools" / "reproduce.py"), "--report_only",
            "--runs_dir", runs, "--out_dir", out_dir, "--nofigures", "--seeds", "1"]
    out = subprocess.run(tool + ["--asr_variant", "size"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    table = open(os.path.join(out_dir, "table1_13.md")).read()
    assert "| AIR-ASR-13 (size) (`air_asr_13_size`) | 1 |" in table
    assert "0.90 ± 0.00" in table and "28.8 ± 1.1" in table  # ours at step 400; paper SE
    out = subprocess.run(tool + ["--asr_variant", "bogus"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0 and "air_asr_13_bogus" in out.stderr
