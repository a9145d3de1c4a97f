"""The report of the paper's tables (lab tooling): our tables beside the paper's, one line per
run, learning curves and image grids per row, the small results of every run archived, and the
marked sections of docs/RESULTS.md rewritten (tools/reproduce.py).
"""
import decimal
import json
import os
import shutil

import numpy as np

from asr_tf import plots
from asr_tf.lab import reproduce
from asr_tf.run import trained, workdir as workdir_lib


def write_report(runs, rows, steps, out_dir, results_md=None, figures=True, last=5, log=print,
                 count_curves=False):
    """Tables (``out_dir/table<N>.md`` and ``.json``, and the marked sections of ``results_md``),
    figures per row (``out_dir/<row>/``; with ``count_curves`` each run's counts over training
    too) from what is on disk."""
    by_table = {}
    for row in sorted(rows, key=reproduce.ROW_ORDER.index):
        table = reproduce.table_of(row)
        mine = [r for r in runs if reproduce.row_of(r.name) == row]
        by_table.setdefault(table, {})[row] = reproduce.summarize(
            mine, steps, reproduce.METRICS[table], last)
        if figures:
            for name, path in write_figures(mine, row, os.path.join(out_dir, row), steps,
                                            count_curves).items():
                log(f"{name}: {path}")
    os.makedirs(out_dir, exist_ok=True)
    for table, rows_tables in by_table.items():
        text = (markdown_table(table, rows_tables, steps, last) + "\n\n"
                + per_run_table(rows_tables, steps))
        log(f"Table {table}:\n{text}\n")
        with open(os.path.join(out_dir, f"table{table}.md"), "w") as f:
            f.write(text + "\n")
        with open(os.path.join(out_dir, f"table{table}.json"), "w") as f:
            json.dump({"steps": steps, "last": last, "rows": rows_tables}, f, indent=1)
        if results_md:
            replace_section(results_md, f"table{table}", text)
    if results_md and figures:
        replace_section(results_md, "figures", figures_markdown(
            rows, out_dir, os.path.dirname(os.path.abspath(results_md))))


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
        return _round(m, reproduce.DIGITS[metric])
    return f"{_round(m, reproduce.DIGITS[metric])} ± {_round(s, reproduce.DIGITS[metric])}"


def markdown_table(table_number, rows_tables, steps, last=5):
    """The paper's table with ours beside it: one line per run of every row."""
    metrics = reproduce.METRICS[table_number]
    head = " | ".join(f"{reproduce.METRIC_NAMES[m]} | paper {reproduce.METRIC_NAMES[m]}" for m in metrics)
    lines = [f"| data | model (`run`) | seeds | {head} | minutes / run |",
             "|---|---|---|" + "---|---|" * len(metrics) + "---|"]
    for row, table in rows_tables.items():
        for i, (name, entry) in enumerate(table.items()):
            paper = {} if reproduce.variant_of(name) else reproduce.paper_row(name)
            ours = " | ".join(f"{_fmt(entry.get(m), m, len(entry['seeds']))} | "
                              f"{_fmt(paper.get(m), m)}" for m in metrics)
            m = entry.get("minutes")
            minutes = "–" if m is None or np.isnan(m) else f"{m:.0f}"
            lines.append(f"| {reproduce.ROW_NAMES[row] if i == 0 else ''} | "
                         f"{reproduce.display_name(name)} (`{name}`) | {len(entry['seeds'])} | "
                         f"{ours} | {minutes} |")
    return (f"Ours: {steps:,} iterations of batch 64, each run the mean of its last {last} "
            f"evaluations (1,000 test scenes), mean ± std over the seeds that reached {steps:,} "
            f"(one seed: its value). Paper: 182,812 (Table 1) or 89,062 (Table 2) iterations, 3 "
            f"runs; a variant's paper numbers are its row's paper run's.\n\n"
            + "\n".join(lines))


def per_run_table(rows_tables, steps):
    """Markdown: one line per run with its step, evaluations averaged, minutes and metrics."""
    lines = ["| run | step | evaluations | minutes | nELBO | ACC | SE | mIoU | machine | code |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for table in rows_tables.values():
        for name, entry in table.items():
            for seed, r in sorted(entry["runs"].items()):
                if r is None:
                    lines.append(f"| `{name}` seed {seed} | – | | | | | | | | |")
                    continue
                acc = f"{r['acc']:.3f}" if "acc" in r else "–"
                flag = "" if r["complete"] else f" (of {steps:,})"
                minutes = "–" if np.isnan(r["minutes"]) else f"{r['minutes']:.0f}"
                lines.append(f"| `{name}` seed {seed} | {r['step']:,}{flag} | {r['evaluations']} | "
                             f"{minutes} | {r['nelbo']:.1f} | {acc} | {r['se']:.1f} | "
                             f"{r['miou']:.3f} | {r['machine'] or '–'} | "
                             f"{r.get('commits') or '–'} |")
    return "\n".join(lines)


def write_figures(runs, row, out_dir, steps, count_curves=False):
    """Learning curves of every run of a row (a colour per run name, a line style per seed),
    with ``count_curves`` how each run counts over training (``plots.count_curves_figure``), and
    reconstruction and generation grids of each name's first seed that has the checkpoint
    of step ``steps`` (a run still training gets none: its grids would not be the budget's)."""
    os.makedirs(out_dir, exist_ok=True)
    mine = [r for r in runs if reproduce.row_of(r.name) == row]
    series = {(r.name, f"s{r.seed}"): [x for x in workdir_lib.read_metrics(r.results)
                                       if x["step"] <= steps] for r in mine}
    keys = list(reproduce.METRICS[reproduce.table_of(row)])
    paths = {"curves": plots.learning_curves_png({k: v for k, v in series.items() if v}, keys,
                                               os.path.join(out_dir, f"{row}_curves.png"))}
    if count_curves:
        paths["counts"] = plots.count_curves_png(
            {f"{name} {seed}": v for (name, seed), v in series.items() if v},
            os.path.join(out_dir, f"{row}_counts.png"))
    firsts = {}
    for r in mine:
        if workdir_lib.has_checkpoint(r.workdir, steps):
            firsts.setdefault(r.name, r)
    for name, r in firsts.items():
        checkpoint = workdir_lib.checkpoint_path(r.workdir, steps)
        for kind, recon in (("reconstruction", True), ("generation", False)):
            path = os.path.join(out_dir, f"{name}_{kind}.png")
            trained.write_figure(r.workdir, path, reconstruct=recon, num=16 if recon else 36,
                                 checkpoint=checkpoint)
            paths[f"{name}_{kind}"] = path
    return paths


def figures_markdown(rows, out_dir, relative_to):
    """Markdown linking the figures :func:`write_figures` left in ``out_dir/<row>/`` (paths
    relative to the folder of the page, ``relative_to``): per row its curves, then each
    run's reconstruction and generation grids."""
    lines = []
    for row in rows:
        folder = os.path.join(out_dir, row)
        if not os.path.isdir(folder):
            continue
        rel = os.path.relpath(folder, relative_to)
        lines += [f"### {reproduce.ROW_NAMES[row]}", ""]
        if os.path.exists(os.path.join(folder, f"{row}_curves.png")):
            lines += [f"![{row} curves]({rel}/{row}_curves.png)", ""]
        if os.path.exists(os.path.join(folder, f"{row}_counts.png")):
            lines += [f"![{row} counts]({rel}/{row}_counts.png)", ""]
        order = {c: i for i, c in enumerate(reproduce.row_runs(row))}
        grids = sorted((f[:-len("_reconstruction.png")] for f in os.listdir(folder)
                        if f.endswith("_reconstruction.png")),
                       key=lambda c: (order.get(c, len(order)), c))
        if grids:
            lines += ["| run | reconstruction (input with boxes \\| reconstruction) | "
                      "generation |", "|---|---|---|"]
            for c in grids:
                gen = (f"![]({rel}/{c}_generation.png)"
                       if os.path.exists(os.path.join(folder, f"{c}_generation.png")) else "–")
                lines.append(f"| {reproduce.display_name(c)} (`{c}`) | ![]({rel}/{c}_reconstruction.png) "
                             f"| {gen} |")
            lines.append("")
    return "\n".join(lines)


def archive(runs, archive_dir):
    """Copies the small results (``workdir.RECORD_FILES``; no checkpoints) of every run with
    evaluations in its workdir to ``archive_dir/<name>_s<seed>/``, replacing what an earlier run of that
    name left there; returns the folders written. Runs read from the archive are left as
    they are."""
    written = []
    for r in runs:
        if not workdir_lib.read_metrics(r.workdir):
            continue
        target = os.path.join(archive_dir, os.path.basename(r.workdir.rstrip("/")))
        os.makedirs(target, exist_ok=True)
        for name in workdir_lib.RECORD_FILES:
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
