"""The training toolchain: configs, smoke training with TensorBoard read-back, exact resume,
corrupt checkpoints, the run's record, evaluation and figures from a workdir."""
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import gin
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from asr_tf import config, evaluation, runs, summaries, train_lib, training
from conftest import SMALL_RUN as SMALL


def _tensors(logdir, tag):
    """(step, value) of ``tag``, in step order (a duplicate step stays). The accumulator reads the
    event files in name order, and two files of one second differ only by a per-process counter
    (``...tfevents.<sec>.<host>.<pid>.11.v2`` sorts before ``....9.v2``)."""
    acc = EventAccumulator(logdir, size_guidance={"tensors": 0})
    acc.Reload()
    return sorted(((e.step, float(tf.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)),
                  key=lambda step_value: step_value[0])


def test_every_config_parses():
    names = config.available_configs()
    # 15 paper runs, their faithful twins, three ASR size variants, row 14's size + rate decay,
    # Multi-dSprites overlap's rate decay, three AIR schedule variants
    assert len(names) == 38
    assert len([n for n in names if n.endswith("_faithful")]) == 15
    for name in names:
        config.parse([name])
        spec = runs.run_spec()
        model_kind = gin.query_parameter("build_model.kind")
        assert model_kind in ("air", "pprior")
        assert spec.name in ("mnist_13", "mnist_14", "mnist_24", "mnist_bbox3", "dsprites_bbox3")
        edge = gin.query_parameter("Quirks.sampler_edge")
        assert edge == ("hard" if name.endswith("_faithful") else "zero_pad")


def _constraints():
    return dict(runs.build_components(runs.run_spec())[1].constraints)


def test_paper_weights_in_configs():
    config.parse(["air_asr_14"])
    assert _constraints() == {"count_min": 10.0, "count_margin": 100.0}
    config.parse(["air_asr_dsprites_overlap_faithful"])
    # -gb = 1 ties F1 and F2-F5 (Q18); F7 10, F6 20
    assert _constraints() == {"overlap": 1.0, "out_of_image": 1.0, "size_equality": 10.0,
                              "area": 20.0}
    assert gin.query_parameter("make_optimizer.learning_rate") == 1e-4
    assert runs.run_spec().canvas_px == 64
    config.parse(["air_asr_13"])
    assert "size_equality" not in _constraints()  # the paper's row 13: counts only
    for name in ("air_asr_13_size", "air_asr_14_size", "air_asr_24_size"):
        config.parse([name])
        assert _constraints() == {"count_min": 10.0, "count_margin": 100.0, "size_equality": 10.0}
        assert runs.run_spec().name == "mnist_" + name.split("_")[2]
    for name in ("air_13", "air_pprior_24", "air_mnist_overlap"):
        config.parse([name])
        assert _constraints() == {}


def test_row_14_decay_variant_is_the_size_variant_with_the_rate_cut_at_14000():
    config.parse(["air_asr_14_size_decay"])
    assert _constraints() == {"count_min": 10.0, "count_margin": 100.0, "size_equality": 10.0}
    model, _, _ = runs.build_components(runs.run_spec())
    optimizer = training.make_optimizer(model)
    # 1e-3 for the updates of steps 1..14,000, 1e-4 from step 14,001 on
    assert training.update_rate(optimizer, 14000) == pytest.approx(1e-3)
    assert training.update_rate(optimizer, 14001) == pytest.approx(1e-4)
    config.parse(["air_asr_14_size"])
    optimizer = training.make_optimizer(runs.build_components(runs.run_spec())[0])
    assert training.update_rate(optimizer, 20000) == pytest.approx(1e-3)


def test_dsprites_overlap_decay_variant_is_its_row_config_with_the_rate_cut_at_14000():
    config.parse(["air_asr_dsprites_overlap"])
    plain = _constraints()
    config.parse(["air_asr_dsprites_overlap_decay"])
    assert _constraints() == plain and "overlap" in plain
    optimizer = training.make_optimizer(runs.build_components(runs.run_spec())[0])
    assert training.update_rate(optimizer, 14000) == pytest.approx(1e-3)
    assert training.update_rate(optimizer, 14001) == pytest.approx(1e-4)


def test_unknown_config_and_parameter_are_errors():
    with pytest.raises(ValueError, match="unknown config 'air_asr_99'.*air_asr_14"):
        config.parse(["air_asr_99"])
    with pytest.raises(ValueError, match="bogus"):
        config.parse(["air_asr_13"], ["train_eval.bogus = 1"])
    with pytest.raises(ValueError, match="unknown constraint 'bogus'"):
        config.parse(["air_asr_13"], ["Objective.constraints = [('bogus', 1.0)]"])
        runs.build_components(runs.run_spec())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["air_13", "air_pprior_13", "air_asr_13"])
def test_smoke_train_writes_tensorboard(tmp_path, name):
    config.parse([name], SMALL)
    workdir = str(tmp_path / name)
    summary = train_lib.train_eval(workdir, max_steps=3)
    assert summary["step"] == 3
    losses = _tensors(os.path.join(workdir, "train"), "loss")
    assert [s for s, _ in losses] == [1, 2, 3]
    assert all(np.isfinite(v) for _, v in losses)
    for tag in ("nelbo", "kl_what", "overlap", "learning_rate", "steps_per_sec"):
        assert len(_tensors(os.path.join(workdir, "train"), tag)) == 3
    evals = {tag: _tensors(os.path.join(workdir, "eval"), tag) for tag in ("acc", "se", "nelbo", "miou")}
    assert all(len(v) == 1 and v[0][0] == 3 for v in evals.values())
    assert 0.0 <= evals["acc"][0][1] <= 1.0 and 0.0 <= evals["miou"][0][1] <= 1.0
    lines = open(os.path.join(workdir, "metrics.jsonl")).read().splitlines()
    assert [json.loads(l)["step"] for l in lines] == [3]
    saved = json.load(open(os.path.join(workdir, "summary.json")))
    assert saved["final"]["step"] == 3 and set(saved) >= {"final", "best", "best_by_test"}
    assert os.path.exists(os.path.join(workdir, "operative_config.gin"))


class _Crash(Exception):
    pass


@pytest.mark.slow
def test_resume_after_crash_is_exact_and_logs_nothing_twice(tmp_path, monkeypatch):
    # Uninterrupted reference: 6 steps.
    config.parse(["air_asr_13"], SMALL)
    ref_dir = str(tmp_path / "ref")
    train_lib.train_eval(ref_dir, max_steps=6)
    ref_model, _ = runs.load_trained(ref_dir)
    ref_weights = [w.copy() for w in ref_model.get_weights()]

    # Crash at step 5 (the last checkpoint is step 3), then the same command again.
    config.parse(["air_asr_13"], SMALL)
    run_dir = str(tmp_path / "run")
    real_step = training.train_step
    calls = {"n": 0}

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise _Crash()
        return real_step(*args, **kwargs)

    monkeypatch.setattr(training, "train_step", crashing)
    with pytest.raises(_Crash):
        train_lib.train_eval(run_dir, max_steps=6)
    monkeypatch.setattr(training, "train_step", real_step)
    config.parse(["air_asr_13"], SMALL)
    train_lib.train_eval(run_dir, max_steps=6)

    model, _ = runs.load_trained(run_dir)
    for a, b in zip(ref_weights, model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    steps = [s for s, _ in _tensors(os.path.join(run_dir, "train"), "loss")]
    assert steps == [1, 2, 3, 4, 5, 6]  # steps 4 and 5 ran twice but were logged once
    ref_losses = _tensors(os.path.join(ref_dir, "train"), "loss")
    np.testing.assert_allclose([v for _, v in _tensors(os.path.join(run_dir, "train"), "loss")],
                               [v for _, v in ref_losses], rtol=1e-4)
    lines = open(os.path.join(run_dir, "metrics.jsonl")).read().splitlines()
    assert [json.loads(l)["step"] for l in lines] == [3, 6]


@pytest.mark.slow
def test_resume_with_another_rate_and_schedule(tmp_path):
    # 3 steps at 1e-3, resumed at 5e-4 times 0.1 from step 4 on (the update that makes step 5):
    # the logged rate is the configured one (tests/test_training_step.py: the updates too).
    workdir = str(tmp_path / "w")
    config.parse(["air_asr_13"], SMALL + ["make_optimizer.learning_rate = 1e-3"])
    train_lib.train_eval(workdir, max_steps=3)
    config.parse(["air_asr_13"], SMALL + ["make_optimizer.learning_rate = 5e-4",
                                          "make_optimizer.decay_steps = (4,)",
                                          "make_optimizer.decay_factors = (0.1,)"])
    train_lib.train_eval(workdir, max_steps=6)
    rates = _tensors(os.path.join(workdir, "train"), "learning_rate")
    assert [s for s, _ in rates] == [1, 2, 3, 4, 5, 6]
    assert [v for _, v in rates] == pytest.approx([1e-3] * 3 + [5e-4, 5e-5, 5e-5])


@pytest.mark.slow
def test_bad_checkpoints_name_the_file_and_are_kept(tmp_path):
    config.parse(["air_pprior_13"], SMALL)
    workdir = str(tmp_path / "w")
    train_lib.train_eval(workdir, max_steps=3)

    # A checkpoint of another configuration (a different LSTM width) is refused clearly.
    config.parse(["air_pprior_13"], SMALL + ["build_model.lstm_units = 16"])
    with pytest.raises(runs.CheckpointError, match="ckpt-3"):
        train_lib.train_eval(workdir, max_steps=6)

    # A corrupt data file too; nothing is deleted or rewritten.
    data_files = glob.glob(os.path.join(workdir, "ckpt", "ckpt-3.data-*"))
    assert data_files
    with open(data_files[0], "r+b") as f:
        f.write(b"\x00garbage" * 64)
    before = sorted(os.listdir(os.path.join(workdir, "ckpt")))
    size = os.path.getsize(data_files[0])
    config.parse(["air_pprior_13"], SMALL)
    with pytest.raises(runs.CheckpointError, match="ckpt-3"):
        train_lib.train_eval(workdir, max_steps=6)
    assert sorted(os.listdir(os.path.join(workdir, "ckpt"))) == before
    assert os.path.getsize(data_files[0]) == size


@pytest.mark.slow
def test_evaluate_and_generate_tools(tmp_path, repo_root):
    config.parse(["air_asr_13"], SMALL)
    workdir = str(tmp_path / "w")
    train_lib.train_eval(workdir, max_steps=3)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    out = subprocess.run([sys.executable, str(repo_root / "tools" / "evaluate.py"),
                          "--workdir", workdir, "--num_test", "16"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout[out.stdout.index("{"):])
    assert set(result) >= {"acc", "se", "nelbo", "miou"}
    png = str(tmp_path / "grid.png")
    out = subprocess.run([sys.executable, str(repo_root / "tools" / "generate.py"),
                          "--workdir", workdir, "--out", png, "--reconstruct", "--num", "16"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    from PIL import Image

    assert Image.open(png).size[0] > 100


def test_train_tool_rejects_unknown_config(repo_root):
    out = subprocess.run([sys.executable, str(repo_root / "tools" / "train.py"),
                          "--config", "air_asr_99"], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "unknown config 'air_asr_99'" in out.stderr


def _wait_for(predicate, proc, timeout_s):
    start = time.time()
    while time.time() - start < timeout_s:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.2)
    return False


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _served_steps(port, run, tag):
    """The steps of ``tag`` that a TensorBoard server serves (the scalars plugin's HTTP API,
    TensorBoard 2.21: [[wall_time, step, value], ...]); [] while it has none."""
    query = urllib.parse.urlencode({"run": run, "tag": tag})
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?{query}",
                                    timeout=10) as response:
            return [int(step) for _, step, _ in json.load(response)]
    except (OSError, ValueError):  # not up yet, or no such run or tag yet (HTTP 400)
        return []


@pytest.mark.slow
def test_kill9_resume_live_tensorboard_via_the_train_tool(tmp_path, repo_root):
    """The README's commands: ``tools/train.py --config C`` trains into runs/C, and the same
    command resumes it after a kill -9; SIGTERM stops cleanly (evaluates, checkpoints, exit 0).
    A TensorBoard server started over runs/ beside the training serves the training scalars
    live from the first steps on, and after the kill and the resume, every step exactly once."""
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    workdir = str(runs_dir / "air_asr_13")
    train_file = lambda: glob.glob(os.path.join(workdir, "train", "*tfevents*"))  # noqa: E731
    cmd = [sys.executable, str(repo_root / "tools" / "train.py"), "--config", "air_asr_13",
           "--max_steps", "500", "--threads", "1"] + [
        f"--gin_param={b}" for b in SMALL + ["train_eval.checkpoint_every = 10"]]
    port = _free_port()
    tensorboard = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(runs_dir), "--host",
         "127.0.0.1", "--port", str(port), "--reload_interval", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [tensorboard]
    try:
        start = time.time()
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        procs.append(proc)
        served = lambda run="air_asr_13/train": _served_steps(port, run, "loss")  # noqa: E731
        assert _wait_for(lambda: served(), proc, 400), "no training scalar served"
        print(f"first training scalar served {time.time() - start:.1f} s after the start")
        live = served()
        assert live == list(range(1, len(live) + 1))  # live, in order

        def logged():
            return max([s for s, _ in _tensors(os.path.join(workdir, "train"), "loss")],
                       default=0)

        # kill -9 at least 2 steps after a checkpoint (>= 10), well before the next one
        assert _wait_for(lambda: logged() >= 12 and 2 <= logged() - runs.restored_step(workdir)
                         <= 6, proc, 400), "no checkpoint"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at, resumed_from = logged(), runs.restored_step(workdir)
        assert 10 <= resumed_from < killed_at
        assert _wait_for(lambda: max(served(), default=0) == killed_at, tensorboard, 60)

        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)  # the same command
        procs.append(proc)
        assert _wait_for(lambda: runs.restored_step(workdir) >= resumed_from + 20, proc, 400)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        last = json.load(open(os.path.join(workdir, "summary.json")))["step"]
        assert runs.restored_step(workdir) == last < 500
        # each invocation set XLA's code generation flags before compiling (asr_tf/xla_cpu.py)
        log_txt = open(os.path.join(workdir, "log.txt")).read()
        assert log_txt.count("--xla_cpu_enable_concurrency_optimized_scheduler=true") == 2
        starts = [json.loads(line)["start_step"]
                  for line in open(os.path.join(workdir, "invocations.jsonl"))]
        assert starts == [0, resumed_from]  # the same command resumed the same workdir

        every_step = list(range(1, last + 1))
        assert [s for s, _ in _tensors(os.path.join(workdir, "train"), "loss")] == every_step
        evals = sorted(set(range(3, last + 1, 3)) | {last})
        assert [s for s, _ in _tensors(os.path.join(workdir, "eval"), "acc")] == evals
        lines = open(os.path.join(workdir, "metrics.jsonl")).read().splitlines()
        assert [json.loads(line)["step"] for line in lines] == evals
        # The server that watched the killed run: each step once, once it has read the rest.
        _wait_for(lambda: served() == every_step, tensorboard, 60)
        assert served() == every_step
        assert sorted(_served_steps(port, "air_asr_13/eval", "acc")) == evals
        assert len(_served_steps(port, "air_asr_13/eval", "acc")) == len(evals)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def test_train_tool_help_lists_the_configs_and_the_default_workdir(repo_root):
    out = subprocess.run([sys.executable, str(repo_root / "tools" / "train.py"), "--help"],
                         capture_output=True, text=True, timeout=120)
    listed = " ".join(out.stdout.split())  # absl wraps the help text
    assert "The configs: " + ", ".join(config.available_configs()) + ";" in listed
    assert "default runs/<config>" in listed
    assert runs.default_workdir(["configs/air_asr_14.gin"]) == os.path.join("runs", "air_asr_14")
    assert runs.default_workdir(["air_asr_13", "extra.gin"]) == os.path.join(
        "runs", "air_asr_13+extra")


def test_box_diagnostics_and_se_by_count_hand_worked():
    # Canvas 50 px. Image 0: boxes of 35 px (centred) and 15 px (shift 0.5, 0.5 -> centre 37.5,
    # extends to 45 < 50: inside); image 1: one 20 px box whose centre (x = 0) puts half of it
    # off the canvas; image 2: nothing present.
    out = {"present": np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]], np.float32),
           "scale": np.array([[0.7, 0.3, 0.9], [0.4, 0.9, 0.9], [0.5, 0.5, 0.5]], np.float32),
           "shift": np.array([[[0, 0], [0.5, 0.5], [0, 0]], [[-1, 0], [0, 0], [0, 0]],
                              [[0, 0], [0, 0], [0, 0]]], np.float32)}
    d = evaluation.box_diagnostics(out, 50)
    assert d["box_side_px"] == pytest.approx((35 + 15 + 20) / 3, rel=1e-5)
    assert d["box_abs_shift"] == pytest.approx((0 + 0 + 0.5 + 0.5 + 1 + 0) / 6, rel=1e-5)
    assert d["box_inside_frac"] == pytest.approx(2 / 3)
    assert d["box_side_ratio"] == pytest.approx(35 / 15, rel=1e-5)  # only image 0 has 2 boxes
    images = np.zeros([3, 4, 4, 1]); recon = np.zeros([3, 4, 4])
    images[0, 0, 0] = 1.0; images[1, :2, :2] = 1.0; recon[1, 0, 0] = 2.0  # clipped to 1
    se = evaluation.se_by_count(images, recon, np.array([3, 1, 3]))
    assert set(se) == {"se_1obj", "se_3obj"}
    assert se["se_1obj"] == pytest.approx(3.0) and se["se_3obj"] == pytest.approx(0.5)


def _logged(workdir):
    """(train loss (step, value)s, eval acc steps, metrics.jsonl steps) as readers find them."""
    path = os.path.join(workdir, "metrics.jsonl")
    lines = open(path).read().splitlines() if os.path.exists(path) else []
    return (_tensors(os.path.join(workdir, "train"), "loss"),
            [s for s, _ in _tensors(os.path.join(workdir, "eval"), "acc")],
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


def test_workdir_of_the_two_phase_commit_design_resumes(tmp_path):
    """Until 2026-11-30 summaries were staged and committed at checkpoints, with a marker."""
    workdir = str(tmp_path)
    run_log = summaries.RunLog(workdir, resumed_at=0)
    _log_steps(run_log, 1, 3, 1.0)
    run_log.close()
    staged = tmp_path / ".summaries_staging" / "6" / "train"
    staged.mkdir(parents=True)
    (staged / "events.out.tfevents.1.host.1.1.v2").write_bytes(b"")
    (tmp_path / "logged_through").write_text('{"logged_through": 6, "pending": {"stage": "6"}}')
    run_log = summaries.RunLog(workdir, resumed_at=3)
    assert sorted(os.listdir(workdir)) == ["eval", "metrics.jsonl", "train"]
    _log_steps(run_log, 4, 6, 10.0)
    run_log.close()
    assert _logged(workdir) == _expected_after_resume(6)
    with pytest.raises(ValueError, match="unknown summary run 'test'"):
        run_log.scalar("test", "loss", 1.0, 7)
