"""The Tables 1 and 2 reproduction: the plan of runs, training that skips and resumes, each run
as the mean of its last evaluations, the tables beside the paper's, the archive."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from asr_tf.lab import report, reproduce
from asr_tf.run import workdir as workdir_lib


def _write_run(runs_dir, config, seed, rows, extra_files=()):
    """A fake run: metrics at the given (step, acc) rows; se = 100 - step / 10."""
    workdir = reproduce.workdir_for(runs_dir, config, seed)
    os.makedirs(os.path.join(workdir, "ckpt"))
    with open(os.path.join(workdir, "log.txt"), "w") as f:
        f.write("2026-01-01 00:00:00,000 run x: mnist_13, 0/182812 steps\n")
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        for step, acc in rows:
            f.write(json.dumps(dict(step=step, wall_time=0.0, acc=acc, se=100.0 - step / 10,
                                    nelbo=500.0, miou=acc / 2)) + "\n")
    for name in extra_files:
        open(os.path.join(workdir, name), "w").write("x")
    return workdir


def _run(runs_dir, config, seed):
    return reproduce.Run(config, seed, reproduce.workdir_for(runs_dir, config, seed))


def test_a_run_is_the_mean_of_its_last_evaluations_up_to_the_budget(tmp_path):
    steps = [200, 400, 600, 800, 1000, 1200]
    workdir = _write_run(str(tmp_path), "air_asr_13", 0, [(s, s / 2000) for s in steps])
    r = reproduce.run_result(workdir, 1000)
    assert r["complete"] and r["step"] == 1000 and r["evaluations"] == 5
    assert r["acc"] == pytest.approx(np.mean([0.1, 0.2, 0.3, 0.4, 0.5]))  # not step 1200's
    assert r["se"] == pytest.approx(100 - 60)
    r = reproduce.run_result(workdir, 1000, last=2)
    assert r["acc"] == pytest.approx(0.45)
    r = reproduce.run_result(workdir, 1400)
    assert not r["complete"] and r["step"] == 1200
    assert reproduce.run_result(str(tmp_path / "missing"), 1000) is None


def test_summarize_over_the_seeds_that_reached_the_budget(tmp_path):
    runs_dir = str(tmp_path)
    _write_run(runs_dir, "air_asr_14", 0, [(200, 0.8), (400, 0.9)])
    _write_run(runs_dir, "air_asr_14", 1, [(200, 0.6), (400, 0.7)])
    _write_run(runs_dir, "air_asr_14", 2, [(200, 0.5)])  # cut short
    _write_run(runs_dir, "air_14", 0, [(200, 0.1), (400, 0.3)])
    runs = [_run(runs_dir, c, s) for c, s in (("air_14", 0), ("air_pprior_14", 0),
                                              ("air_asr_14", 0), ("air_asr_14", 1),
                                              ("air_asr_14", 2))]
    table = reproduce.summarize(runs, 400, reproduce.METRICS[1], last=2)
    assert table["air_asr_14"]["seeds"] == [0, 1]
    mean, std = table["air_asr_14"]["acc"]  # seeds: mean of 0.8, 0.9 and of 0.6, 0.7
    assert mean == pytest.approx(0.75) and std == pytest.approx(0.1)
    assert table["air_pprior_14"]["seeds"] == [] and table["air_pprior_14"]["runs"] == {0: None}
    text = report.markdown_table(1, {"14": table}, 400, last=2)
    line = [l for l in text.splitlines() if "`air_asr_14`" in l][0]
    assert line.startswith("|  | AIR-ASR (`air_asr_14`) | 2 |")  # the row's name on its first line
    assert "| Multi-MNIST, 1 or 4 digits | AIR (`air_14`) |" in text
    assert "0.75 ± 0.10 | 0.96 ± 0.01" in line  # ours, then the paper's ACC
    assert "70.0 ± 0.0 | 41.1 ± 7.1" in line  # ours, then the paper's SE (41.05, half up)
    pprior = [l for l in text.splitlines() if "`air_pprior_14`" in l][0]
    assert "| 0 | – | 519.1 ± 5.5 |" in pprior  # no seed finished: no number of ours
    runs_text = report.per_run_table({"14": table}, 400)
    assert "| `air_asr_14` seed 2 | 200 (of 400) | 1 |" in runs_text
    assert "| `air_pprior_14` seed 0 | – |" in runs_text


def test_a_variant_without_runs_is_left_out_but_a_paper_config_stays(tmp_path):
    runs_dir = str(tmp_path)
    _write_run(runs_dir, "air_asr_13+faithful", 0, [(200, 0.9)])
    rows = {}
    for row in ("13", "14"):  # 'asr/faithful:1' plans both rows; only row 13's was trained
        runs = [_run(runs_dir, c, 0) for c in (f"air_{row}", f"air_asr_{row}",
                                               f"air_asr_{row}+faithful")]
        rows[row] = reproduce.summarize(runs, 200, reproduce.METRICS[1], last=1)
    assert list(rows["13"]) == ["air_13", "air_asr_13", "air_asr_13+faithful"]
    assert list(rows["14"]) == ["air_14", "air_asr_14"]  # untrained paper runs stay
    text = report.markdown_table(1, rows, 200, last=1)
    assert "`air_asr_13+faithful`) | 1 |" in text and "air_asr_14+faithful" not in text
    assert "air_asr_14+faithful" not in report.per_run_table(rows, 200)
    assert "| `air_asr_14` seed 0 | – |" in report.per_run_table(rows, 200)


def test_table_2_has_no_count_metric(tmp_path):
    runs_dir = str(tmp_path)
    _write_run(runs_dir, "air_asr_dsprites_overlap", 0, [(200, 0.0)])
    runs = [_run(runs_dir, "air_asr_dsprites_overlap", 0)]
    table = reproduce.summarize(runs, 200, reproduce.METRICS[2])
    text = report.markdown_table(2, {"dsprites_overlap": table}, 200)
    assert "ACC" not in text.splitlines()[2] and "20.9 ± 2.1" in text  # paper SE


def test_plan_rows_seeds_and_variants(tmp_path):
    runs = reproduce.plan(str(tmp_path), ["13", "14"], asr_seeds=2, baseline_seeds=1,
                          variants=["size:1", "asr/faithful"], variant_seeds=1)
    names = [(r.name, r.seed) for r in runs]
    seed0 = [n for n in names if n[1] == 0]
    assert names[:len(seed0)] == seed0  # every seed 0 first: a partial pass covers every row
    assert set(seed0) == {("air_13", 0), ("air_pprior_13", 0), ("air_asr_13", 0),
                          ("air_asr_13+size", 0), ("air_asr_13+faithful", 0), ("air_14", 0),
                          ("air_pprior_14", 0), ("air_asr_14", 0), ("air_asr_14+size", 0),
                          ("air_asr_14+faithful", 0)}
    assert [n for n in names if n[1] == 1] == [("air_asr_13", 1), ("air_asr_14", 1)]
    assert runs[0].workdir == os.path.join(str(tmp_path), "air_13_s0")
    assert reproduce.row_runs("13", ["size"])[-1] == "air_asr_13+size"
    with pytest.raises(ValueError, match="variant 'size' fits no run of row mnist_overlap"):
        reproduce.row_runs("mnist_overlap", ["size"])  # the count rows' overlay
    with pytest.raises(ValueError, match="row '99'"):
        reproduce.plan(str(tmp_path), ["99"])
    with pytest.raises(ValueError, match="variant 'size' fits no run"):
        reproduce.plan(str(tmp_path), ["mnist_overlap"], variants=["size"])
    assert reproduce.display_name("air_asr_13+size") == "AIR-ASR (size)"
    assert reproduce.row_of("air_pprior_dsprites_overlap") == "dsprites_overlap"
    assert [reproduce.model_of(c) for c in ("air_24", "air_pprior_24", "air_asr_13+size")] == [
        "air", "pprior", "asr"]
    three = reproduce.plan(str(tmp_path), ["13"], asr_seeds=1, baseline_seeds=0,
                           variants=["size:3", "asr/faithful:1", "floor20k:2"])
    assert [(r.name, r.seed) for r in three] == [
        ("air_asr_13", 0), ("air_asr_13+size", 0), ("air_asr_13+faithful", 0),
        ("air_13+floor20k", 0), ("air_asr_13+size", 1), ("air_13+floor20k", 1),
        ("air_asr_13+size", 2)]
    assert three[1].configs == ["air_asr_13", "size"]
    # without a model, a variant is every model's run that the overlays fit
    assert reproduce.row_runs("24", ["faithful"])[3:] == [
        "air_24+faithful", "air_pprior_24+faithful", "air_asr_24+faithful"]
    assert reproduce.display_name("air_13+floor20k") == "AIR (floor20k)"
    assert reproduce.paper_row("air_13+floor20k")["acc"] == (0.81, 0.23)
    with pytest.raises(ValueError, match="model 'asrr'"):
        reproduce.plan(str(tmp_path), ["13"], variants=["asrr/size"])
    with pytest.raises(ValueError, match="seeds 'x'"):
        reproduce.parse_variant("size:x")
    with pytest.raises(ValueError, match="'size_decay'"):
        reproduce.parse_variant("size_decay")  # not an overlay: overlays join with '+'
    with pytest.raises(ValueError, match="does not fit model 'pprior'"):
        reproduce.row_runs("13", ["pprior/size"])
    both = reproduce.plan(str(tmp_path), ["14", "dsprites_overlap"], asr_seeds=0,
                          baseline_seeds=0, variants=["asr/size+decay:1", "asr/decay:1"])
    assert [r.name for r in both] == ["air_asr_14+size+decay", "air_asr_14+decay",
                                      "air_asr_dsprites_overlap+decay"]
    assert both[0].configs == ["air_asr_14", "size", "decay"]
    assert reproduce.display_name("air_asr_14+size+decay") == "AIR-ASR (size+decay)"
    assert reproduce.variant_of("air_asr_14+size+decay") == "size+decay"
    assert reproduce.paper_row("air_asr_14+size+decay") == reproduce.paper_row("air_asr_14")
    assert reproduce.paper_row("air_asr_13+faithful")["se"] == (28.84, 1.11)


def test_train_runs_skips_finished_runs_and_resumes_the_others(tmp_path, monkeypatch):
    runs_dir = str(tmp_path)
    _write_run(runs_dir, "air_asr_14", 0, [(200, 0.5), (400, 0.9)])  # finished at 400
    _write_run(runs_dir, "air_asr_14", 1, [(200, 0.5)])  # cut short
    runs = [_run(runs_dir, "air_asr_14", s) for s in range(3)]
    started, alive, envs = [], [], []
    # this process applied XLA flags (as train_eval does): the trainers decide their own
    monkeypatch.setattr(reproduce.xla_cpu, "_applied", ["--xla_cpu_prefer_vector_width=512"])
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/d --xla_cpu_prefer_vector_width=512")

    class FakeProcess:
        def __init__(self, cmd, **kwargs):
            started.append(cmd)
            envs.append(kwargs["env"])
            alive.append(self)
            self.max_alive = len(alive)
            self.polls = 0
            self.returncode = None

        def poll(self):
            self.polls += 1
            if self.polls > 1:
                self.returncode = 0
                if self in alive:
                    alive.remove(self)
            return self.returncode

    monkeypatch.setattr(reproduce.subprocess, "Popen", FakeProcess)
    monkeypatch.setattr(reproduce.time, "sleep", lambda s: None)
    codes = reproduce.train_runs(runs, 400, parallel=1, threads=1, max_minutes=30,
                                 log=lambda *a: None)
    assert sorted(codes) == [runs[1].workdir, runs[2].workdir] and set(codes.values()) == {0}
    cmd = started[0]
    assert cmd[cmd.index("--workdir") + 1] == runs[1].workdir
    assert cmd[cmd.index("--seed") + 1] == "1" and cmd[cmd.index("--threads") + 1] == "1"
    assert "train_eval.num_steps = 400" in cmd and cmd[cmd.index("--max_minutes") + 1] == "30"
    assert len(started) == 2 and os.path.exists(runs[2].workdir + ".log")
    assert {env["XLA_FLAGS"] for env in envs} == {"--xla_dump_to=/tmp/d"}


def test_archive_copies_the_small_results_only(tmp_path):
    runs_dir = str(tmp_path / "runs")
    workdir = _write_run(runs_dir, "air_13", 0, [(200, 0.1)],
                         extra_files=("summary.json", "config.gin", "invocations.jsonl"))
    open(os.path.join(workdir, "ckpt", "ckpt-200.index"), "w").write("big")
    (target,) = report.archive([_run(runs_dir, "air_13", 0), _run(runs_dir, "air_13", 1)],
                                  str(tmp_path / "archive"))
    assert sorted(os.listdir(target)) == ["config.gin", "invocations.jsonl", "log.txt",
                                          "metrics.jsonl", "summary.json"]


def test_replace_section_keeps_the_rest_of_the_page(tmp_path):
    path = str(tmp_path / "R.md")
    open(path, "w").write("# Results\n\n<!-- begin table1 -->\nold\n<!-- end table1 -->\n\nafter\n")
    report.replace_section(path, "table1", "new | table")
    report.replace_section(path, "table2", "second")
    assert open(path).read() == ("# Results\n\n<!-- begin table1 -->\nnew | table\n"
                                 "<!-- end table1 -->\n\nafter\n\n<!-- begin table2 -->\n"
                                 "second\n<!-- end table2 -->\n")


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
    archived = tmp_path / "archived"  # an archive without log.txt: invocations.jsonl's times
    archived.mkdir()
    with open(archived / "invocations.jsonl", "w") as f:
        for stamp in ("2026-01-01T10:00:00", "2026-01-01T12:00:00"):
            f.write(json.dumps(dict(time=stamp, start_step=0)) + "\n")
    assert reproduce.training_minutes(str(archived), records, 400) == 9.0


def test_a_new_machine_reads_archived_runs_and_trains_the_rest(tmp_path, monkeypatch):
    runs_dir, archive_dir = str(tmp_path / "runs"), str(tmp_path / "archive")
    _write_run(archive_dir, "air_asr_14", 0, [(200, 0.5), (400, 0.9)])  # finished elsewhere
    _write_run(archive_dir, "air_asr_14", 1, [(200, 0.4)], extra_files=("summary.json",))
    _write_run(runs_dir, "air_asr_14", 2, [(200, 0.3)])  # on this machine, cut short
    runs = reproduce.plan(runs_dir, ["14"], asr_seeds=3, baseline_seeds=0,
                          archive_dir=archive_dir)
    done, cut, here = runs
    assert (done.results, cut.results, here.results) == (
        reproduce.workdir_for(archive_dir, "air_asr_14", 0),
        reproduce.workdir_for(archive_dir, "air_asr_14", 1), here.workdir)
    started, logged = [], []

    class FakeProcess:
        def __init__(self, cmd, **kwargs):
            started.append(cmd[cmd.index("--workdir") + 1])
            self.returncode = 0

        def poll(self):
            return self.returncode

    monkeypatch.setattr(reproduce.subprocess, "Popen", FakeProcess)
    monkeypatch.setattr(reproduce.time, "sleep", lambda s: None)
    reproduce.train_runs(runs, 400, parallel=2, log=logged.append)
    assert started == [cut.workdir, here.workdir]  # the archived cut run trains again, here
    assert any("keeps no checkpoint" in m and cut.workdir in m for m in logged)
    table = reproduce.summarize(runs, 400, ("acc",), last=1)["air_asr_14"]
    assert table["seeds"] == [0] and table["acc"] == (0.9, 0.0)
    assert table["runs"][1]["step"] == 200 and not table["runs"][1]["complete"]
    # once the new seed-1 run has evaluations, it is read and archived over the old one
    _write_run(runs_dir, "air_asr_14", 1, [(200, 0.6)])
    assert cut.results == cut.workdir
    report.archive(runs, archive_dir)
    assert workdir_lib.read_metrics(cut.archived)[0]["acc"] == 0.6
    assert not os.path.exists(os.path.join(cut.archived, "summary.json"))  # the old run's
    assert workdir_lib.read_metrics(done.archived)[-1]["acc"] == 0.9  # left as it was


def test_minutes_of_runs_without_a_start_record_are_left_out(tmp_path):
    import time

    start = time.mktime(time.strptime("2026-01-01 00:00:00", "%Y-%m-%d %H:%M:%S"))
    timed = _write_run(str(tmp_path), "air_asr_14", 0, [(200, 0.5)])
    with open(os.path.join(timed, "metrics.jsonl"), "w") as f:  # evaluated 6 minutes in
        f.write(json.dumps(dict(step=200, wall_time=start + 360, acc=0.5, se=1.0, nelbo=1.0,
                                miou=0.5)) + "\n")
    untimed = _write_run(str(tmp_path), "air_asr_14", 1, [(200, 0.7)])
    os.remove(os.path.join(untimed, "log.txt"))  # trained before runs kept a start record
    runs = [_run(str(tmp_path), "air_asr_14", s) for s in (0, 1)]
    rows = {"14": reproduce.summarize(runs, 200, reproduce.METRICS[1], last=1)}
    assert rows["14"]["air_asr_14"]["minutes"] == 6.0 and rows["14"]["air_asr_14"]["seeds"] == [0, 1]
    per_run = report.per_run_table(rows, 200)
    assert "| `air_asr_14` seed 0 | 200 | 1 | 6 |" in per_run
    assert "| `air_asr_14` seed 1 | 200 | 1 | – |" in per_run and "nan" not in per_run


def test_reproduce_tool_reports_from_disk(tmp_path, repo_root):
    runs, out_dir = str(tmp_path / "runs"), str(tmp_path / "out")
    results_md = str(tmp_path / "RESULTS.md")
    open(results_md, "w").write("# R\n<!-- begin table1 -->\n<!-- end table1 -->\ntext\n")
    _write_run(runs, "air_asr_13+size", 0, [(200, 0.5), (400, 0.9)])
    air = _write_run(runs, "air_13", 0, [(200, 0.1), (400, 0.2)])
    with open(os.path.join(air, "invocations.jsonl"), "w") as f:  # resumed with newer code
        for code in ({"commit": "abc1234"}, {"commit": "abc1234"},
                     {"commit": "def5678", "dirty": True, "diff_sha256": "0123abcd" * 8}):
            f.write(json.dumps(dict(code, machine="EPYC")) + "\n")
    tool = [sys.executable, str(repo_root / "tools" / "reproduce.py"), "--report_only",
            "--runs_dir", runs, "--out_dir", out_dir, "--nofigures", "--seeds", "1",
            "--table", "1", "--rows", "13", "14", "--steps", "400", "--last", "1",
            "--results_md", results_md]
    out = subprocess.run(tool + ["--variants", "size"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    table = open(os.path.join(out_dir, "table1.md")).read()
    # one seed: its value, no "± 0.0"; a variant leaves the paper's cells to its plain config
    assert "| AIR-ASR (size) (`air_asr_13+size`) | 1 | 500.0 | – | 0.90 | – |" in table
    assert "| AIR (`air_13`) | 1 |" in table and "| 404.4 ± 4.6 |" in table
    assert report._round(0.125, 2) == "0.13" and report._round(28.84, 1) == "28.8"
    assert table.strip() in open(results_md).read() and open(results_md).read().endswith("text\n")
    assert os.path.exists(os.path.join(out_dir, "runs", "air_13_s0", "metrics.jsonl"))
    assert "Multi-MNIST, 1 or 4 digits" in table  # both rows of `--rows 13 14`
    # each run's machines and code, once each; uncommitted changes by their diff's hash
    assert "| EPYC | abc1234; def5678+0123abcd |" in table
    # a scratch --out_dir reads finished runs from the archive named by --archive_dir
    scratch = str(tmp_path / "scratch")
    out = subprocess.run([a.replace(runs, str(tmp_path / "empty")).replace(out_dir, scratch)
                          for a in tool] + ["--archive_dir", os.path.join(out_dir, "runs")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| AIR (`air_13`) | 1 | 500.0 |" in open(os.path.join(scratch, "table1.md")).read()
    assert not os.path.exists(os.path.join(scratch, "runs"))
    out = subprocess.run(tool + ["--variants", "bogus"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "variant 'bogus'" in out.stderr
    assert "not among ['faithful', 'size', 'decay', 'floor20k']" in out.stderr


def test_figures_markdown_links_what_is_on_disk(tmp_path):
    out_dir = tmp_path / "docs" / "results"
    row = out_dir / "13"
    row.mkdir(parents=True)
    for name in ("13_curves.png", "13_counts.png", "air_asr_13+size_reconstruction.png",
                 "air_13_reconstruction.png", "air_13_generation.png"):
        (row / name).write_bytes(b"")
    text = report.figures_markdown(["13", "24"], str(out_dir), str(tmp_path / "docs"))
    lines = text.splitlines()
    assert lines[0] == "### Multi-MNIST, 1 or 3 digits"
    assert "![13 curves](results/13/13_curves.png)" in lines
    assert lines.index("![13 counts](results/13/13_counts.png)") > lines.index(
        "![13 curves](results/13/13_curves.png)")
    grid_rows = [l for l in lines if l.startswith("| AIR")]
    # the row's order (AIR before the ASR variant); a missing generation grid is a dash
    assert grid_rows == [
        "| AIR (`air_13`) | ![](results/13/air_13_reconstruction.png) | "
        "![](results/13/air_13_generation.png) |",
        "| AIR-ASR (size) (`air_asr_13+size`) | "
        "![](results/13/air_asr_13+size_reconstruction.png) | – |"]
    assert "2 or 4" not in text  # no folder for row 24: no section


@pytest.mark.slow
def test_write_figures_grids_only_for_runs_at_the_budget(tmp_path):
    """A run with the budget's checkpoint gets its grids; one still short of it gets only its
    curve (its grids would not be the budget's)."""
    from asr_tf.run import config, loop
    from conftest import SMALL_RUN

    runs_dir = str(tmp_path / "runs")
    done = reproduce.Run("air_asr_13", 0, reproduce.workdir_for(runs_dir, "air_asr_13", 0))
    short = reproduce.Run("air_13", 0, reproduce.workdir_for(runs_dir, "air_13", 0))
    for run, steps in ((done, 3), (short, 3)):
        config.parse(run.configs, SMALL_RUN + [f"train_eval.seed = {run.seed}"])
        loop.train_eval(run.workdir, max_steps=steps)
    os.remove(os.path.join(short.workdir, "ckpt", "ckpt-3.index"))  # as if cut before step 3
    paths = report.write_figures([done, short], "13", str(tmp_path / "out"), 3,
                                 count_curves=True)
    assert sorted(paths) == ["air_asr_13_generation", "air_asr_13_reconstruction", "counts",
                             "curves"]
    for path in paths.values():
        assert os.path.getsize(path) > 1000  # a PNG with content
