"""A run's folder: the one owner of its layout, its record, its lock and its checkpoints.

A workdir holds::

  config.gin            every gin binding of the run (tools/train.py's flags included as
                        ``train_eval.seed``, ``train_eval.strategy``); tools rebuild the run from it
  invocations.jsonl     one line per invocation of the training: when, the command line, the
                        code (commit; uncommitted changes flagged, hashed and saved beside:
                        code-<hash>.diff), the machine, the step it started at, the run's seeds
  operative_config.gin  the bindings actually used (written at the end of an invocation)
  train/, eval/         TensorBoard event files, live (asr_tf/run/summaries.py)
  metrics.jsonl         one line per evaluation
  summary.json          final, best (Q28) and best-by-test metrics; both evaluations at the end
  log.txt               the console log
  ckpt/                 tf.train.CheckpointManager (model, optimizer, noise generator, step,
                        best-selection state)
  .lock                 held by the process training in it

so ``tools/evaluate.py``, ``generate.py`` and ``export.py`` need nothing but ``--workdir``.
"""
import datetime
import fcntl
import hashlib
import json
import logging
import os
import platform
import subprocess
import sys

import gin
import tensorflow as tf

from asr_tf.data import files, scenes
from asr_tf.run import xla_cpu

CONFIG_FILE = "config.gin"
INVOCATIONS_FILE = "invocations.jsonl"
OPERATIVE_FILE = "operative_config.gin"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
LOG_FILE = "log.txt"
CKPT_DIR = "ckpt"
LOCK_FILE = ".lock"
CODE_DIFF_FILE = "code-{}.diff"  # an invocation's uncommitted changes, by their hash's head
CODE_TREE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The small results of a run, archived under docs/results/ (no checkpoints).
RECORD_FILES = (METRICS_FILE, SUMMARY_FILE, CONFIG_FILE, OPERATIVE_FILE, INVOCATIONS_FILE,
                LOG_FILE)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be restored (corrupt, or from another configuration)."""


class RecordMismatchError(ValueError):
    """An invocation whose seeds or data differ from the ones its workdir was started with."""


class WorkdirBusyError(RuntimeError):
    """Another process is training in this workdir."""


# ------------------------------------------------------------------ the run's parts
@gin.configurable
def run_spec(dataset="mnist_13", dataset_overrides=None, data_seed=0, data=None, canvas_px=None,
             counts=None, size_range_px=None):
    """The data set of a run.

    Args:
      dataset: one of scenes.DATASETS (a run config binds it), synthesised, unless ``data``.
      dataset_overrides: DatasetSpec fields to replace in it.
      data_seed: fixes its scenes and its train/test split (0 for every run of the paper's
        tables, whatever the run's own seed); splits a data set from files without a test split.
      data: None, or the images of the run: a folder or 'tfds:NAME[/CONFIG]'
        (docs/OWN_DATA.md; ``tools/train.py --data``).
      canvas_px, counts, size_range_px: the canvas side S, the allowed object counts and the
        object size range (c_min, c_max) in px of the canvas, that the model and the
        constraints use; None: ``dataset``'s (mnist_13: 50, (1, 3), (17, 23)). With ``data``
        the images are put on this canvas (asr_tf/data/images.py); without, they change the
        synthesised set.
    Returns a scenes.DatasetSpec, or with ``data`` a files.FileDataSpec (its images not yet
    decoded). Raises files.DataError naming the file or field of bad data.
    """
    spec = scenes.get_spec(dataset, **dict(dataset_overrides or {}, data_seed=data_seed))
    mine = {k: v for k, v in (("canvas_px", canvas_px), ("counts", counts),
                              ("size_range_px", size_range_px)) if v is not None}
    if data is None:
        return scenes.get_spec(spec, **mine)
    mine = {**{k: getattr(spec, k) for k in ("canvas_px", "counts", "size_range_px")}, **mine}
    return files.load_data(data, data_seed=data_seed, **mine)


def bound_data():
    """(data, data_seed) of the run_spec bindings in force, before any file is read: ``data``
    as its identity (a folder's absolute path; None for a synthesised set)."""
    bound = gin.get_bindings("run_spec")
    data = bound.get("data")
    return (None if data is None else files.resolve(data)), int(bound.get("data_seed", 0))


# ------------------------------------------------------------------ the lock
_held_locks = {}  # workdir -> open lock file, for the life of this process


def lock(workdir):
    """Takes the workdir's lock for this process (an advisory ``flock`` on ``<workdir>/.lock``,
    released when the process exits, killed or not); WorkdirBusyError if another process holds
    it: two trainings in one workdir would overwrite each other's checkpoints and logs."""
    path = os.path.abspath(workdir)
    if path in _held_locks:
        return
    f = open(os.path.join(path, LOCK_FILE), "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise WorkdirBusyError(f"{workdir!r} is in use by {holder}: wait for it, or stop it "
                               "(kill PID: it checkpoints and exits), or use another --workdir")
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}\n")
    f.flush()
    _held_locks[path] = f


def unlock(workdir):
    """Releases this process's lock on ``workdir`` (train_eval does at its end)."""
    f = _held_locks.pop(os.path.abspath(workdir), None)
    if f is not None:
        f.close()


def busy(workdir):
    """Whether another process holds ``workdir``'s lock (a trainer there right now)."""
    path = os.path.join(workdir, LOCK_FILE)
    if os.path.abspath(workdir) in _held_locks or not os.path.exists(path):
        return False
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


# ------------------------------------------------------------------ the record
def check_record(workdir, seed, data_seed, data=None):
    """Refuses (RecordMismatchError) seeds or data other than the first invocation's: they
    would make another run. ``data``: the identity of a data set from files (bound_data),
    None for a synthesised one."""
    first = next(iter(invocations(workdir)), None)
    if first is None:
        return
    now = {"seed": int(seed), "data_seed": int(data_seed), "data": data}
    then = {k: first.get(k) for k in now}
    if then != now:
        changed = ", ".join(f"{k} {then[k]!r} -> {now[k]!r}" for k in now if then[k] != now[k])
        raise RecordMismatchError(
            f"{workdir!r} was started with other seeds or data ({changed}). A different seed or "
            "data set is a different run: use another --workdir.")


def write_record(workdir, seed, data_seed, data=None, start_step=0, argv=None, tree=CODE_TREE):
    """Writes the bindings in force to ``config.gin`` (first invocation) and appends this
    invocation, with the run's seeds and data and the code of ``tree`` (:func:`code_state`; a
    diff of uncommitted changes saved as ``code-<hash>.diff``), to ``invocations.jsonl``.

    Seeds or data other than the first invocation's are refused (check_record) before anything
    is written. A later invocation with other bindings keeps the original ``config.gin``,
    writes its own to ``config.gin.latest`` and warns.
    """
    check_record(workdir, seed, data_seed, data)
    seeds = {"seed": int(seed), "data_seed": int(data_seed)}
    path = os.path.join(workdir, CONFIG_FILE)
    text = gin.config_str()
    if os.path.exists(path) and open(path).read() != text:
        logging.getLogger("asr_tf.train").warning(
            "%s differs from the bindings of this invocation; keeping the original, writing %s",
            path, path + ".latest")
        path += ".latest"
    with open(path, "w") as f:
        f.write(text)
    code, diff = code_state(tree)
    if diff:
        code["diff_file"] = CODE_DIFF_FILE.format(code["diff_sha256"][:12])
        with open(os.path.join(workdir, code["diff_file"]), "wb") as f:
            f.write(diff)
    record = {"time": datetime.datetime.now().isoformat(timespec="seconds"),
              "argv": list(sys.argv if argv is None else argv), "start_step": int(start_step),
              **code, "machine": machine(), **seeds,
              **({"data": data} if data is not None else {})}
    with open(os.path.join(workdir, INVOCATIONS_FILE), "a") as f:
        f.write(json.dumps(record) + "\n")


def invocations(workdir):
    """The invocation records of ``workdir`` (dicts, oldest first; none for a new workdir)."""
    path = os.path.join(workdir, INVOCATIONS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


UNTRACKED_MAX_BYTES = 1 << 20  # a larger untracked file enters the diff as its size and hash


def code_state(tree):
    """The code of the git checkout holding ``tree``: ({'commit': HEAD's short hash, 'dirty':
    whether anything differs from it, 'diff_sha256': the hash of the diff or None}, the diff).

    The diff (bytes; empty when clean) is ``git diff HEAD`` (every change to tracked files,
    staged or not) followed by each untracked file that git does not ignore, as a new file
    (one above UNTRACKED_MAX_BYTES as a comment line with its size and sha256 instead), so
    ``git apply`` on a checkout of the commit rebuilds the tree. Nothing in the checkout is
    changed. Outside a checkout, or without git: ({'commit': None, 'dirty': None,
    'diff_sha256': None}, b'')."""
    def git(*args, ok=(0,)):
        proc = subprocess.run(["git", *args], cwd=top, capture_output=True, timeout=60)
        if proc.returncode not in ok:
            raise subprocess.CalledProcessError(proc.returncode, args, proc.stderr)
        return proc.stdout

    top = tree
    try:
        top = git("rev-parse", "--show-toplevel").decode().strip()
        commit = git("rev-parse", "--short", "HEAD").decode().strip()
        diff = git("diff", "HEAD", "--binary", "--no-ext-diff", "--no-textconv")
        untracked = git("ls-files", "--others", "--exclude-standard", "-z").split(b"\0")
        for name in sorted(filter(None, untracked)):
            path = os.path.join(top, os.fsdecode(name))
            if os.path.getsize(path) > UNTRACKED_MAX_BYTES:
                with open(path, "rb") as f:
                    digest = hashlib.file_digest(f, "sha256").hexdigest()
                diff += (f"# untracked {os.fsdecode(name)}: {os.path.getsize(path)} bytes, "
                         f"sha256 {digest}\n").encode()
            else:  # exit status 1: the files differ
                diff += git("diff", "--no-index", "--binary", "--", "/dev/null", name, ok=(1,))
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None, "diff_sha256": None}, b""
    return {"commit": commit, "dirty": bool(diff),
            "diff_sha256": hashlib.sha256(diff).hexdigest() if diff else None}, diff


def code_label(record):
    """An invocation's code in a few characters: its commit, and ``+<the diff's hash head>``
    when its tree had uncommitted changes; None when the record names no commit."""
    if not record.get("commit"):
        return None
    return record["commit"] + (f"+{record['diff_sha256'][:8]}" if record.get("dirty") else "")


def code_of(workdir, step):
    """The code that trained a run up to ``step``: the distinct code states (commit, dirty,
    diff_sha256, diff_file) of the invocations that trained steps up to it, oldest first."""
    states = []
    for record in invocations(workdir):
        if record.get("start_step", 0) >= step and states:
            break
        state = {k: record[k] for k in ("commit", "dirty", "diff_sha256", "diff_file")
                 if k in record}
        if state not in states:
            states.append(state)
    return states


def machine():
    """One line about this machine: CPU model, cores, Python."""
    cpu = xla_cpu.cpuinfo_field("model name") or platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_operative_config(workdir):
    with open(os.path.join(workdir, OPERATIVE_FILE), "w") as f:
        f.write(gin.operative_config_str())


def read_summary(workdir):
    """summary.json as a dict ({} before the first invocation ended)."""
    path = os.path.join(workdir, SUMMARY_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def write_summary(workdir, summary):
    with open(os.path.join(workdir, SUMMARY_FILE), "w") as f:
        json.dump(summary, f, indent=1)


def read_metrics(workdir):
    """The evaluations of a run (metrics.jsonl), in step order ([] without any)."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return sorted(records, key=lambda r: r["step"])


# ------------------------------------------------------------------ checkpoints
def checkpoint_manager(checkpoint, workdir, keep=3):
    """The run's tf.train.CheckpointManager (``<workdir>/ckpt``, ``ckpt-<step>``)."""
    return tf.train.CheckpointManager(checkpoint, os.path.join(workdir, CKPT_DIR), max_to_keep=keep)


def checkpoint_path(workdir, step):
    """The path prefix of the checkpoint of training step ``step`` (whether it exists or not)."""
    return os.path.join(workdir, CKPT_DIR, f"ckpt-{int(step)}")


def has_checkpoint(workdir, step):
    return os.path.exists(checkpoint_path(workdir, step) + ".index")


def latest_checkpoint(workdir):
    """The latest checkpoint's path prefix, None if the workdir has none."""
    return tf.train.latest_checkpoint(os.path.join(workdir, CKPT_DIR))


def restored_step(workdir, checkpoint=None):
    """The training step of ``checkpoint`` (default: the workdir's latest; 0 if none), from its
    name."""
    path = checkpoint or latest_checkpoint(workdir)
    try:
        return int(path.rsplit("-", 1)[1])
    except (AttributeError, IndexError, ValueError):
        return 0


def restore_or_fail(checkpoint, path, partial=False):
    """Restores ``path`` into ``checkpoint``; a clear CheckpointError names the file otherwise.

    ``partial``: the checkpoint may hold more than ``checkpoint`` tracks (the model alone out of
    a training checkpoint). Nothing is deleted: a bad checkpoint stays on disk for inspection.
    """
    try:
        status = checkpoint.restore(path)
        if partial:
            status.expect_partial()
        status.assert_existing_objects_matched()
    except (tf.errors.OpError, ValueError, AssertionError, KeyError) as err:
        raise CheckpointError(
            f"cannot restore checkpoint {path!r}: it is corrupt or was written by a different "
            f"configuration ({type(err).__name__}: {str(err).splitlines()[0][:300]}). "
            "Nothing was deleted; use another --workdir, or remove or repair that file.") from err
    return status


def restore_model(workdir, model, checkpoint=None):
    """Restores a trained model's weights from ``checkpoint`` (default: the workdir's latest);
    FileNotFoundError without one, CheckpointError if it does not fit. Returns its step."""
    path = checkpoint or latest_checkpoint(workdir)
    if not path:
        raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, CKPT_DIR)}")
    restore_or_fail(tf.train.Checkpoint(model=model), path, partial=True)
    return restored_step(workdir, path)
