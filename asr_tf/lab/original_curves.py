"""The port's `faithful` runs beside the original's own runs on the same CPU.

Both sides evaluate on their own 1,000 test scenes every 200 steps: the original's test pass
(its JSON lines, asr_tf/lab/original_run.py: ``elbo``, ``accu``, ``mse``) and the port's
(metrics.jsonl: ``nelbo``, ``acc``, ``se``). A run has *locked up* when its test nELBO is NaN at
every evaluation from some step to its end: its gradients are NaN every step and the guard
zeroes them (the original's logs count the NaN gradient entries; the port's training logs
``nonfinite_grad_steps``). The comparison per learning rate:

* which seeds lock up, on each side;
* per evaluation step in ``window`` and per metric, whether each port seed that did not lock up
  lies inside the range of the original's seeds that did not (their min to max), and how many
  of those points do. If the port's seeds were further draws of the original's (the same
  distribution of runs), a point would fall inside the range of n original seeds with
  probability (n - 1) / (n + 1) (1/2 for three, 1/3 for two): the fraction to expect, not 1;
* a figure: nELBO (log scale), count accuracy and squared error over steps, the original's
  seeds solid, the port's dashed, one colour per seed index.
"""
import json
import math
import os

import numpy as np

METRICS = ("nelbo", "acc", "se")
ORIGINAL_NAMES = {"nelbo": "elbo", "acc": "accu", "se": "mse"}


def read_original(path):
    """{step: {nelbo, acc, se, nan_grad_steps}} from the original's JSON lines."""
    out = {}
    with open(path) as f:
        for line in f:
            d = json.loads(line)
            row = {k: float(d["test"][v]) for k, v in ORIGINAL_NAMES.items()}
            row["nan_grad_steps"] = d.get("train20", {}).get("nan_grad_steps")
            out[int(d["step"])] = row
    return out


def read_port(workdir):
    """{step: {nelbo, acc, se}} from a port workdir's metrics.jsonl."""
    from asr_tf.run import workdir as workdir_lib

    return {int(d["step"]): {k: float(d[k]) for k in METRICS}
            for d in workdir_lib.read_metrics(workdir) if "nelbo" in d}


def locked_from(run):
    """The first step from which every evaluation's nELBO is NaN, or None."""
    steps = sorted(run)
    first = None
    for step in steps:
        if math.isnan(run[step]["nelbo"]):
            first = step if first is None else first
        else:
            first = None
    return first


def spread(original, port, window=(1000, 3000)):
    """Where the port's seeds sit in the original's spread.

    Args:
      original, port: {seed: run} (runs from read_original / read_port).
      window: (first, last) evaluation steps compared.
    Returns:
      dict: ``locked`` {side: {seed: step or None}}; ``inside`` {metric: (points inside,
      points)} over the port's live seeds and the steps in ``window`` where the original has at
      least two live seeds; ``expected`` {metric: points expected inside if both sides drew
      from one distribution}; ``rows``: per step and metric (step, metric, original min, max,
      port values by seed).
    """
    locked = {"original": {s: locked_from(r) for s, r in original.items()},
              "port": {s: locked_from(r) for s, r in port.items()}}
    live_o = [s for s, step in locked["original"].items() if step is None]
    live_p = [s for s, step in locked["port"].items() if step is None]
    steps = sorted(set.intersection(*[set(original[s]) for s in live_o] +
                                    [set(port[s]) for s in live_p]) if live_o and live_p
                   else [])
    steps = [t for t in steps if window[0] <= t <= window[1]]
    inside = {m: [0, 0] for m in METRICS}
    expected = {m: 0.0 for m in METRICS}
    rows = []
    for t in steps:
        for m in METRICS:
            values = [original[s][t][m] for s in live_o]
            if len(values) < 2:
                continue
            lo, hi = min(values), max(values)
            port_values = {s: port[s][t][m] for s in live_p}
            for v in port_values.values():
                inside[m][0] += int(lo <= v <= hi)
                inside[m][1] += 1
                expected[m] += (len(values) - 1) / (len(values) + 1)
            rows.append((t, m, lo, hi, port_values))
    return {"locked": locked, "inside": {m: tuple(v) for m, v in inside.items()},
            "expected": {m: round(v, 1) for m, v in expected.items()}, "rows": rows}


def figure(original, port, path, title):
    """Writes the curves of one learning rate: three panels, original solid, port dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labels = {"nelbo": "test nELBO (nats, log scale)", "acc": "count accuracy",
              "se": "squared error"}
    for ax, m in zip(axes, METRICS):
        for side, runs, style in (("original", original, "-"), ("port", port, "--")):
            for k, seed in enumerate(sorted(runs)):
                run = runs[seed]
                steps = sorted(run)
                values = np.array([run[t][m] for t in steps], float)
                ax.plot(steps, values, style, color=colours[k % len(colours)],
                        label=f"{side} seed {seed}" + (" (locked)" if locked_from(run) else ""))
        ax.set_xlabel("training step")
        ax.set_title(labels[m])
        if m == "nelbo":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_report(results_dir, window=(1000, 3000), model="AIR-ASR-13"):
    """Reads ``orig_lr<rate>_s<seed>.jsonl`` and ``runs/faithful_lr<rate>_s<seed>/`` under
    ``results_dir``, writes ``curves_lr<rate>.png`` (titled with ``model``) and ``spread.json``
    there and returns the markdown summary (a table per learning rate)."""
    import re

    found = {}
    for name in sorted(os.listdir(results_dir)):
        m = re.fullmatch(r"orig_lr([0-9e.-]+)_s(\d+)\.jsonl", name)
        if m:
            found.setdefault(m[1], {"original": {}, "port": {}})["original"][int(m[2])] = \
                read_original(os.path.join(results_dir, name))
    runs = os.path.join(results_dir, "runs")
    for name in sorted(os.listdir(runs)) if os.path.isdir(runs) else []:
        m = re.fullmatch(r"faithful_lr([0-9e.-]+)_s(\d+)", name)
        if m and os.path.isfile(os.path.join(runs, name, "metrics.jsonl")):
            found.setdefault(m[1], {"original": {}, "port": {}})["port"][int(m[2])] = \
                read_port(os.path.join(runs, name))
    summary, lines = {}, []
    for rate, sides in sorted(found.items(), key=lambda kv: -float(kv[0])):
        result = spread(sides["original"], sides["port"], window)
        figure(sides["original"], sides["port"],
               os.path.join(results_dir, f"curves_lr{rate}.png"),
               f"{model} at lr {rate}: the original (solid) and faithful (dashed)")
        summary[rate] = {k: result[k] for k in ("locked", "inside", "expected")}
        last = {side: {s: run[max(run)] for s, run in sides[side].items()} for side in sides}
        lines += [f"lr {rate}, step {window[1]:,}: test nELBO / count accuracy / squared error",
                  "", "| run | " + " | ".join(f"seed {s}" for s in sorted(last["original"])) + " |",
                  "|---|" + "---|" * len(last["original"])]
        for side in ("original", "port"):
            cells = []
            for s in sorted(last[side]):
                r, lock = last[side][s], result["locked"][side][s]
                cells.append(f"{r['nelbo']:.0f} / {r['acc']:.2f} / {r['se']:.0f}"
                             + (f" (locked from {lock:,})" if lock is not None else ""))
            lines.append(f"| {side} | " + " | ".join(cells) + " |")
        lines.append("")
        inside = ", ".join(f"{m} {a}/{b} (one distribution: {result['expected'][m]:.0f})"
                           for m, (a, b) in result["inside"].items())
        lines += [f"Port points inside the original's range, steps {window[0]:,}-{window[1]:,}"
                  f" (live seeds): {inside}.", ""]
    with open(os.path.join(results_dir, "spread.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return "\n".join(lines)
