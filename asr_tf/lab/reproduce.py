"""Reproducing the paper's Tables 1 and 2: the runs of a row at a step budget, trained and read.

A run is named by its configs joined with '+' (``air_asr_13``, ``air_asr_13+size``,
``air_asr_14+size+decay``: a row's config, then overlays; asr_tf/run/config.py). Every run
lives in ``<runs_dir>/<name>_s<seed>``; its small results are archived in
``<archive_dir>/<name>_s<seed>`` (committed: a new machine has no ``runs/``). A run is read from
its workdir, or from its archive where the workdir has no evaluations (``Run.results``);
``train_runs`` skips the runs that reached the budget in either and resumes the others
(tools/train.py resumes a workdir; an archived run cut short has no checkpoint to resume and
trains again from step 0). A run's number for a metric is the mean of its last ``last``
evaluations up to the budget (one evaluation of 1,000 scenes with one stochastic pass is
noisy); a row's number is the mean ± std of that over the seeds that reached the budget. The
report (tables, figures, the archive): asr_tf/lab/report.py.
"""
import dataclasses
import os
import re
import subprocess
import sys
import time

import numpy as np

from asr_tf.run import config, workdir as workdir_lib, xla_cpu

# The paper's Tables 1 and 2: mean, std over 3 runs.
PAPER = {
    "air_13": dict(nelbo=(404.41, 4.58), acc=(0.81, 0.23), se=(31.94, 4.68), miou=(0.61, 0.13)),
    "air_pprior_13": dict(nelbo=(405.21, 1.17), acc=(0.48, 0.00), se=(49.42, 0.24), miou=(0.43, 0.01)),
    "air_asr_13": dict(nelbo=(360.20, 19.67), acc=(0.96, 0.00), se=(28.84, 1.11), miou=(0.61, 0.00)),
    "air_14": dict(nelbo=(543.44, 54.71), acc=(0.48, 0.03), se=(52.77, 4.92), miou=(0.43, 0.07)),
    "air_pprior_14": dict(nelbo=(519.06, 5.47), acc=(0.50, 0.00), se=(68.72, 0.55), miou=(0.43, 0.00)),
    "air_asr_14": dict(nelbo=(441.54, 30.97), acc=(0.96, 0.01), se=(41.05, 7.11), miou=(0.55, 0.08)),
    "air_24": dict(nelbo=(639.49, 23.13), acc=(0.55, 0.09), se=(57.69, 4.88), miou=(0.46, 0.06)),
    "air_pprior_24": dict(nelbo=(643.28, 8.67), acc=(0.00, 0.00), se=(83.35, 0.44), miou=(0.10, 0.00)),
    "air_asr_24": dict(nelbo=(495.73, 35.80), acc=(0.98, 0.01), se=(48.54, 5.60), miou=(0.54, 0.08)),
    "air_mnist_overlap": dict(nelbo=(328.5, 17.1), se=(37.5, 3.8), miou=(0.25, 0.03)),
    "air_pprior_mnist_overlap": dict(nelbo=(306.6, 58.8), se=(41.5, 15.4), miou=(0.35, 0.10)),
    "air_asr_mnist_overlap": dict(nelbo=(337.3, 55.1), se=(36.5, 3.9), miou=(0.67, 0.05)),
    "air_dsprites_overlap": dict(nelbo=(341.5, 76.5), se=(34.8, 8.9), miou=(0.13, 0.05)),
    "air_pprior_dsprites_overlap": dict(nelbo=(274.3, 64.4), se=(29.3, 12.1), miou=(0.21, 0.13)),
    "air_asr_dsprites_overlap": dict(nelbo=(271.8, 18.8), se=(20.9, 2.1), miou=(0.61, 0.03)),
}
TABLES = {1: ("13", "14", "24"), 2: ("mnist_overlap", "dsprites_overlap")}
METRICS = {1: ("nelbo", "acc", "se", "miou"), 2: ("nelbo", "se", "miou")}
ROW_NAMES = {"13": "Multi-MNIST, 1 or 3 digits", "14": "Multi-MNIST, 1 or 4 digits",
             "24": "Multi-MNIST, 2 or 4 digits", "mnist_overlap": "Multi-MNIST overlap",
             "dsprites_overlap": "Multi-dSprites overlap"}
MODEL_NAMES = {"air": "AIR", "air_pprior": "AIR-pPrior", "air_asr": "AIR-ASR"}
MODEL_PREFIXES = {"air": "air", "pprior": "air_pprior", "asr": "air_asr"}  # short name -> prefix
ROW_ORDER = [row for table in sorted(TABLES) for row in TABLES[table]]  # the paper's order
METRIC_NAMES = {"nelbo": "nELBO", "acc": "ACC", "se": "SE", "miou": "mIoU"}
DIGITS = {"nelbo": 1, "acc": 2, "se": 1, "miou": 2}
# Which overlays fit which runs: the size term is the count runs' constraints plus F7 (AIR-ASR
# of Table 1); floor20k is AIR's presence-prior schedule. The others fit every run.
OVERLAY_MODELS = {"size": ("asr",), "floor20k": ("air",)}
OVERLAY_ROWS = {"size": TABLES[1]}
_RUN_NAME = re.compile(r"(air(?:_pprior|_asr)?)_(13|14|24|mnist_overlap|dsprites_overlap)"
                       r"((?:\+\w+)*)")


def table_of(row):
    """The paper table (1 or 2) of a row name."""
    for table, rows in TABLES.items():
        if row in rows:
            return table
    raise ValueError(f"row {row!r} is not one of Table 1's {TABLES[1]} or Table 2's {TABLES[2]}")


def parse_variant(item):
    """``[model/]overlay[+overlay...][:seeds]`` -> (models, overlays, seeds or None).

    ``size`` is the size overlay on every model it fits (AIR-ASR); ``asr/faithful:1`` only
    AIR-ASR with the faithful overlay, one seed; ``asr/size+decay`` both overlays."""
    spec, _, n = item.partition(":")
    model, _, names = spec.rpartition("/")
    if model and model not in MODEL_PREFIXES:
        raise ValueError(f"variant {item!r}: model {model!r} is not one of {sorted(MODEL_PREFIXES)}")
    overlays = tuple(names.split("+")) if names else ()
    unknown = [o for o in overlays if o not in config.OVERLAYS]
    if not overlays or unknown:
        raise ValueError(f"variant {item!r}: overlays {list(unknown) or '(none)'} are not among "
                         f"{list(config.OVERLAYS)}")
    try:
        seeds = int(n) if n else None
    except ValueError:
        raise ValueError(f"variant {item!r}: seeds {n!r} is not a number") from None
    fitting = set(MODEL_PREFIXES)
    for o in overlays:
        fitting &= set(OVERLAY_MODELS.get(o, MODEL_PREFIXES))
    if model and model not in fitting:
        raise ValueError(f"variant {item!r}: {'+'.join(overlays)} does not fit model {model!r} "
                         f"(it fits {sorted(fitting) or 'none'})")
    models = (model,) if model else tuple(m for m in MODEL_PREFIXES if m in fitting)
    return models, overlays, seeds


def variant_runs(row, variant):
    """The run names of one variant on one row (none where its overlays do not fit the row)."""
    table_of(row)
    models, overlays, _ = parse_variant(variant)
    if any(row not in OVERLAY_ROWS.get(o, (row,)) for o in overlays):
        return []
    return [f"{MODEL_PREFIXES[m]}_{row}+" + "+".join(overlays) for m in models]


def row_runs(row, variants=()):
    """The runs of a row: AIR, AIR-pPrior, AIR-ASR, then its variants' (:func:`parse_variant`);
    a variant that fits none of the row's runs is an error."""
    names = [f"air_{row}", f"air_pprior_{row}", f"air_asr_{row}"]
    for variant in variants:
        extra = variant_runs(row, variant)
        if not extra:
            raise ValueError(f"variant {variant!r} fits no run of row {row}")
        names += extra
    return names


def _parts(name):
    match = _RUN_NAME.fullmatch(name)
    return match.groups() if match else None


def display_name(name):
    """``air_asr_13`` -> ``AIR-ASR``; ``air_asr_13+size`` -> ``AIR-ASR (size)``."""
    parts = _parts(name)
    if not parts:
        return name
    return MODEL_NAMES[parts[0]] + (f" ({parts[2][1:]})" if parts[2] else "")


def paper_row(name):
    """The paper's numbers for a run or a variant of it ({} if none)."""
    parts = _parts(name)
    return PAPER.get(f"{parts[0]}_{parts[1]}", {}) if parts else {}


def row_of(name):
    """The row of a run (``air_asr_13+size`` -> '13'), None for another name."""
    parts = _parts(name)
    return parts[1] if parts else None


def variant_of(name):
    """The overlays of a run (``air_asr_14+size+decay`` -> 'size+decay'), None for a paper
    run."""
    parts = _parts(name)
    return parts[2][1:] if parts and parts[2] else None


def model_of(name):
    """'air', 'pprior' or 'asr' (variants included) for a row's run."""
    parts = _parts(name)
    return {p: m for m, p in MODEL_PREFIXES.items()}[parts[0]] if parts else None


def workdir_for(runs_dir, name, seed):
    return os.path.join(runs_dir, f"{name}_s{seed}")


# ------------------------------------------------------------------ training
@dataclasses.dataclass(frozen=True)
class Run:
    name: str  # configs joined by '+'
    seed: int
    workdir: str
    archived: str = None  # its archive folder (small results only), if any

    @property
    def configs(self):
        return self.name.split("+")

    @property
    def results(self):
        """The folder its results are read from: the workdir once it has evaluations, else the
        archive if that has them, else the workdir."""
        if (self.archived and not workdir_lib.read_metrics(self.workdir)
                and workdir_lib.read_metrics(self.archived)):
            return self.archived
        return self.workdir


def plan(runs_dir, rows, asr_seeds=3, baseline_seeds=1, variants=(), variant_seeds=None,
         archive_dir=None):
    """The runs of some rows, by seed (every run's seed 0 first, so that a partial pass gives
    every row a seed 0), each with its folder in ``archive_dir`` if given. ``variants``
    (:func:`parse_variant`) apply to every row they fit; their seeds default to
    ``variant_seeds``, else ``asr_seeds``."""
    seeds_of = {}
    for item in variants:
        n = parse_variant(item)[2]
        seeds_of[item.partition(":")[0]] = n if n is not None else (
            asr_seeds if variant_seeds is None else variant_seeds)
    for row in rows:
        table_of(row)
    for variant in seeds_of:
        if not any(variant_runs(row, variant) for row in rows):
            raise ValueError(f"variant {variant!r} fits no run of the rows {list(rows)}")
    by_row = {}
    for row in rows:
        seeds = {f"air_{row}": baseline_seeds, f"air_pprior_{row}": baseline_seeds,
                 f"air_asr_{row}": asr_seeds}
        for variant, n in seeds_of.items():
            for name in variant_runs(row, variant):
                seeds[name] = n
        by_row[row] = seeds
    runs = []
    most = max([n for seeds in by_row.values() for n in seeds.values()] + [0])
    for seed in range(most):
        for row, seeds in by_row.items():
            for name, n in seeds.items():
                if seed < n:
                    runs.append(Run(name, seed, workdir_for(runs_dir, name, seed),
                                    archive_dir and workdir_for(archive_dir, name, seed)))
    return runs


def reached(workdir):
    """The last step a run evaluated (0 if none)."""
    records = workdir_lib.read_metrics(workdir)
    return records[-1]["step"] if records else 0


def train_command(run, steps, threads=1, max_minutes=None, extra=()):
    """tools/train.py for one run at a step budget (``train_eval.num_steps``)."""
    tool = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "tools", "train.py")
    cmd = [sys.executable, tool]
    for name in run.configs:
        cmd += ["--config", name]
    cmd += ["--workdir", run.workdir, "--seed", str(run.seed),
            "--gin_param", f"train_eval.num_steps = {int(steps)}",
            "--gin_param", "train_eval.progress = False"]
    if threads:
        cmd += ["--threads", str(threads)]
    if max_minutes:
        cmd += ["--max_minutes", str(max_minutes)]
    for binding in extra:
        cmd += ["--gin_param", binding]
    return cmd


def train_runs(runs, steps, parallel=2, threads=1, max_minutes=None, extra=(), log=print):
    """Trains every run that has not reached ``steps``, ``parallel`` at a time (each with
    ``threads`` threads; its console log beside its workdir). Returns {workdir: exit code}."""
    todo = [r for r in runs if reached(r.results) < steps]
    for r in runs:
        if r not in todo:
            log(f"done already: {r.results} ({reached(r.results)} steps)")
        elif workdir_lib.busy(r.workdir):
            log(f"skipped: {r.workdir} is being trained by another process")
            todo.remove(r)
        elif r.results != r.workdir:
            log(f"{r.archived} stopped at step {reached(r.archived)} and keeps no checkpoint: "
                f"{r.workdir} trains from step 0")
    running, codes = {}, {}
    while todo or running:
        while todo and len(running) < parallel:
            run = todo.pop(0)
            os.makedirs(os.path.dirname(os.path.abspath(run.workdir)), exist_ok=True)
            console = open(run.workdir.rstrip("/") + ".log", "a")
            log(f"training {run.workdir} from step {reached(run.workdir)} to {steps}")
            running[run] = (subprocess.Popen(train_command(run, steps, threads, max_minutes, extra),
                                             env=xla_cpu.child_environ(), stdout=console,
                                             stderr=subprocess.STDOUT), console)
        time.sleep(1.0)
        for run, (proc, console) in list(running.items()):
            if proc.poll() is not None:
                console.close()
                codes[run.workdir] = proc.returncode
                log(f"finished {run.workdir}: exit {proc.returncode}, at step {reached(run.workdir)}")
                del running[run]
    return codes


# ------------------------------------------------------------------ reading the runs
def run_result(workdir, steps, last=5, metrics=("nelbo", "acc", "se", "miou")):
    """One run at the budget: {'step': last step evaluated (<= steps), 'complete': whether it
    reached ``steps``, each metric: mean of its last ``last`` evaluations up to ``steps``,
    'minutes': training wall minutes, 'machine', 'commits'}; None without evaluations."""
    records = [r for r in workdir_lib.read_metrics(workdir) if r["step"] <= steps]
    if not records:
        return None
    tail = records[-last:]
    result = {m: float(np.mean([r[m] for r in tail])) for m in metrics if m in tail[-1]}
    result.update(step=records[-1]["step"], complete=records[-1]["step"] >= steps,
                  evaluations=len(tail), minutes=training_minutes(workdir, records, steps),
                  machine=_recorded(workdir, lambda record: record.get("machine")),
                  commits=_recorded(workdir, workdir_lib.code_label))
    return result


def _recorded(workdir, read):
    """The distinct values of ``read(record)`` over a run's invocations, in order, joined by
    '; '."""
    seen = []
    for record in workdir_lib.invocations(workdir):
        value = read(record)
        if value and value not in seen:
            seen.append(value)
    return "; ".join(seen)


def _invocation_starts(workdir):
    """Start times (epoch seconds) of every invocation of tools/train.py on a workdir: the
    "run ..." lines of its log.txt, else the times of its invocations.jsonl (an archive
    written before log.txt was archived)."""
    starts = []
    try:
        with open(os.path.join(workdir, workdir_lib.LOG_FILE)) as log:
            for line in log:
                if line[24:28] == "run ":
                    starts.append(time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")))
    except (OSError, ValueError):
        pass
    if starts:
        return starts
    try:
        return [time.mktime(time.strptime(r["time"], "%Y-%m-%dT%H:%M:%S"))
                for r in workdir_lib.invocations(workdir) if r.get("time")]
    except ValueError:
        return []


def training_minutes(workdir, records, step):
    """Wall minutes spent training up to ``step``, summed over the invocations (a run resumed
    after a pause does not count the pause): per invocation, from its start to its last
    evaluation at or before ``step``. NaN without a log."""
    starts = _invocation_starts(workdir)
    if not starts:
        return float("nan")
    bounds = starts[1:] + [float("inf")]
    total = 0.0
    for start, end in zip(starts, bounds):
        times = [r["wall_time"] for r in records if r["step"] <= step and start <= r["wall_time"] < end]
        if times:
            total += max(times) - start
    return total / 60.0


def summarize(runs, steps, metrics, last=5):
    """Per run name: mean and std over the seeds that reached ``steps``, and every run's result.

    Returns {name: {'seeds': [...], 'minutes': mean, metric: (mean, std), 'runs': {seed:
    result or None}}} in the order of ``runs``. A variant with no run on disk is left out (a
    variant applies to every row it fits: ``asr/faithful:1`` trained on row 13 only lists no
    empty faithful lines for the other rows); a paper run always stays."""
    table = {}
    for run in runs:
        entry = table.setdefault(run.name, {"runs": {}})
        entry["runs"][run.seed] = run_result(run.results, steps, last, metrics)
    for name in list(table):
        untrained = all(r is None for r in table[name]["runs"].values())
        if untrained and variant_of(name):
            del table[name]
    for entry in table.values():
        done = {s: r for s, r in entry["runs"].items() if r and r["complete"]}
        entry["seeds"] = sorted(done)
        if done:
            minutes = [r["minutes"] for r in done.values() if not np.isnan(r["minutes"])]
            entry["minutes"] = float(np.mean(minutes)) if minutes else float("nan")
            for m in metrics:
                values = [r[m] for r in done.values() if m in r]
                if values:
                    entry[m] = (float(np.mean(values)), float(np.std(values)))
    return table
