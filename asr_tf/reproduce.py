"""Reproducing the paper's Tables 1 and 2: the runs of a row, trained at a step budget, and the
report (tables beside the paper's, learning curves, image grids, the small results archived).

Every run lives in ``<runs_dir>/<config>_s<seed>``; its small results are archived in
``<archive_dir>/<config>_s<seed>`` (committed: a new machine has no ``runs/``). A run is read from
its workdir, or from its archive where the workdir has no evaluations (``Run.results``);
``train_runs`` skips the runs that reached the budget in either and resumes the others
(tools/train.py resumes a workdir; an archived run cut short has no checkpoint to resume and
trains again from step 0). The report reads only what is on disk. A run's number for a metric is the mean of its last ``last`` evaluations up to the
budget (one evaluation of 1,000 scenes with one stochastic pass is noisy); a row's number is
the mean ± std of that over the seeds that reached the budget.
"""
import dataclasses
import decimal
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np

from asr_tf import xla_cpu

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
RECORD_FILES = ("metrics.jsonl", "summary.json", "config.gin", "operative_config.gin",
                "invocations.jsonl", "log.txt")
_CONFIG_NAME = re.compile(r"(air(?:_pprior|_asr)?)_(13|14|24|mnist_overlap|dsprites_overlap)"
                          r"(?:_(\w+))?")


def table_of(row):
    """The paper table (1 or 2) of a row name."""
    for table, rows in TABLES.items():
        if row in rows:
            return table
    raise ValueError(f"row {row!r} is not one of Table 1's {TABLES[1]} or Table 2's {TABLES[2]}")


def row_configs(row, variants=()):
    """The configs of a row: AIR, AIR-pPrior, AIR-ASR and named variants (see
    :func:`variant_configs`)."""
    configs = [f"air_{row}", f"air_pprior_{row}", f"air_asr_{row}"]
    for variant in variants:
        configs += variant_configs(row, variant)
    return configs


def parse_variant(item):
    """``[model/]variant[:seeds]`` -> (models, variant, seeds or None). ``size`` is every
    model's ``size`` config; ``asr/faithful:1`` only ``air_asr_<row>_faithful``, one seed;
    ``air/floor20k`` only ``air_<row>_floor20k``."""
    spec, _, n = item.partition(":")
    model, _, variant = spec.rpartition("/")
    if model and model not in MODEL_PREFIXES:
        raise ValueError(f"variant {item!r}: model {model!r} is not one of {sorted(MODEL_PREFIXES)}")
    if not variant:
        raise ValueError(f"variant {item!r}: no variant name")
    try:
        seeds = int(n) if n else None
    except ValueError:
        raise ValueError(f"variant {item!r}: seeds {n!r} is not a number") from None
    return ((MODEL_PREFIXES[model],) if model else tuple(MODEL_NAMES)), variant, seeds


def _existing_variant_configs(row, variant):
    """The configs ``<model>_<row>_<name>`` of a variant that exist (maybe none)."""
    table_of(row)
    from asr_tf import config

    models, name, _ = parse_variant(variant)
    available = config.available_configs()
    return [f"{m}_{row}_{name}" for m in models if f"{m}_{row}_{name}" in available]


def variant_configs(row, variant):
    """The configs ``<model>_<row>_<variant>`` that exist for one variant (``[model/]name``:
    see :func:`parse_variant`); a variant no model of the row has is an error."""
    names = _existing_variant_configs(row, variant)
    if not names:
        models, name, _ = parse_variant(variant)
        raise ValueError(f"no config {' or '.join(f'{m}_{row}_{name}' for m in models)} for "
                         f"variant {variant!r} of row {row}")
    return names


def display_name(config):
    """``air_asr_13`` -> ``AIR-ASR``; ``air_asr_13_size`` -> ``AIR-ASR (size)``."""
    match = _CONFIG_NAME.fullmatch(config)
    if not match:
        return config
    model, _, variant = match.groups()
    return MODEL_NAMES[model] + (f" ({variant})" if variant else "")


def paper_row(config):
    """The paper's numbers for a config or a variant of it ({} if none)."""
    match = _CONFIG_NAME.fullmatch(config)
    return PAPER.get(f"{match.group(1)}_{match.group(2)}", {}) if match else {}


def row_of(config):
    """The row of a config (``air_asr_13_size`` -> '13'), None for another name."""
    match = _CONFIG_NAME.fullmatch(config)
    return match.group(2) if match else None


def variant_of(config):
    """The variant of a config (``air_asr_13_size`` -> 'size'), None for a paper config."""
    match = _CONFIG_NAME.fullmatch(config)
    return match.group(3) if match else None


def model_of(config):
    """'air', 'pprior' or 'asr' (variants included) for a row's config."""
    match = _CONFIG_NAME.fullmatch(config)
    return {p: m for m, p in MODEL_PREFIXES.items()}[match.group(1)] if match else None


def workdir_for(runs_dir, config, seed):
    return os.path.join(runs_dir, f"{config}_s{seed}")


# ------------------------------------------------------------------ training
@dataclasses.dataclass(frozen=True)
class Run:
    config: str
    seed: int
    workdir: str
    archived: str = None  # its archive folder (small results only), if any

    @property
    def results(self):
        """The folder its results are read from: the workdir once it has evaluations, else the
        archive if that has them, else the workdir."""
        if self.archived and not read_metrics(self.workdir) and read_metrics(self.archived):
            return self.archived
        return self.workdir


def plan(runs_dir, rows, asr_seeds=3, baseline_seeds=1, variants=(), variant_seeds=None,
         archive_dir=None):
    """The runs of some rows, by seed (every config's seed 0 first, so that a partial pass
    gives every row a seed 0), each with its folder in ``archive_dir`` if given. ``variants`` (``[model/]name[:seeds]``, e.g. 'size',
    'air/floor20k:1', 'asr/faithful:1') apply to every row that has them; their seeds default
    to ``variant_seeds``, else ``asr_seeds``."""
    seeds_of = {}
    for item in variants:
        n = parse_variant(item)[2]
        seeds_of[item.partition(":")[0]] = n if n is not None else (
            asr_seeds if variant_seeds is None else variant_seeds)
    for row in rows:
        table_of(row)
    for variant in seeds_of:
        if not any(_existing_variant_configs(row, variant) for row in rows):
            raise ValueError(f"variant {variant!r}: no config for it in the rows {list(rows)}")
    by_row = {}
    for row in rows:
        seeds = {f"air_{row}": baseline_seeds, f"air_pprior_{row}": baseline_seeds,
                 f"air_asr_{row}": asr_seeds}
        for variant, n in seeds_of.items():
            for c in _existing_variant_configs(row, variant):
                seeds[c] = n
        by_row[row] = seeds
    runs = []
    most = max([n for seeds in by_row.values() for n in seeds.values()] + [0])
    for seed in range(most):
        for row, seeds in by_row.items():
            for c, n in seeds.items():
                if seed < n:
                    runs.append(Run(c, seed, workdir_for(runs_dir, c, seed),
                                    archive_dir and workdir_for(archive_dir, c, seed)))
    return runs


def reached(workdir):
    """The last step a run evaluated (0 if none)."""
    records = read_metrics(workdir)
    return records[-1]["step"] if records else 0


def train_command(run, steps, threads=1, max_minutes=None, extra=()):
    """tools/train.py for one run at a step budget (``train_eval.num_steps``)."""
    tool = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools",
                        "train.py")
    cmd = [sys.executable, tool, "--config", run.config, "--workdir", run.workdir, "--seed",
           str(run.seed), "--gin_param", f"train_eval.num_steps = {int(steps)}",
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
    from asr_tf import runs as runs_lib

    todo = [r for r in runs if reached(r.results) < steps]
    for r in runs:
        if r not in todo:
            log(f"done already: {r.results} ({reached(r.results)} steps)")
        elif runs_lib.workdir_busy(r.workdir):
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
def read_metrics(workdir):
    """The evaluations of a run (metrics.jsonl), in step order."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    recs = [json.loads(line) for line in open(path) if line.strip()]
    return sorted(recs, key=lambda r: r["step"])


def run_result(workdir, steps, last=5, metrics=("nelbo", "acc", "se", "miou")):
    """One run at the budget: {'step': last step evaluated (<= steps), 'complete': whether it
    reached ``steps``, each metric: mean of its last ``last`` evaluations up to ``steps``,
    'minutes': training wall minutes, 'machine'}; None without evaluations."""
    records = [r for r in read_metrics(workdir) if r["step"] <= steps]
    if not records:
        return None
    tail = records[-last:]
    result = {m: float(np.mean([r[m] for r in tail])) for m in metrics if m in tail[-1]}
    result.update(step=records[-1]["step"], complete=records[-1]["step"] >= steps,
                  evaluations=len(tail), minutes=training_minutes(workdir, records, steps),
                  machine=_recorded(workdir, "machine"), commits=_recorded(workdir, "commit"))
    return result


def _recorded(workdir, key):
    """The distinct values of ``key`` over a run's invocations (invocations.jsonl), in order,
    joined by '; ' ('' without a record)."""
    path = os.path.join(workdir, "invocations.jsonl")
    if not os.path.exists(path):
        return ""
    seen = []
    for line in open(path):
        value = json.loads(line).get(key, "")
        if value and value not in seen:
            seen.append(value)
    return "; ".join(seen)


def _invocation_starts(workdir):
    """Start times (epoch seconds) of every invocation of tools/train.py on a workdir: the
    "run ..." lines of its log.txt, else the times of its invocations.jsonl (an archive
    written before log.txt was archived)."""
    starts = []
    try:
        with open(os.path.join(workdir, "log.txt")) as log:
            for line in log:
                if line[24:28] == "run ":
                    starts.append(time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")))
    except (OSError, ValueError):
        pass
    if starts:
        return starts
    try:
        with open(os.path.join(workdir, "invocations.jsonl")) as record:
            for line in record:
                stamp = json.loads(line).get("time") if line.strip() else None
                if stamp:
                    starts.append(time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S")))
    except (OSError, ValueError):
        return []
    return starts


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
    """Per config: mean and std over the seeds that reached ``steps``, and every run's result.

    Returns {config: {'seeds': [...], 'minutes': mean, metric: (mean, std), 'runs': {seed:
    result or None}}} in the order of ``runs``. A variant with no run on disk is left out (a
    variant applies to every row that has its config: ``asr/faithful:1`` trained on row 13
    only lists no empty faithful lines for the other rows); a paper config always stays."""
    table = {}
    for run in runs:
        entry = table.setdefault(run.config, {"runs": {}})
        entry["runs"][run.seed] = run_result(run.results, steps, last, metrics)
    for config in list(table):
        untrained = all(r is None for r in table[config]["runs"].values())
        if untrained and variant_of(config):
            del table[config]
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


# ------------------------------------------------------------------ writing the report
def _round(value, digits):
    """Half-up decimal rounding of the printed value (the paper's 41.05 prints as 41.1)."""
    quantum = decimal.Decimal(1).scaleb(-digits)
    return str(decimal.Decimal(repr(float(value))).quantize(quantum, decimal.ROUND_HALF_UP))


def _fmt(mean_std, metric, seeds=None):
    """'mean ± std'; the mean alone for one seed (its std says nothing)."""
    if not mean_std:
        return "–"
    m, s = mean_std
    if seeds == 1:
        return _round(m, DIGITS[metric])
    return f"{_round(m, DIGITS[metric])} ± {_round(s, DIGITS[metric])}"


def markdown_table(table_number, rows_tables, steps, last=5):
    """The paper's table with ours beside it: one line per config of every row."""
    metrics = METRICS[table_number]
    head = " | ".join(f"{METRIC_NAMES[m]} | paper {METRIC_NAMES[m]}" for m in metrics)
    lines = [f"| data | model (`config`) | seeds | {head} | minutes / run |",
             "|---|---|---|" + "---|---|" * len(metrics) + "---|"]
    for row, table in rows_tables.items():
        for i, (config, entry) in enumerate(table.items()):
            paper = {} if variant_of(config) else paper_row(config)
            ours = " | ".join(f"{_fmt(entry.get(m), m, len(entry['seeds']))} | "
                              f"{_fmt(paper.get(m), m)}" for m in metrics)
            m = entry.get("minutes")
            minutes = "–" if m is None or np.isnan(m) else f"{m:.0f}"
            lines.append(f"| {ROW_NAMES[row] if i == 0 else ''} | {display_name(config)} "
                         f"(`{config}`) | {len(entry['seeds'])} | {ours} | {minutes} |")
    return (f"Ours: {steps:,} iterations of batch 64, each run the mean of its last {last} "
            f"evaluations (1,000 test scenes), mean ± std over the seeds that reached {steps:,} "
            f"(one seed: its value). Paper: 182,812 (Table 1) or 89,062 (Table 2) iterations, 3 "
            f"runs; a variant's paper numbers are its row's plain config's.\n\n"
            + "\n".join(lines))


def per_run_table(rows_tables, steps):
    """Markdown: one line per run with its step, evaluations averaged, minutes and metrics."""
    lines = ["| run | step | evaluations | minutes | nELBO | ACC | SE | mIoU | machine | code |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for table in rows_tables.values():
        for config, entry in table.items():
            for seed, r in sorted(entry["runs"].items()):
                if r is None:
                    lines.append(f"| `{config}` seed {seed} | – | | | | | | | | |")
                    continue
                acc = f"{r['acc']:.3f}" if "acc" in r else "–"
                flag = "" if r["complete"] else f" (of {steps:,})"
                minutes = "–" if np.isnan(r["minutes"]) else f"{r['minutes']:.0f}"
                lines.append(f"| `{config}` seed {seed} | {r['step']:,}{flag} | {r['evaluations']} | "
                             f"{minutes} | {r['nelbo']:.1f} | {acc} | {r['se']:.1f} | "
                             f"{r['miou']:.3f} | {r['machine'] or '–'} | "
                             f"{r.get('commits') or '–'} |")
    return "\n".join(lines)


def write_figures(runs, row, out_dir, steps):
    """Learning curves of every run of a row, and reconstruction and generation grids of each
    config's first seed that has the checkpoint of step ``steps`` (a run still training gets
    none: its grids would not be the budget's)."""
    from asr_tf import evaluation, viz

    os.makedirs(out_dir, exist_ok=True)
    mine = [r for r in runs if row_of(r.config) == row]
    series = {f"{r.config} s{r.seed}": [x for x in read_metrics(r.results) if x["step"] <= steps]
              for r in mine}
    keys = list(METRICS[table_of(row)])
    paths = {"curves": viz.learning_curves_png({k: v for k, v in series.items() if v}, keys,
                                               os.path.join(out_dir, f"{row}_curves.png"))}
    firsts = {}
    for r in mine:
        if os.path.exists(os.path.join(r.workdir, "ckpt", f"ckpt-{steps}.index")):
            firsts.setdefault(r.config, r)
    for config, r in firsts.items():
        checkpoint = os.path.join(r.workdir, "ckpt", f"ckpt-{steps}")
        for kind, recon in (("reconstruction", True), ("generation", False)):
            path = os.path.join(out_dir, f"{config}_{kind}.png")
            evaluation.write_figure(r.workdir, path, reconstruct=recon, num=16 if recon else 36,
                                    checkpoint=checkpoint)
            paths[f"{config}_{kind}"] = path
    return paths


def figures_markdown(rows, out_dir, relative_to):
    """Markdown linking the figures :func:`write_figures` left in ``out_dir/<row>/`` (paths
    relative to the folder of the page, ``relative_to``): per row its curves, then each
    config's reconstruction and generation grids."""
    lines = []
    for row in rows:
        folder = os.path.join(out_dir, row)
        if not os.path.isdir(folder):
            continue
        rel = os.path.relpath(folder, relative_to)
        lines += [f"### {ROW_NAMES[row]}", ""]
        if os.path.exists(os.path.join(folder, f"{row}_curves.png")):
            lines += [f"![{row} curves]({rel}/{row}_curves.png)", ""]
        order = {c: i for i, c in enumerate(row_configs(row))}
        grids = sorted((f[:-len("_reconstruction.png")] for f in os.listdir(folder)
                        if f.endswith("_reconstruction.png")),
                       key=lambda c: (order.get(c, len(order)), c))
        if grids:
            lines += ["| config | reconstruction (input with boxes \\| reconstruction) | "
                      "generation |", "|---|---|---|"]
            for c in grids:
                gen = (f"![]({rel}/{c}_generation.png)"
                       if os.path.exists(os.path.join(folder, f"{c}_generation.png")) else "–")
                lines.append(f"| {display_name(c)} (`{c}`) | ![]({rel}/{c}_reconstruction.png) "
                             f"| {gen} |")
            lines.append("")
    return "\n".join(lines)


def archive(runs, archive_dir):
    """Copies the small results (RECORD_FILES; no checkpoints) of every run with evaluations in
    its workdir to ``archive_dir/<config>_s<seed>/``, replacing what an earlier run of that
    name left there; returns the folders written. Runs read from the archive are left as
    they are."""
    written = []
    for r in runs:
        if not read_metrics(r.workdir):
            continue
        target = os.path.join(archive_dir, os.path.basename(r.workdir.rstrip("/")))
        os.makedirs(target, exist_ok=True)
        for name in RECORD_FILES:
            source, copy = os.path.join(r.workdir, name), os.path.join(target, name)
            if os.path.exists(source):
                shutil.copyfile(source, copy)
            elif os.path.exists(copy):
                os.remove(copy)  # an earlier run's, not this one's
        written.append(target)
    return written


def replace_section(path, name, text):
    """Replaces the text between ``<!-- begin NAME -->`` and ``<!-- end NAME -->`` in a
    markdown file (appends the section if the markers are missing)."""
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    doc = open(path).read() if os.path.exists(path) else ""
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in doc and end in doc:
        doc = doc[:doc.index(begin)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(doc)
