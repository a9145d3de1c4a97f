"""The training loop (asr_tf/run/loop.py): smoke training with TensorBoard read-back, exact
resume, corrupt checkpoints, both evaluations at the end, evaluation and figures from a workdir."""
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest

from asr_tf import training
from asr_tf.run import config, evaluation, loop, trained, workdir as workdir_lib
from conftest import SMALL_RUN as SMALL, scalars


@pytest.mark.slow
@pytest.mark.parametrize("name", ["air_13", "air_pprior_13", "air_asr_13"])
def test_smoke_train_writes_tensorboard(tmp_path, name):
    config.parse([name], SMALL)
    workdir = str(tmp_path / name)
    summary = loop.train_eval(workdir, max_steps=3)
    assert summary["step"] == 3
    losses = scalars(os.path.join(workdir, "train"), "loss")
    assert [s for s, _ in losses] == [1, 2, 3]
    assert all(np.isfinite(v) for _, v in losses)
    for tag in ("nelbo", "kl_what", "overlap", "learning_rate", "steps_per_sec"):
        assert len(scalars(os.path.join(workdir, "train"), tag)) == 3
    evals = {tag: scalars(os.path.join(workdir, "eval"), tag) for tag in ("acc", "se", "nelbo", "miou")}
    assert all(len(v) == 1 and v[0][0] == 3 for v in evals.values())
    assert 0.0 <= evals["acc"][0][1] <= 1.0 and 0.0 <= evals["miou"][0][1] <= 1.0
    lines = open(os.path.join(workdir, "metrics.jsonl")).read().splitlines()
    assert [json.loads(l)["step"] for l in lines] == [3]
    saved = json.load(open(os.path.join(workdir, "summary.json")))
    assert saved["final"]["step"] == 3 and set(saved) >= {"final", "best", "best_by_test"}
    assert os.path.exists(os.path.join(workdir, "operative_config.gin"))
    # Both evaluations of the last step: the paper's pass is the one the run logged, the
    # deterministic one what tools/evaluate.py --deterministic gives.
    end = saved["at_end"]
    assert end["step"] == 3
    for key in ("acc", "se", "nelbo", "miou"):
        assert end["stochastic"][key] == pytest.approx(saved["final"][key], rel=1e-6)
    again = trained.evaluate_workdir(workdir, deterministic=True)
    for key in ("acc", "se", "nelbo", "miou", "count_frac_1obj_1"):
        assert end["deterministic"][key] == pytest.approx(again[key], rel=1e-6, abs=1e-9)
    assert summary["at_end"] == end
    # tools/evaluate.py --at_end rebuilds them from the checkpoint, into summary.json
    rebuilt = trained.end_evaluations(workdir)
    for name in ("stochastic", "deterministic"):
        for key in ("acc", "se", "nelbo", "miou"):
            assert rebuilt[name][key] == pytest.approx(end[name][key], rel=1e-6), (name, key)
    assert json.load(open(os.path.join(workdir, "summary.json")))["at_end"] == rebuilt


class _Crash(Exception):
    pass


@pytest.mark.slow
def test_resume_after_crash_is_exact_and_logs_nothing_twice(tmp_path, monkeypatch):
    # Uninterrupted reference: 6 steps.
    config.parse(["air_asr_13"], SMALL)
    ref_dir = str(tmp_path / "ref")
    loop.train_eval(ref_dir, max_steps=6)
    ref_model = trained.load_trained(ref_dir).model
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
        loop.train_eval(run_dir, max_steps=6)
    monkeypatch.setattr(training, "train_step", real_step)
    config.parse(["air_asr_13"], SMALL)
    loop.train_eval(run_dir, max_steps=6)

    model = trained.load_trained(run_dir).model
    for a, b in zip(ref_weights, model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    steps = [s for s, _ in scalars(os.path.join(run_dir, "train"), "loss")]
    assert steps == [1, 2, 3, 4, 5, 6]  # steps 4 and 5 ran twice but were logged once
    ref_losses = scalars(os.path.join(ref_dir, "train"), "loss")
    np.testing.assert_allclose([v for _, v in scalars(os.path.join(run_dir, "train"), "loss")],
                               [v for _, v in ref_losses], rtol=1e-4)
    lines = open(os.path.join(run_dir, "metrics.jsonl")).read().splitlines()
    assert [json.loads(l)["step"] for l in lines] == [3, 6]


@pytest.mark.slow
def test_resume_with_another_rate_and_schedule(tmp_path):
    # 3 steps at 1e-3, resumed at 5e-4 times 0.1 from step 4 on (the update that makes step 5):
    # the logged rate is the configured one (tests/test_training_step.py: the updates too).
    workdir = str(tmp_path / "w")
    config.parse(["air_asr_13"], SMALL + ["make_optimizer.learning_rate = 1e-3"])
    loop.train_eval(workdir, max_steps=3)
    config.parse(["air_asr_13"], SMALL + ["make_optimizer.learning_rate = 5e-4",
                                          "make_optimizer.decay_steps = (4,)",
                                          "make_optimizer.decay_factors = (0.1,)"])
    loop.train_eval(workdir, max_steps=6)
    rates = scalars(os.path.join(workdir, "train"), "learning_rate")
    assert [s for s, _ in rates] == [1, 2, 3, 4, 5, 6]
    assert [v for _, v in rates] == pytest.approx([1e-3] * 3 + [5e-4, 5e-5, 5e-5])


@pytest.mark.slow
def test_bad_checkpoints_name_the_file_and_are_kept(tmp_path):
    config.parse(["air_pprior_13"], SMALL)
    workdir = str(tmp_path / "w")
    loop.train_eval(workdir, max_steps=3)

    # A checkpoint of another configuration (a different LSTM width) is refused clearly.
    config.parse(["air_pprior_13"], SMALL + ["build_model.lstm_units = 16"])
    with pytest.raises(workdir_lib.CheckpointError, match="ckpt-3"):
        loop.train_eval(workdir, max_steps=6)

    # A corrupt data file too; nothing is deleted or rewritten.
    data_files = glob.glob(os.path.join(workdir, "ckpt", "ckpt-3.data-*"))
    assert data_files
    with open(data_files[0], "r+b") as f:
        f.write(b"\x00garbage" * 64)
    before = sorted(os.listdir(os.path.join(workdir, "ckpt")))
    size = os.path.getsize(data_files[0])
    config.parse(["air_pprior_13"], SMALL)
    with pytest.raises(workdir_lib.CheckpointError, match="ckpt-3"):
        loop.train_eval(workdir, max_steps=6)
    assert sorted(os.listdir(os.path.join(workdir, "ckpt"))) == before
    assert os.path.getsize(data_files[0]) == size


@pytest.mark.slow
def test_evaluate_and_generate_tools(tmp_path, repo_root):
    config.parse(["air_asr_13"], SMALL)
    workdir = str(tmp_path / "w")
    loop.train_eval(workdir, max_steps=3)
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
            return max([s for s, _ in scalars(os.path.join(workdir, "train"), "loss")],
                       default=0)

        # kill -9 at least 2 steps after a checkpoint (>= 10), well before the next one
        assert _wait_for(lambda: logged() >= 12 and 2 <= logged() - workdir_lib.restored_step(workdir)
                         <= 6, proc, 400), "no checkpoint"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at, resumed_from = logged(), workdir_lib.restored_step(workdir)
        assert 10 <= resumed_from < killed_at
        assert _wait_for(lambda: max(served(), default=0) == killed_at, tensorboard, 60)

        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)  # the same command
        procs.append(proc)
        assert _wait_for(lambda: workdir_lib.restored_step(workdir) >= resumed_from + 20, proc, 400)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        last = json.load(open(os.path.join(workdir, "summary.json")))["step"]
        assert workdir_lib.restored_step(workdir) == last < 500
        # each invocation set XLA's code generation flags before compiling (asr_tf/run/xla_cpu.py)
        log_txt = open(os.path.join(workdir, "log.txt")).read()
        assert log_txt.count("--xla_cpu_enable_concurrency_optimized_scheduler=true") == 2
        starts = [json.loads(line)["start_step"]
                  for line in open(os.path.join(workdir, "invocations.jsonl"))]
        assert starts == [0, resumed_from]  # the same command resumed the same workdir

        every_step = list(range(1, last + 1))
        assert [s for s, _ in scalars(os.path.join(workdir, "train"), "loss")] == every_step
        evals = sorted(set(range(3, last + 1, 3)) | {last})
        assert [s for s, _ in scalars(os.path.join(workdir, "eval"), "acc")] == evals
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


