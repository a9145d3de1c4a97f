"""The training toolchain: configs, smoke training with TensorBoard read-back, exact resume,
corrupt checkpoints, evaluation and figures from a workdir."""
import glob
import json
import os
import subprocess
import sys

import gin
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from asr_tf import config, train_lib, training

# Small and fast: tiny LSTMs, batch 8, 16 test scenes, no XLA (compile time dominates tiny runs).
SMALL = [
    "build_model.lstm_units = 32",
    "train_eval.batch_size = 8",
    "train_eval.num_test = 16",
    "train_eval.eval_every = 3",
    "train_eval.log_every = 1",
    "train_eval.checkpoint_every = 3",
    "train_eval.image_every = 3",
    "train_eval.jit_compile = False",
    "train_eval.progress = False",
]


def _tensors(logdir, tag):
    acc = EventAccumulator(logdir, size_guidance={"tensors": 0})
    acc.Reload()
    return [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]


def test_every_config_parses():
    names = config.available_configs()
    # 15 paper runs, their faithful twins, one ASR learning variant, three AIR schedule variants
    assert len(names) == 34
    assert len([n for n in names if n.endswith("_faithful")]) == 15
    for name in names:
        config.parse([name])
        spec = train_lib.run_spec()
        model_kind = gin.query_parameter("build_model.kind")
        assert model_kind in ("air", "pprior")
        assert spec.name in ("mnist_13", "mnist_14", "mnist_24", "mnist_bbox3", "dsprites_bbox3")
        edge = gin.query_parameter("Quirks.sampler_edge")
        assert edge == ("hard" if name.endswith("_faithful") else "zero_pad")
    gin.clear_config()


def test_paper_weights_in_configs():
    config.parse(["air_asr_14"])
    assert gin.query_parameter("PenaltyWeights.gamma_ne") == 10.0
    assert gin.query_parameter("PenaltyWeights.gamma_m") == 100.0
    config.parse(["air_asr_dsprites_overlap_faithful"])
    assert gin.query_parameter("PenaltyWeights.gamma_b") == 1.0
    assert gin.query_parameter("PenaltyWeights.gamma_s") == 10.0
    assert gin.query_parameter("PenaltyWeights.gamma_a") == 20.0
    assert gin.query_parameter("make_optimizer.learning_rate") == 1e-4
    assert train_lib.run_spec().canvas_px == 64
    config.parse(["air_asr_13"])
    with pytest.raises(ValueError, match="gamma_s"):  # unbound: 0, the paper's row 13
        gin.query_parameter("PenaltyWeights.gamma_s")
    config.parse(["air_asr_13_size"])
    assert gin.query_parameter("PenaltyWeights.gamma_s") == 10.0
    assert gin.query_parameter("PenaltyWeights.gamma_ne") == 10.0
    assert train_lib.run_spec().name == "mnist_13"
    gin.clear_config()


def test_unknown_config_and_parameter_are_errors():
    with pytest.raises(ValueError, match="unknown config 'air_asr_99'.*air_asr_14"):
        config.parse(["air_asr_99"])
    with pytest.raises(ValueError, match="bogus"):
        config.parse(["air_asr_13"], ["train_eval.bogus = 1"])
    gin.clear_config()


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
    gin.clear_config()


class _Crash(Exception):
    pass


@pytest.mark.slow
def test_resume_after_crash_is_exact_and_logs_nothing_twice(tmp_path, monkeypatch):
    # Uninterrupted reference: 6 steps.
    config.parse(["air_asr_13"], SMALL)
    ref_dir = str(tmp_path / "ref")
    train_lib.train_eval(ref_dir, max_steps=6)
    ref_model, _ = train_lib.load_trained(ref_dir)
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

    model, _ = train_lib.load_trained(run_dir)
    for a, b in zip(ref_weights, model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    steps = [s for s, _ in _tensors(os.path.join(run_dir, "train"), "loss")]
    assert steps == [1, 2, 3, 4, 5, 6]  # steps 4 and 5 ran twice but were logged once
    ref_losses = _tensors(os.path.join(ref_dir, "train"), "loss")
    np.testing.assert_allclose([v for _, v in _tensors(os.path.join(run_dir, "train"), "loss")],
                               [v for _, v in ref_losses], rtol=1e-4)
    lines = open(os.path.join(run_dir, "metrics.jsonl")).read().splitlines()
    assert [json.loads(l)["step"] for l in lines] == [3, 6]
    gin.clear_config()


@pytest.mark.slow
def test_bad_checkpoints_name_the_file_and_are_kept(tmp_path):
    config.parse(["air_pprior_13"], SMALL)
    workdir = str(tmp_path / "w")
    train_lib.train_eval(workdir, max_steps=3)

    # A checkpoint of another configuration (a different LSTM width) is refused clearly.
    config.parse(["air_pprior_13"], SMALL + ["build_model.lstm_units = 16"])
    with pytest.raises(train_lib.CheckpointError, match="ckpt-3"):
        train_lib.train_eval(workdir, max_steps=6)

    # A corrupt data file too; nothing is deleted or rewritten.
    data_files = glob.glob(os.path.join(workdir, "ckpt", "ckpt-3.data-*"))
    assert data_files
    with open(data_files[0], "r+b") as f:
        f.write(b"\x00garbage" * 64)
    before = sorted(os.listdir(os.path.join(workdir, "ckpt")))
    size = os.path.getsize(data_files[0])
    config.parse(["air_pprior_13"], SMALL)
    with pytest.raises(train_lib.CheckpointError, match="ckpt-3"):
        train_lib.train_eval(workdir, max_steps=6)
    assert sorted(os.listdir(os.path.join(workdir, "ckpt"))) == before
    assert os.path.getsize(data_files[0]) == size
    gin.clear_config()


@pytest.mark.slow
def test_evaluate_and_generate_tools(tmp_path, repo_root):
    config.parse(["air_asr_13"], SMALL)
    workdir = str(tmp_path / "w")
    train_lib.train_eval(workdir, max_steps=3)
    gin.clear_config()
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
    import time

    start = time.time()
    while time.time() - start < timeout_s:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.5)
    return False


@pytest.mark.slow
def test_kill9_then_sigterm_via_the_train_tool(tmp_path, repo_root):
    """kill -9 mid-run, the same command resumes from the last checkpoint; SIGTERM stops
    cleanly (evaluates, checkpoints, exit 0) without losing steps; no step is logged twice."""
    import signal

    workdir = str(tmp_path / "w")
    cmd = [sys.executable, str(repo_root / "tools" / "train.py"), "--config", "air_asr_13",
           "--workdir", workdir, "--max_steps", "500"] + [f"--gin_param={b}" for b in SMALL]
    ckpts = lambda n: os.path.exists(os.path.join(workdir, "ckpt", f"ckpt-{n}.index"))  # noqa: E731
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _wait_for(lambda: ckpts(6), proc, 400), "no checkpoint at step 6"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert _wait_for(lambda: any(ckpts(n) for n in range(12, 40, 3)), proc, 400)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    last = summary["step"]
    assert ckpts(last) and last < 500
    steps = [s for s, _ in _tensors(os.path.join(workdir, "train"), "loss")]
    assert steps == list(range(1, last + 1))  # resumed at the checkpoint, nothing logged twice


def test_box_diagnostics_and_se_by_count_hand_worked():
    # Canvas 50 px. Image 0: boxes of 35 px (centred) and 15 px (shift 0.5, 0.5 -> centre 37.5,
    # extends to 45 < 50: inside); image 1: one 20 px box whose centre (x = 0) puts half of it
    # off the canvas; image 2: nothing present.
    out = {"present": np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]], np.float32),
           "scale": np.array([[0.7, 0.3, 0.9], [0.4, 0.9, 0.9], [0.5, 0.5, 0.5]], np.float32),
           "shift": np.array([[[0, 0], [0.5, 0.5], [0, 0]], [[-1, 0], [0, 0], [0, 0]],
                              [[0, 0], [0, 0], [0, 0]]], np.float32)}
    d = train_lib._box_diagnostics(out, 50)
    assert d["box_side_px"] == pytest.approx((35 + 15 + 20) / 3, rel=1e-5)
    assert d["box_abs_shift"] == pytest.approx((0 + 0 + 0.5 + 0.5 + 1 + 0) / 6, rel=1e-5)
    assert d["box_inside_frac"] == pytest.approx(2 / 3)
    assert d["box_side_ratio"] == pytest.approx(35 / 15, rel=1e-5)  # only image 0 has 2 boxes
    images = np.zeros([3, 4, 4, 1]); recon = np.zeros([3, 4, 4])
    images[0, 0, 0] = 1.0; images[1, :2, :2] = 1.0; recon[1, 0, 0] = 2.0  # clipped to 1
    se = train_lib._se_by_count(images, recon, np.array([3, 1, 3]))
    assert set(se) == {"se_1obj", "se_3obj"}
    assert se["se_1obj"] == pytest.approx(3.0) and se["se_3obj"] == pytest.approx(0.5)


def _logged(workdir):
    steps = [s for s, _ in _tensors(os.path.join(workdir, "train"), "loss")]
    path = os.path.join(workdir, "metrics.jsonl")
    lines = open(path).read().splitlines() if os.path.exists(path) else []
    return steps, [json.loads(line)["step"] for line in lines]


def _buffer_through(buf, first, last):
    for s in range(first, last + 1):
        buf.scalar("train", "loss", float(s), s)
    buf.metrics_line({"step": last})
    buf.flush(last)


@pytest.mark.parametrize("kill_at", ["staging", "marker", "commit_events", "commit_metrics",
                                     "commit_cleanup", "final_marker"])
def test_summary_commit_survives_a_kill_at_every_point(tmp_path, monkeypatch, kill_at):
    """A kill anywhere inside flush() leaves each step logged once after the resumed run."""
    workdir = str(tmp_path)
    _buffer_through(train_lib._SummaryBuffer(workdir), 1, 3)
    buf = train_lib._SummaryBuffer(workdir)
    real_replace, real_rmtree, real_marker = os.replace, train_lib.shutil.rmtree, buf._write_marker

    def crash_if(point):
        if point == kill_at:
            raise _Crash()

    def replace(src, dst):
        if "tfevents" in os.path.basename(src):
            crash_if("commit_events")
        return real_replace(src, dst)

    def marker(pending):
        crash_if("marker" if pending else "final_marker")
        return real_marker(pending)

    monkeypatch.setattr(buf, "_write_marker", marker)
    monkeypatch.setattr(train_lib.os, "replace", replace)
    monkeypatch.setattr(train_lib.shutil, "rmtree",
                        lambda p: crash_if("commit_cleanup") or real_rmtree(p))
    real_open = open

    def opener(path, mode="r", *a, **k):
        if str(path).endswith("metrics.jsonl") and "a" in mode:
            f = real_open(path, mode, *a, **k)
            f.write('{"step": 99, "torn')  # an append cut short by the kill
            f.close()
            crash_if("commit_metrics")
        return real_open(path, mode, *a, **k)

    if kill_at == "staging":
        monkeypatch.setattr(train_lib.tf.summary, "create_file_writer",
                            lambda *a, **k: crash_if("staging"))
    monkeypatch.setattr("builtins.open", opener)
    with pytest.raises(_Crash):
        _buffer_through(buf, 4, 6)
    monkeypatch.undo()

    # The next process: steps up to what the marker says are dropped, the rest re-logged.
    buf = train_lib._SummaryBuffer(workdir)
    committed = kill_at not in ("staging", "marker")
    assert buf.logged_through == (6 if committed else 3)
    assert not os.path.exists(os.path.join(workdir, ".summaries_staging"))
    _buffer_through(buf, 4, 6)  # resumed from the step-3 checkpoint
    _buffer_through(buf, 7, 9)
    assert _logged(workdir) == (list(range(1, 10)), [3, 6, 9])


def test_summary_marker_of_older_runs_is_read(tmp_path):
    with open(tmp_path / "logged_through", "w") as f:
        f.write("400")
    buf = train_lib._SummaryBuffer(str(tmp_path))
    assert buf.logged_through == 400
    buf.scalar("train", "loss", 1.0, 400)
    buf.scalar("train", "loss", 2.0, 401)
    buf.flush(401)
    assert _logged(str(tmp_path)) == ([401], [])
    assert json.load(open(tmp_path / "logged_through")) == {"logged_through": 401,
                                                             "pending": None}
