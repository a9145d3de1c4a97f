"""A run's folder (asr_tf/run/workdir.py): its record, lock and checkpoints; and its fixed data
set: every seed tests on the same scenes, the workdir knows how it was started, and the tools
evaluate a run exactly as it evaluated itself."""
import hashlib
import json
import os
import subprocess
import sys

import gin
import numpy as np
import pytest

from asr_tf.run import config, distribute, evaluation, trained, workdir as workdir_lib
from asr_tf.models import build_model
from conftest import MODEL_VALUES, SMALL_RUN

TINY_DATA = ["run_spec.dataset_overrides = {'images_per_count': 50, 'num_test': 20}"]


def _train_tool(repo_root, workdir, *args):
    cmd = [sys.executable, str(repo_root / "tools" / "train.py"), "--config", "air_asr_13",
           "--workdir", workdir, *args] + [f"--gin_param={b}" for b in SMALL_RUN + TINY_DATA]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))


def test_every_seed_tests_on_the_same_scenes_never_trained_on():
    config.parse(["air_asr_13"], TINY_DATA)
    spec = workdir_lib.run_spec()
    assert spec.data_seed == 0 and spec.num_train == 80
    model = build_model("pprior", spec.canvas_px, spec.counts, lstm_units=8)
    tests = {seed: evaluation.Evaluator(model, spec, seed=seed).test for seed in (0, 1, 2)}
    for seed in (1, 2):
        for key in tests[0]:
            np.testing.assert_array_equal(tests[seed][key].numpy(), tests[0][key].numpy())
    # The training scenes a seed-1 run reads in its first epoch (80 scenes, 10 batches of 8).
    data = distribute.Distributed("default", 8).dataset(spec, seed=1, fresh_scenes=False,
                                                        start_step=0)
    seen = np.concatenate([next(data)["image"].numpy() for _ in range(10)])
    test_bytes = {x.tobytes() for x in tests[0]["image"].numpy()}
    assert len(test_bytes) == 20 and not test_bytes & {x.tobytes() for x in seen}
    assert len({x.tobytes() for x in seen}) == 80  # one epoch: every training scene once


def test_evaluator_takes_the_first_scenes_of_the_split_and_refuses_more():
    config.parse(["air_asr_13"], TINY_DATA)
    spec = workdir_lib.run_spec()  # a test split of 20 scenes
    model = build_model("pprior", spec.canvas_px, spec.counts, lstm_units=8)
    whole = evaluation.Evaluator(model, spec).test
    first = evaluation.Evaluator(model, spec, num_test=5).test
    assert whole["image"].shape[0] == 20 and first["image"].shape[0] == 5
    np.testing.assert_array_equal(first["image"].numpy(), whole["image"].numpy()[:5])
    for bad in (21, 0, -1):
        with pytest.raises(ValueError,
                           match=rf"num_test {bad}: the test split of mnist_13 holds 20"):
            evaluation.Evaluator(model, spec, num_test=bad)


def test_record_keeps_the_seeds_and_refuses_others(tmp_path):
    """The first invocation's seeds are the run's; another seed is another run: refused before
    anything is written."""
    workdir = str(tmp_path / "w")
    os.makedirs(workdir)
    gin.parse_config("train_eval.seed = 1")
    workdir_lib.write_record(workdir, seed=1, data_seed=0, argv=["train.py"])
    workdir_lib.write_record(workdir, seed=1, data_seed=0, start_step=6, argv=["train.py"])
    first, second = workdir_lib.invocations(workdir)
    assert (first["seed"], first["data_seed"], first["start_step"]) == (1, 0, 0)
    assert second["start_step"] == 6 and first["commit"] == second["commit"]
    before = open(os.path.join(workdir, "invocations.jsonl")).read()
    for seed, data_seed, change in ((2, 0, "seed 1 -> 2"), (1, 3, "data_seed 0 -> 3")):
        with pytest.raises(workdir_lib.RecordMismatchError,
                           match=rf"started with other seeds or data \({change}\)"):
            workdir_lib.write_record(workdir, seed=seed, data_seed=data_seed)
    assert open(os.path.join(workdir, "invocations.jsonl")).read() == before
    # Other bindings on resume: the original record stays, this invocation's beside it.
    gin.parse_config("train_eval.eval_every = 7")
    workdir_lib.write_record(workdir, seed=1, data_seed=0, start_step=9)
    assert "eval_every" not in open(os.path.join(workdir, "config.gin")).read()
    assert "train_eval.eval_every = 7" in open(os.path.join(workdir, "config.gin.latest")).read()


def _git(repo, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo,
                          check=True, capture_output=True, text=True).stdout


def test_record_names_uncommitted_code_and_keeps_its_diff(tmp_path):
    """A tree with uncommitted changes is recorded as such: dirty, the diff's sha256, the diff
    in the workdir; applied to a clone of the commit, the diff rebuilds the tree."""
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "a.py").write_text("x = 1\n")
    (repo / ".gitignore").write_text("/out/\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "one")
    commit = _git(repo, "rev-parse", "--short", "HEAD").strip()
    clean, diff = workdir_lib.code_state(str(repo / "pkg"))  # any folder of the checkout
    assert clean == {"commit": commit, "dirty": False, "diff_sha256": None} and diff == b""

    (repo / "pkg" / "a.py").write_text("x = 2\n")  # an edit, a new file, an ignored one
    (repo / "pkg" / "b.py").write_text("y = 3\n")
    big = bytes(range(256)) * (workdir_lib.UNTRACKED_MAX_BYTES // 256 + 1)  # named, not copied
    (repo / "pkg" / "big.bin").write_bytes(big)
    (repo / "out").mkdir()
    (repo / "out" / "log.txt").write_text("ignored\n")
    workdir = tmp_path / "w"
    workdir.mkdir()
    workdir_lib.write_record(str(workdir), seed=0, data_seed=0, argv=["t"], tree=str(repo))
    (record,) = workdir_lib.invocations(str(workdir))
    assert record["commit"] == commit and record["dirty"] is True
    saved = (workdir / record["diff_file"]).read_bytes()
    assert hashlib.sha256(saved).hexdigest() == record["diff_sha256"]
    assert record["diff_file"] == f"code-{record['diff_sha256'][:12]}.diff"
    assert b"out/log.txt" not in saved
    assert (f"# untracked pkg/big.bin: {len(big)} bytes, sha256 "
            f"{hashlib.sha256(big).hexdigest()}\n").encode() in saved
    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", str(repo), str(clone))
    (clone / "change.diff").write_bytes(saved)
    _git(clone, "apply", "change.diff")
    assert (clone / "pkg" / "a.py").read_text() == "x = 2\n"
    assert (clone / "pkg" / "b.py").read_text() == "y = 3\n"
    # The checkout itself is untouched: the edit unstaged, the new file untracked.
    assert _git(repo, "status", "--porcelain") == " M pkg/a.py\n?? pkg/b.py\n?? pkg/big.bin\n"

    # Outside a checkout: nothing known, nothing claimed.
    assert workdir_lib.code_state(str(tmp_path)) == (
        {"commit": None, "dirty": None, "diff_sha256": None}, b"")


def test_code_of_a_step_lists_the_invocations_that_trained_it(tmp_path):
    workdir = str(tmp_path)
    states = [dict(commit="a", dirty=False, diff_sha256=None),
              dict(commit="a", dirty=True, diff_sha256="f" * 64,
                   diff_file="code-ffffffffffff.diff"),
              dict(commit="b", dirty=False, diff_sha256=None)]
    with open(os.path.join(workdir, workdir_lib.INVOCATIONS_FILE), "w") as f:
        for start, state in zip((0, 100, 200), states):
            f.write(json.dumps(dict(start_step=start, seed=0, data_seed=0, **state)) + "\n")
    assert workdir_lib.code_of(workdir, 0) == states[:1]
    assert workdir_lib.code_of(workdir, 100) == states[:1]
    assert workdir_lib.code_of(workdir, 101) == states[:2]
    assert workdir_lib.code_of(workdir, 300) == states
    assert [workdir_lib.code_label(s) for s in states] == ["a", "a+ffffffff", "b"]
    assert workdir_lib.code_label({"machine": "m"}) is None  # git was not there


def test_checkpoint_paths_and_restore_errors(tmp_path):
    """One owner of the ckpt/ layout: the step from a checkpoint's name, clear errors."""
    workdir = str(tmp_path / "w")
    assert workdir_lib.latest_checkpoint(workdir) is None and workdir_lib.restored_step(workdir) == 0
    model = build_model("pprior", 50, (1, 3), lstm_units=8, **MODEL_VALUES["pprior"])
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        workdir_lib.restore_model(workdir, model)
    import tensorflow as tf

    v = tf.Variable(3.0)
    manager = workdir_lib.checkpoint_manager(tf.train.Checkpoint(v=v), workdir, keep=2)
    for step in (4, 8, 12):
        manager.save(checkpoint_number=step)
    assert workdir_lib.latest_checkpoint(workdir) == workdir_lib.checkpoint_path(workdir, 12)
    assert workdir_lib.restored_step(workdir) == 12
    assert workdir_lib.has_checkpoint(workdir, 8) and not workdir_lib.has_checkpoint(workdir, 4)
    with pytest.raises(workdir_lib.CheckpointError, match="ckpt-12"):
        workdir_lib.restore_model(workdir, model)  # holds no model: does not fit


@pytest.mark.slow
def test_record_and_evaluate_tool_reproduce_a_seed_1_run(tmp_path, repo_root):
    workdir = str(tmp_path / "s1")
    out = _train_tool(repo_root, workdir, "--seed", "1", "--max_steps", "6")
    assert out.returncode == 0, out.stderr[-3000:]
    record = open(os.path.join(workdir, "config.gin")).read()
    assert "train_eval.seed = 1" in record
    (invocation,) = [json.loads(line) for line in open(os.path.join(workdir, "invocations.jsonl"))]
    assert invocation["start_step"] == 0 and "--seed" in invocation["argv"]
    assert invocation["machine"]

    # The tool needs nothing but the workdir: the run's scenes, noise and number of test scenes.
    logged = {json.loads(line)["step"]: json.loads(line)
              for line in open(os.path.join(workdir, "metrics.jsonl"))}[6]
    out = subprocess.run([sys.executable, str(repo_root / "tools" / "evaluate.py"),
                          "--workdir", workdir], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout[out.stdout.index("{"):])
    assert result["step"] == 6
    assert result["code"] == workdir_lib.code_of(workdir, 6)  # this checkout's state
    assert result["code"][0]["commit"] == invocation["commit"]
    for key in ("acc", "se", "nelbo", "miou", "kl_pres", "box_side_px", "se_1obj"):
        assert result[key] == pytest.approx(logged[key], rel=1e-6, abs=1e-9), key
    # Another noise seed is another evaluation of the same scenes.
    other = trained.evaluate_workdir(workdir, seed=5)
    assert other["nelbo"] != pytest.approx(logged["nelbo"], rel=1e-6)

    # A resume with another seed would be another run: refused, nothing written.
    before = {name: open(os.path.join(workdir, name)).read()
              for name in ("config.gin", "invocations.jsonl", "metrics.jsonl")}
    out = _train_tool(repo_root, workdir, "--seed", "2", "--max_steps", "9")
    assert out.returncode != 0
    assert "was started with other seeds or data (seed 1 -> 2)" in out.stderr
    after = {name: open(os.path.join(workdir, name)).read() for name in before}
    assert after == before and not os.path.exists(os.path.join(workdir, "config.gin.latest"))
    # The same seed resumes and records the second invocation.
    out = _train_tool(repo_root, workdir, "--seed", "1", "--max_steps", "9")
    assert out.returncode == 0, out.stderr[-3000:]
    starts = [json.loads(line)["start_step"]
              for line in open(os.path.join(workdir, "invocations.jsonl"))]
    assert starts == [0, 6]


def test_one_trainer_per_workdir(tmp_path):
    """A second process cannot take a workdir that a trainer holds; the lock dies with it."""
    workdir = str(tmp_path / "w")
    os.makedirs(workdir)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from asr_tf.run import workdir; "
         f"workdir.lock({workdir!r}); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert workdir_lib.busy(workdir)
        with pytest.raises(workdir_lib.WorkdirBusyError, match=f"in use by pid {holder.pid}"):
            workdir_lib.lock(workdir)
    finally:
        holder.kill()
        holder.wait()
    assert not workdir_lib.busy(workdir)  # killed: the lock went with it
    workdir_lib.lock(workdir)
    workdir_lib.lock(workdir)  # this process again: fine
    workdir_lib.unlock(workdir)
