"""How a glimpse model counts on the test scenes (pure numpy), logged at every evaluation.

Inputs are the evaluation outputs of one test pass: the inferred ``count`` [N], the posterior
presence probability ``z_pres_prob`` [N, T] of every executed step, and the true
``true_count`` [N].

* :func:`count_histogram`: for each true count, the fraction of scenes with each inferred count.
* :func:`presence_by_step`: for each true count, the mean presence probability p_t of each
  glimpse step t, over the scenes that reached step t (their count >= t, so p_t decided whether
  object t+1 exists), and over all scenes.
* :func:`count_report` bundles both with flat scalars for logging (``count_frac_<c>obj_<k>``,
  ``pres_<c>obj_step<t>``); the lab's reports (asr_tf/lab/diagnostics.py) render it.
"""
import re

import numpy as np

# Prefixes of the scalars :func:`count_report` adds to every evaluation (TensorBoard only).
COUNT_SCALAR_PREFIXES = ("count_frac_", "pres_")
# Their names, and the patterns that read (true count, count) / (true count, step) back.
COUNT_FRAC_KEY = re.compile(r"count_frac_(\d+)obj_(\d+)$")
PRESENCE_KEY = re.compile(r"pres_(\d+)obj_step(\d+)$")


def count_frac_key(true_count, count):
    """The scalar of the fraction of true-count scenes inferred as ``count`` (true_count None:
    of all scenes, their true counts unknown)."""
    return f"count_frac_{true_count}obj_{count}" if true_count is not None \
        else f"count_frac_any_{count}"


def presence_key(true_count, step):
    """The scalar of the mean presence probability of glimpse ``step`` on true-count scenes
    (true_count None: on all scenes)."""
    return f"pres_{true_count}obj_step{step}" if true_count is not None else f"pres_any_step{step}"


def as_counts(name, values):
    """``values`` as an int64 vector of counts; ValueError naming ``name`` otherwise."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"{name} must be a vector [N], got shape {values.shape}")
    if values.size and (np.any(values < 0) or np.any(values != np.round(values))):
        raise ValueError(f"{name} must hold non-negative integers")
    return values.astype(np.int64)


def count_histogram(count, true_count, max_count):
    """Fraction of scenes with each inferred count, per true count.

    Args:
      count: [N] inferred counts; true_count: [N] true counts; max_count: the largest count
        to tabulate (T); larger inferred counts are an error.
    Returns:
      {true count c: (fractions [max_count + 1] over inferred counts 0..max_count, scenes n_c)}.
    """
    count, true_count = as_counts("count", count), as_counts("true_count", true_count)
    if count.shape != true_count.shape:
        raise ValueError(f"count {count.shape} and true_count {true_count.shape} differ in shape")
    if count.size and count.max() > max_count:
        raise ValueError(f"an inferred count {count.max()} exceeds max_count={max_count}")
    out = {}
    for c in np.unique(true_count):
        sel = count[true_count == c]
        out[int(c)] = (np.bincount(sel, minlength=max_count + 1) / sel.size, int(sel.size))
    return out


def presence_by_step(z_pres_prob, true_count, count=None, step_mask=None):
    """Mean presence probability per glimpse step, per true count.

    Args:
      z_pres_prob: [N, T] sigmoid of the posterior z_pres logit at each step.
      true_count: [N].
      count: [N] inferred counts; if given, ``reached`` averages step t over the scenes with
        count >= t (those for which step t decided about object t+1).
      step_mask: [T] 1 for the steps the test pass executed (records after it are zeros);
        default: every step.
    Returns:
      {true count c: {"all": [T], "reached": [T] or None, "reached_n": [T] or None}}; NaN at
      steps not executed or reached by no scene.
    """
    p = np.asarray(z_pres_prob, np.float64)
    if p.ndim != 2:
        raise ValueError(f"z_pres_prob must be [N, T], got shape {p.shape}")
    true_count = as_counts("true_count", true_count)
    if true_count.shape[0] != p.shape[0]:
        raise ValueError(f"true_count has {true_count.shape[0]} scenes, z_pres_prob {p.shape[0]}")
    t_max = p.shape[1]
    executed = np.ones(t_max, bool) if step_mask is None else np.asarray(step_mask) > 0.5
    if executed.shape != (t_max,):
        raise ValueError(f"step_mask must be [{t_max}], got shape {executed.shape}")
    if count is not None:
        count = as_counts("count", count)
        if count.shape != true_count.shape:
            raise ValueError(f"count {count.shape} and true_count {true_count.shape} differ")
    out = {}
    for c in np.unique(true_count):
        rows = true_count == c
        mean_all = np.where(executed, p[rows].mean(0), np.nan)
        entry = {"all": mean_all, "reached": None, "reached_n": None}
        if count is not None:
            reached = count[rows][:, None] >= np.arange(t_max)[None, :]  # [n_c, T]
            n = reached.sum(0)
            total = np.where(reached, p[rows], 0.0).sum(0)
            entry["reached"] = np.where(executed & (n > 0), total / np.maximum(n, 1), np.nan)
            entry["reached_n"] = n
        out[int(c)] = entry
    return out


def count_report(count, z_pres_prob, true_count, step_mask=None):
    """Histogram and presence per step, plus flat float scalars for logging.

    Scalars: ``count_frac_<c>obj_<k>`` (fraction of true-count-c scenes inferred as k),
    ``pres_<c>obj_step<t>`` (mean p_t over the scenes that reached step t; NaN skipped).
    ``true_count`` None (scenes without boxes): one group of all scenes, keyed None,
    ``count_frac_any_<k>`` and ``pres_any_step<t>``.
    """
    p = np.asarray(z_pres_prob)
    t_max = p.shape[1] if p.ndim == 2 else 0
    groups = np.zeros(np.shape(count), np.int64) if true_count is None else true_count
    hist = count_histogram(count, groups, t_max)
    pres = presence_by_step(p, groups, count, step_mask)
    if true_count is None:
        hist, pres = {None: hist[0]}, {None: pres[0]}
    scalars = {}
    for c, (frac, _) in hist.items():
        for k, f in enumerate(frac):
            scalars[count_frac_key(c, k)] = float(f)
        for t, v in enumerate(pres[c]["reached"]):
            if np.isfinite(v):
                scalars[presence_key(c, t)] = float(v)
    return {"histogram": hist, "presence": pres, "scalars": scalars}
