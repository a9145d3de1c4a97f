"""Trained runs against the reference boxes of their data set (lab tooling;
``tools/compare_reference.py``): for the Hubble example of docs/OWN_DATA.md, AIR and AIR-ASR
against the source extractor on the test canvases.

Per run and per pass (the deterministic one, means and z_pres thresholded at 0.5, and the
paper's one stochastic pass), on the run's own test split with its own evaluation noise:

* counts: exact-count accuracy, mean absolute error, mean signed error (inferred - reference),
  the confusion matrix (``count_agreement``);
* boxes: the project's mIoU (asr_tf/metrics.py: Hungarian matching, "+1 px" IoU, / max of the
  two counts), over all canvases and over the canvases whose count is right (where it measures
  the boxes alone);
* sizes: percentiles of the present boxes' sides and of the reference sides (max(w, h)), px of
  the canvas.

Figures: the reference boxes on a fixed choice of test canvases; each run's reconstructions of
them with its boxes (deterministic pass); 64 samples of each run's generative model.
"""
import json
import os

import numpy as np
import tensorflow as tf

from asr_tf import metrics, viz
from asr_tf.run import evaluation, trained

PERCENTILES = (5, 25, 50, 75, 95)
PASSES = (("deterministic", True), ("stochastic", False))


def count_agreement(inferred, reference, max_count) -> dict:
    """How inferred counts agree with reference counts.

    Args:
      inferred, reference: [N] ints in 0..max_count.
      max_count: the largest count either may hold (the model's glimpse steps).
    Returns:
      {'acc': fraction equal, 'mae': mean |inferred - reference|, 'bias': mean (inferred -
      reference), 'confusion': [max_count + 1][max_count + 1] ints, row = reference count,
      column = inferred count}.
    """
    inferred = np.asarray(inferred, np.int64).reshape(-1)
    reference = np.asarray(reference, np.int64).reshape(-1)
    if inferred.shape != reference.shape or not inferred.size:
        raise ValueError(f"counts {inferred.shape} and {reference.shape}: need the same, "
                         "non-empty shape")
    for name, c in (("inferred", inferred), ("reference", reference)):
        if c.min() < 0 or c.max() > max_count:
            raise ValueError(f"{name} counts must lie in 0..{max_count}")
    confusion = np.zeros([max_count + 1, max_count + 1], np.int64)
    np.add.at(confusion, (reference, inferred), 1)
    diff = inferred - reference
    return {"acc": float(np.mean(diff == 0)), "mae": float(np.mean(np.abs(diff))),
            "bias": float(np.mean(diff)), "confusion": confusion.tolist()}


def box_agreement(boxes_px, box_mask, inferred_xyxy, inferred_count, reference_count) -> dict:
    """The project's mIoU over all canvases and over those whose count is right.

    Args:
      boxes_px: [N, M, 4] reference (x, y, w, h) px; box_mask: [N, M].
      inferred_xyxy: [N, T, 4] inferred boxes (x1, y1, x2, y2) px; inferred_count: [N].
      reference_count: [N].
    Returns: {'miou', 'miou_count_right' (NaN if no count is right)}.
    """
    per_image = metrics.per_image_miou(boxes_px, box_mask, inferred_xyxy, inferred_count)
    right = np.asarray(inferred_count) == np.asarray(reference_count)
    return {"miou": float(per_image.mean()),
            "miou_count_right": float(per_image[right].mean()) if right.any() else float("nan")}


def side_percentiles(sides_px) -> list:
    """PERCENTILES of box sides [K] px ([] if none)."""
    sides_px = np.asarray(sides_px, np.float64).reshape(-1)
    return np.percentile(sides_px, PERCENTILES).tolist() if sides_px.size else []


def compare_pass(test, out, canvas_px, max_count) -> dict:
    """The comparison of one test pass: ``test`` the evaluator's scenes (image, count,
    boxes_px, box_mask), ``out`` its outputs (count, scale, shift, present)."""
    reference = test["count"]
    inferred_xyxy = metrics.boxes_from_where(out["scale"], out["shift"], canvas_px)
    _, sides = metrics.where_px(out["scale"], out["shift"], canvas_px)  # [N, T]
    return {**count_agreement(out["count"], reference, max_count),
            **box_agreement(test["boxes_px"], test["box_mask"], inferred_xyxy, out["count"],
                            reference),
            "side_px_percentiles": side_percentiles(sides[out["present"] > 0.5])}


def compare_run(workdir, checkpoint=None):
    """Both passes of a trained run against its data set's boxes: (result dict, the test
    scenes, the deterministic pass's outputs, the run)."""
    run = trained.load_trained(workdir, checkpoint)
    if not run.spec.has_boxes:
        raise ValueError(f"{workdir}: its data set has no boxes to compare with "
                         f"({evaluation.no_box_metrics(run.spec)})")
    evaluator = run.evaluator()
    test = {k: v.numpy() for k, v in evaluator.test.items()}
    max_count = run.model.max_glimpses
    result, outputs = {"workdir": os.path.abspath(workdir), "step": run.step}, {}
    for name, deterministic in PASSES:
        _, out = evaluator(run.step, deterministic=deterministic)
        result[name] = compare_pass(test, out, run.spec.canvas_px, max_count)
        outputs[name] = out
    return result, test, outputs["deterministic"], run


def reference_summary(test) -> dict:
    """The reference's own counts and sides on the test canvases."""
    sides = np.maximum(test["boxes_px"][..., 2], test["boxes_px"][..., 3])[test["box_mask"]]
    return {"num_test": int(len(test["count"])),
            "count_hist": np.bincount(test["count"]).tolist(),
            "side_px_percentiles": side_percentiles(sides)}


def figure_indices(num_test, num) -> np.ndarray:
    """``num`` test canvases spread evenly over the split (its neighbours overlap)."""
    return np.unique(np.linspace(0, num_test - 1, min(num, num_test)).round().astype(np.int64))


def compare(runs, out_dir, num_figure=32, checkpoints=None) -> dict:
    """Compares trained runs ({name: workdir}, on the same data set) with the reference boxes;
    writes ``out_dir``/comparison.json, reference.png, <name>_reconstructions.png,
    <name>_samples.png. Returns comparison.json's content."""
    os.makedirs(out_dir, exist_ok=True)
    checkpoints = checkpoints or {}
    comparison, test = {"runs": {}}, None
    for name, workdir in runs.items():
        result, run_test, out, run = compare_run(workdir, checkpoints.get(name))
        if test is not None and not np.array_equal(test["count"], run_test["count"]):
            raise ValueError(f"{workdir}: another test split than the first run's")
        test = run_test
        comparison["runs"][name] = result
        pick = figure_indices(len(test["count"]), num_figure)
        where = {k: out[k][pick] for k in ("scale", "shift", "count")}
        grid = evaluation.boxed_panels(test["image"][pick], out["recon"][pick], where,
                                       run.spec.canvas_px, n=len(pick))
        viz.save_png(grid, os.path.join(out_dir, f"{name}_reconstructions.png"))
        samples = evaluation.generate_scenes(run.model, 64, tf.random.Generator.from_seed(run.seed))
        viz.save_png(viz.image_grid(np.clip(samples["images"], 0.0, 1.0)),
                     os.path.join(out_dir, f"{name}_samples.png"))
        comparison["data"] = run.spec.data
    pick = figure_indices(len(test["count"]), num_figure)
    reference_boxes = metrics.gt_boxes_xyxy(test["boxes_px"][pick])
    grid = viz.reconstruction_panels(test["image"][pick], test["image"][pick], reference_boxes,
                                     test["count"][pick])
    viz.save_png(grid, os.path.join(out_dir, "reference.png"))
    comparison["reference"] = reference_summary(test)
    with open(os.path.join(out_dir, "comparison.json"), "w") as f:
        json.dump(comparison, f, indent=1)
    return comparison


def markdown_table(comparison) -> str:
    """The comparison as a markdown table: a row per run and pass."""
    rows = ["| run | pass | ACC | count MAE | count bias | mIoU | mIoU, count right | "
            "box side p5-p50-p95 px |", "|---|---|---|---|---|---|---|---|"]
    for name, result in comparison["runs"].items():
        for pass_name, _ in PASSES:
            r = result[pass_name]
            sides = r["side_px_percentiles"]
            side = "-".join(f"{sides[i]:.1f}" for i in (0, 2, 4)) if sides else "-"
            rows.append(f"| {name} (step {result['step']:,}) | {pass_name} | {r['acc']:.3f} | "
                        f"{r['mae']:.3f} | {r['bias']:+.3f} | {r['miou']:.3f} | "
                        f"{r['miou_count_right']:.3f} | {side} |")
    ref = comparison["reference"]["side_px_percentiles"]
    rows.append(f"| extractor (SEP) | reference | 1 | 0 | 0 | 1 | 1 | "
                f"{ref[0]:.1f}-{ref[2]:.1f}-{ref[4]:.1f} |")
    return "\n".join(rows)
