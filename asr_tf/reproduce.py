"""Reproducing the paper's Table 1 rows: train AIR, AIR-pPrior and AIR-ASR side by side and
write a report (table beside the paper's numbers, learning curves, image grids).

The ASR run gets a wall-time budget; the baselines train for the same number of steps.
Every run lives in ``<runs_dir>/<config>_s<seed>`` and resumes if present.
"""
import glob
import json
import os
import platform
import re
import subprocess
import sys
import time

import numpy as np

# Table 1 of the paper: mean, std over 3 runs.
PAPER_TABLE1 = {
    "air_13": dict(nelbo=(404.41, 4.58), acc=(0.81, 0.23), se=(31.94, 4.68), miou=(0.61, 0.13)),
    "air_pprior_13": dict(nelbo=(405.21, 1.17), acc=(0.48, 0.00), se=(49.42, 0.24), miou=(0.43, 0.01)),
    "air_asr_13": dict(nelbo=(360.20, 19.67), acc=(0.96, 0.00), se=(28.84, 1.11), miou=(0.61, 0.00)),
    "air_14": dict(nelbo=(543.44, 54.71), acc=(0.48, 0.03), se=(52.77, 4.92), miou=(0.43, 0.07)),
    "air_pprior_14": dict(nelbo=(519.06, 5.47), acc=(0.50, 0.00), se=(68.72, 0.55), miou=(0.43, 0.00)),
    "air_asr_14": dict(nelbo=(441.54, 30.97), acc=(0.96, 0.01), se=(41.05, 7.11), miou=(0.55, 0.08)),
    "air_24": dict(nelbo=(639.49, 23.13), acc=(0.55, 0.09), se=(57.69, 4.88), miou=(0.46, 0.06)),
    "air_pprior_24": dict(nelbo=(643.28, 8.67), acc=(0.00, 0.00), se=(83.35, 0.44), miou=(0.10, 0.00)),
    "air_asr_24": dict(nelbo=(495.73, 35.80), acc=(0.98, 0.01), se=(48.54, 5.60), miou=(0.54, 0.08)),
}
PAPER_NAMES = {"air": "AIR", "air_pprior": "AIR-pPrior", "air_asr": "AIR-ASR"}
METRICS = ("nelbo", "acc", "se", "miou")


def row_configs(row, asr_variant=None):
    """The configs of a Table 1 row: AIR, AIR-pPrior and AIR-ASR, the last one optionally a
    named variant (``air_asr_13_size`` for ``asr_variant='size'``), which must exist."""
    if row not in ("13", "14", "24"):
        raise ValueError(f"Table 1 row {row!r} is not one of 13, 14, 24")
    asr = f"air_asr_{row}" + (f"_{asr_variant}" if asr_variant else "")
    if asr_variant:
        from asr_tf import config

        if asr not in config.available_configs():
            raise ValueError(f"no config {asr!r} for ASR variant {asr_variant!r} of row {row}")
    return [f"air_{row}", f"air_pprior_{row}", asr]


# A Table 1 config name: model, row and an optional variant (``air_asr_13_size``).
_CONFIG_NAME = re.compile(r"(air(?:_pprior|_asr)?)_(\d+)(?:_(\w+))?")


def display_name(config):
    """``air_asr_13`` -> ``AIR-ASR-13``; ``air_asr_13_size`` -> ``AIR-ASR-13 (size)``."""
    match = _CONFIG_NAME.fullmatch(config)
    if not match:
        return config
    model, row, variant = match.groups()
    return f"{PAPER_NAMES[model]}-{row}" + (f" ({variant})" if variant else "")


def paper_row(config):
    """The paper's Table 1 numbers for a config or a variant of it ({} if none)."""
    match = _CONFIG_NAME.fullmatch(config)
    return PAPER_TABLE1.get(f"{match.group(1)}_{match.group(2)}", {}) if match else {}


def workdir_for(runs_dir, config, seed):
    return os.path.join(runs_dir, f"{config}_s{seed}")


def train(config, workdir, seed, max_steps=None, max_minutes=None, extra=()):
    """Runs tools/train.py in a subprocess (its log next to the workdir); returns the exit code."""
    tool = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "train.py")
    cmd = [sys.executable, tool, "--config", config, "--workdir", workdir, "--seed", str(seed)]
    if max_steps:
        cmd += ["--max_steps", str(max_steps)]
    if max_minutes:
        cmd += ["--gin_param", f"train_eval.max_minutes = {max_minutes}"]
    for b in extra:
        cmd += ["--gin_param", b]
    os.makedirs(os.path.dirname(os.path.abspath(workdir)) or ".", exist_ok=True)
    with open(workdir.rstrip("/") + ".log", "a") as log:
        return subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)


def read_metrics(workdir):
    """The evaluations of a run (metrics.jsonl), in step order."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    recs = [json.loads(line) for line in open(path) if line.strip()]
    return sorted(recs, key=lambda r: r["step"])


def at_step(records, step):
    """The evaluation at ``step`` (or the last one before it); None if the run has not
    trained that far (its last evaluation is before ``step``)."""
    if not records or records[-1]["step"] < step:
        return None
    before = [r for r in records if r["step"] <= step]
    return before[-1] if before else None


def summarize(runs_dir, configs, seeds_by_config, step=None):
    """Table entries at a common step: per config, mean/std over seeds of each metric.

    ``step`` None: the largest step that every run has evaluated. Runs that have not trained
    to ``step`` are left out (a config with none is left out of the table).
    """
    runs = {c: {s: read_metrics(workdir_for(runs_dir, c, s)) for s in seeds_by_config[c]}
            for c in configs}
    runs = {c: {s: r for s, r in v.items() if r} for c, v in runs.items()}
    if step is None:
        step = min(r[-1]["step"] for v in runs.values() for r in v.values())
    table = {}
    for c, by_seed in runs.items():
        reached = {s: at_step(r, step) for s, r in by_seed.items()}
        reached = {s: r for s, r in reached.items() if r}
        if not reached:
            continue
        rows = list(reached.values())
        table[c] = {m: (float(np.mean([r[m] for r in rows])), float(np.std([r[m] for r in rows])))
                    for m in METRICS}
        table[c]["seeds"] = sorted(reached)
        table[c]["wall_minutes"] = float(np.mean([
            training_minutes(workdir_for(runs_dir, c, s), by_seed[s], step) for s in reached]))
    return step, table, runs


def _invocation_starts(workdir):
    """Start times (epoch seconds) of every invocation of tools/train.py on a workdir: the
    "run ..." lines of its log.txt."""
    starts = []
    try:
        with open(os.path.join(workdir, "log.txt")) as log:
            for line in log:
                if line[24:28] == "run ":
                    starts.append(time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")))
    except (OSError, ValueError):
        pass
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


def _fmt(mean_std, digits):
    m, s = mean_std
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def markdown_table(table, step):
    digits = dict(nelbo=1, acc=2, se=1, miou=2)
    lines = [f"| model (step {step}) | seeds | minutes | nELBO | ACC | SE | mIoU | paper nELBO | "
             "paper ACC | paper SE | paper mIoU |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c, row in table.items():
        paper, name = paper_row(c), display_name(c)
        ours = " | ".join(_fmt(row[m], digits[m]) for m in METRICS)
        theirs = " | ".join(_fmt(paper[m], digits[m]) if m in paper else "–" for m in METRICS)
        lines.append(f"| {name} (`{c}`) | {len(row['seeds'])} | {row['wall_minutes']:.0f} | "
                     f"{ours} | {theirs} |")
    return "\n".join(lines)


def per_seed_table(runs, step):
    """Markdown: one line per run (config, seed) with its evaluation at ``step``; runs that
    have not reached ``step`` are left out."""
    lines = [f"| run (step {step}) | nELBO | ACC | SE | mIoU |", "|---|---|---|---|---|"]
    for c, by_seed in runs.items():
        for seed, records in sorted(by_seed.items()):
            r = at_step(records, step)
            if r:
                lines.append(f"| `{c}` seed {seed} | {r['nelbo']:.1f} | {r['acc']:.3f} | "
                             f"{r['se']:.1f} | {r['miou']:.3f} |")
    return "\n".join(lines)


def figures(runs_dir, configs, seeds_by_config, out_dir, runs, step=None):
    """Learning curves (one series per run) and grids of each config's first seed, from the
    checkpoint at ``step`` (default: the latest)."""
    from asr_tf import evaluation, viz

    os.makedirs(out_dir, exist_ok=True)
    series = {f"{c} s{seed}": runs[c][seed] for c in configs for seed in sorted(runs.get(c, {}))}
    paths = {"curves": viz.learning_curves_png(series, ["acc", "se", "miou", "nelbo"],
                                               os.path.join(out_dir, "learning_curves.png"))}
    for c in configs:
        workdir = workdir_for(runs_dir, c, min(seeds_by_config[c]))
        checkpoint = os.path.join(workdir, "ckpt", f"ckpt-{step}") if step else None
        if not glob.glob((checkpoint or os.path.join(workdir, "ckpt", "ckpt-*")) + ".index"):
            continue
        for kind, recon in (("reconstruction", True), ("generation", False)):
            path = os.path.join(out_dir, f"{c}_{kind}.png")
            evaluation.write_figure(workdir, path, reconstruct=recon, num=36 if recon else 64,
                                   checkpoint=checkpoint)
            paths[f"{c}_{kind}"] = path
    return paths


def machine():
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
