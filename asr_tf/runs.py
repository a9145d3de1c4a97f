"""A run: its data set, its components, its record in the workdir, and restoring it.

A workdir records everything its run was started with:

  config.gin         every gin binding of the run, those that tools/train.py turns its flags into
                     included (``train_eval.seed``, ``train_eval.strategy``); the tools rebuild
                     the run from it
  invocations.jsonl  one line per invocation of the training: when, the command line, the code
                     commit, the machine, the step it started at
  ckpt/              tf.train.CheckpointManager

so ``tools/evaluate.py``, ``generate.py`` and ``export.py`` need nothing but ``--workdir``: the
test scenes (the data set of ``run_spec``), the evaluation noise (the run's seed) and the
number of test scenes are the run's own unless a flag overrides them.
"""
import datetime
import inspect
import json
import logging
import os
import platform
import re
import subprocess
import sys

import gin
import tensorflow as tf

from asr_tf import objectives
from asr_tf import training
from asr_tf.data import scenes
from asr_tf.models import build_model
from asr_tf.quirks import Quirks

CONFIG_FILE = "config.gin"
INVOCATIONS_FILE = "invocations.jsonl"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be restored (corrupt, or from another configuration)."""


class RecordMismatchError(ValueError):
    """An invocation whose seeds differ from the ones its workdir was started with."""


class WorkdirBusyError(RuntimeError):
    """Another process is training in this workdir."""


LOCK_FILE = ".lock"
_held_locks = {}  # workdir -> open lock file, for the life of this process


def lock_workdir(workdir):
    """Takes the workdir's lock for this process (an advisory ``flock`` on ``<workdir>/.lock``,
    released when the process exits, killed or not); WorkdirBusyError if another process holds
    it: two trainings in one workdir would overwrite each other's checkpoints and logs."""
    import fcntl

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


def unlock_workdir(workdir):
    """Releases this process's lock on ``workdir`` (train_eval does at its end)."""
    f = _held_locks.pop(os.path.abspath(workdir), None)
    if f is not None:
        f.close()


def workdir_busy(workdir):
    """Whether another process holds ``workdir``'s lock (a trainer there right now)."""
    import fcntl

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


@gin.configurable
def run_spec(dataset="mnist_13", dataset_overrides=None, data_seed=0):
    """The data set of a run: ``dataset`` names one of scenes.DATASETS; ``data_seed`` fixes its
    scenes and its train/test split (0 for every run of the paper's tables, whatever the run's
    own seed)."""
    return scenes.get_spec(dataset, **dict(dataset_overrides or {}, data_seed=data_seed))


def build_components(spec):
    """Model, objective and quirks for a data set, from the gin bindings in force."""
    quirks = Quirks()
    model = build_model(canvas_px=spec.canvas_px, counts=spec.counts,
                        size_range_px=spec.size_range_px, quirks=quirks)
    objective = objectives.Objective(counts=tuple(spec.counts),
                                     size_range_px=tuple(spec.size_range_px))
    return model, objective, quirks


def restore_or_fail(checkpoint, path):
    """Restores ``path`` into ``checkpoint``; a clear CheckpointError names the file otherwise.

    Nothing is deleted: a bad checkpoint stays on disk for inspection.
    """
    try:
        status = checkpoint.restore(path)
        status.assert_existing_objects_matched()
    except (tf.errors.OpError, ValueError, AssertionError, KeyError) as err:
        raise CheckpointError(
            f"cannot restore checkpoint {path!r}: it is corrupt or was written by a different "
            f"configuration ({type(err).__name__}: {str(err).splitlines()[0][:300]}). "
            "Nothing was deleted; use another --workdir, or remove or repair that file.") from err
    return status


# ------------------------------------------------------------------ the record
def recorded(name, workdir=None):
    """The value of ``train_eval.<name>`` in the bindings in force (or in ``workdir``'s record,
    parsed into gin first): the bound value, else train_eval's default."""
    from asr_tf import train_lib  # the loop imports this module

    if workdir is not None:
        parse_record(workdir)
    bound = gin.get_bindings("train_eval")
    if name in bound:
        return bound[name]
    return inspect.signature(train_lib.train_eval).parameters[name].default


def parse_record(workdir):
    """Parses ``workdir/config.gin`` (``migrate_record``-ed) into a clean gin state
    (FileNotFoundError if missing)."""
    import asr_tf.config  # noqa: F401  (registers every configurable)

    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {workdir!r} is not a training workdir")
    gin.clear_config()
    gin.parse_config(migrate_record(open(path).read()))


# PenaltyWeights.<gamma> of records before 2026-11-30 -> constraint names, in the order in
# which that loss added them.
_OLD_WEIGHTS = (("gamma_n", ("presence_entropy",)), ("gamma_a", ("area",)),
                ("gamma_b", ("overlap", "out_of_image")), ("gamma_s", ("size_equality",)),
                ("gamma_ne", ("count_min",)), ("gamma_m", ("count_margin",)))


# The per-model values that build_model resolved from the kind before configs/air.gin and
# configs/pprior.gin bound them (records before the merge of perf, 2026-11-30).
_OLD_MODEL_VALUES = {
    "air": (("z_pres_temperature", 1.0), ("stop_threshold", 0.99), ("decoder_noise", 0.3)),
    "pprior": (("z_pres_temperature", 0.1), ("stop_threshold", 0.9), ("decoder_noise", 0.0)),
}


def migrate_record(text):
    """A record written before the constraint registry, in today's names: ``build_model.
    max_steps`` -> ``max_glimpses``; ``PenaltyWeights.gamma_*`` -> ``Objective.constraints``
    (non-zero weights; the box terms monitored, as that loss logged them); the model kind's
    z_pres temperature, stop threshold and decoder noise, which build_model requires now,
    added with the values it used to resolve when they were not bound. Today's records pass
    unchanged."""
    text = re.sub(r"^build_model\.max_steps\b", "build_model.max_glimpses", text, flags=re.M)
    kind = re.search(r"^build_model\.kind = '(\w+)'[ \t]*$", text, flags=re.M)
    if kind and kind.group(1) in _OLD_MODEL_VALUES:
        text = re.sub(r"^build_model\.(z_pres_temperature|stop_threshold) = None[ \t]*\n?", "",
                      text, flags=re.M)
        missing = [f"build_model.{name} = {value!r}"
                   for name, value in _OLD_MODEL_VALUES[kind.group(1)]
                   if not re.search(rf"^build_model\.{name} = ", text, flags=re.M)]
        if missing:
            text = text.rstrip("\n") + "\n" + "\n".join(missing) + "\n"
    old = dict(re.findall(r"^PenaltyWeights\.(\w+) = (\S+)\s*$", text, flags=re.M))
    if not old:
        return text
    text = re.sub(r"^PenaltyWeights\.\w+ = .*\n?", "", text, flags=re.M)
    pairs = [(name, float(old[gamma])) for gamma, names in _OLD_WEIGHTS if float(old.get(gamma, 0))
             for name in names]
    return (text + f"\nObjective.constraints = {pairs!r}\n"
            "Objective.monitor = ['overlap', 'out_of_image', 'size_equality', 'area']\n")


def default_workdir(configs):
    """``runs/<config>`` (several configs: their names joined by '+'), relative to the current
    folder: the same command resumes the same run."""
    names = [os.path.splitext(os.path.basename(str(c)))[0] for c in configs]
    return os.path.join("runs", "+".join(names))


def write_record(workdir, argv=None, start_step=0):
    """Writes the bindings in force to ``config.gin`` (first invocation) and appends this
    invocation to ``invocations.jsonl``.

    A later invocation with other bindings keeps the original ``config.gin``, writes its own to
    ``config.gin.latest`` and warns; other seeds than the recorded ones are refused
    (RecordMismatchError) before anything is written: they would make another run.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    text = gin.config_str()
    if os.path.exists(path):
        original = open(path).read()
        if original != text:
            _check_same_seeds(workdir, original)
            logging.getLogger("asr_tf.train").warning(
                "%s differs from the bindings of this invocation; keeping the original, "
                "writing %s", path, path + ".latest")
            path += ".latest"
    with open(path, "w") as f:
        f.write(text)
    record = {"time": datetime.datetime.now().isoformat(timespec="seconds"),
              "argv": list(sys.argv if argv is None else argv), "start_step": int(start_step),
              "commit": _git_commit(), "machine": machine()}
    with open(os.path.join(workdir, INVOCATIONS_FILE), "a") as f:
        f.write(json.dumps(record) + "\n")


def _check_same_seeds(workdir, original_text):
    now = {"seed": recorded("seed"), "data_seed": run_spec().data_seed}
    saved = gin.config_str()
    try:
        gin.clear_config()
        gin.parse_config(migrate_record(original_text), skip_unknown=True)
        then = {"seed": recorded("seed"), "data_seed": run_spec().data_seed}
    finally:
        gin.clear_config()
        gin.parse_config(saved)
    if now != then:
        raise RecordMismatchError(
            f"{workdir!r} was started with {then}; this invocation has {now}. A different seed "
            "is a different run: use another --workdir.")


def _git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10, cwd=os.path.dirname(os.path.abspath(__file__)))
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine():
    """One line about this machine: CPU model, cores, Python."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_operative_config(workdir):
    with open(os.path.join(workdir, "operative_config.gin"), "w") as f:
        f.write(gin.operative_config_str())


# ------------------------------------------------------------------ restoring
def load_trained(workdir, checkpoint=None):
    """Rebuilds a run's model from its record and restores its latest (or the given)
    checkpoint. Returns (model, spec). Raises CheckpointError / FileNotFoundError clearly.
    The run's bindings stay parsed in gin (``recorded`` reads them)."""
    parse_record(workdir)
    spec = run_spec()
    model, _, _ = build_components(spec)
    path = checkpoint or tf.train.latest_checkpoint(os.path.join(workdir, "ckpt"))
    if not path:
        raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, 'ckpt')}")
    # With the optimizer too: checkpoints written before the LSTM kernels and the VAE's hidden
    # layers became attributes reach those weights only through the optimizer's variables.
    ckpt = tf.train.Checkpoint(model=model, optimizer=training.make_optimizer(model))
    try:
        ckpt.restore(path).expect_partial().assert_existing_objects_matched()
    except (tf.errors.OpError, ValueError, AssertionError) as err:
        raise CheckpointError(f"cannot restore checkpoint {path!r}: "
                              f"{str(err).splitlines()[0][:300]}") from err
    return model, spec


def restored_step(workdir, checkpoint=None):
    """The training step of ``checkpoint`` (default: the workdir's latest), from its name."""
    path = checkpoint or tf.train.latest_checkpoint(os.path.join(workdir, "ckpt"))
    try:
        return int(path.rsplit("-", 1)[1])
    except (AttributeError, IndexError, ValueError):
        return 0
