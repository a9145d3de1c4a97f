"""Evaluation of a run on its data set's fixed test scenes (docs/ORIGINAL.md §8): ACC, SE, nELBO,
mIoU, box statistics, the count histogram; reconstruction and generation grids. A data set from
files without boxes has no ACC, mIoU or histogram per true count (``no_box_metrics``).

The test scenes are the data set's (``spec.data_seed``), the same for every seed of a run; the
evaluation noise at step k comes from the run's seed and k, so evaluating a checkpoint again
(asr_tf/run/trained.py) reproduces the evaluation the run logged at that step.
"""
import numpy as np
import tensorflow as tf

from asr_tf import counts
from asr_tf import metrics as metrics_lib
from asr_tf import training
from asr_tf import viz
from asr_tf.data import pipeline


class Evaluator:
    """Runs the test pass over the fixed test scenes and computes ACC, SE, nELBO, mIoU
    (docs/ORIGINAL.md §8).

    Args:
      spec: the run's data set (its data seed fixes the test scenes).
      num_test: the first ``num_test`` test scenes, 1 to the split's size (default: all of the
        split, 1,000; Q7).
      seed: the run's seed (the evaluation noise).

    Raises:
      ValueError: ``num_test`` outside 1..``spec.num_test`` (the split is the data set's; asking
        for more scenes than it holds would evaluate fewer than asked).
    """

    def __init__(self, model, spec, num_test=None, seed=0, batch_size=1000):
        self.model = model
        self.spec = spec
        self.seed = seed
        num_test = spec.num_test if num_test is None else num_test
        if not 1 <= num_test <= spec.num_test:
            raise ValueError(f"num_test {num_test}: the test split of {spec.name} holds "
                             f"{spec.num_test} scenes; ask for 1 to {spec.num_test}")
        ds = pipeline.make_dataset(spec, split="test", batch_size=num_test, repeat=False,
                                   drop_remainder=False)
        self.test = next(iter(ds))  # the split's first num_test scenes, one batch
        self.num_test = num_test
        self.batch_size = min(batch_size, self.num_test)

    def __call__(self, step, deterministic=None):
        """Returns (metrics dict of floats, arrays dict for images) at training step ``step``.

        ``deterministic``: None, the model's configured pass (``Quirks.deterministic_eval``,
        Q25-Q27); True, means and z_pres thresholded at 0.5; False, one stochastic pass."""
        if deterministic is None:
            deterministic = self.model.quirks.deterministic_eval
        gen = tf.random.Generator.from_seed(self.seed * 1_000_003 + int(step) + 7)
        outs, terms = [], []
        for lo in range(0, self.num_test, self.batch_size):
            images = self.test["image"][lo:lo + self.batch_size]
            noise = self.model.sample_noise(int(images.shape[0]), gen)
            o, t = training.eval_step(self.model, images, noise, tf.constant(step, tf.int64),
                                      bool(deterministic))
            outs.append({k: v.numpy() for k, v in o.items() if k not in ("step_mask", "steps_executed")})
            terms.append({k: v.numpy() for k, v in t.items()})
        out = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
        term = {k: np.concatenate([t[k] for t in terms]) for k in terms[0]}
        images = self.test["image"].numpy()
        boxes = self.spec.has_boxes  # else ACC, mIoU and SE per true count are left out
        true_count = self.test["count"].numpy() if boxes else None
        result = metrics_lib.evaluate_outputs(
            images, out["recon"], term["nelbo"], out["count"], out["scale"], out["shift"],
            self.test["boxes_px"].numpy() if boxes else None,
            self.test["box_mask"].numpy() if boxes else None, true_count,
            canvas_px=self.spec.canvas_px, tight_gt=self.model.quirks.tight_gt)
        for k in ("nll", "kl_pres", "kl_scale", "kl_shift", "kl_what"):
            result[k] = float(term[k].mean())
        result.update(box_diagnostics(out, self.spec.canvas_px))
        if boxes:
            result.update(se_by_count(images, out["recon"], true_count))
        # count histogram per true count (without boxes: of all scenes) and presence per
        # glimpse step (count_frac_*, pres_*)
        result.update(counts.count_report(out["count"], out["z_pres_prob"],
                                          true_count)["scalars"])
        return result, out


def no_box_metrics(spec):
    """What summary.json and the tools say instead of box metrics for a data set without
    boxes."""
    return (f"not available: {spec.data} has no boxes (no annotations.json, no objects/bbox), "
            "so ACC, mIoU and the count histogram per true count cannot be computed")


def both_passes(evaluator, step):
    """The paper's evaluation (one stochastic pass, Q25-Q27) and the deterministic one (means,
    z_pres thresholded at 0.5) at ``step``: {'step', 'stochastic': metrics, 'deterministic':
    metrics}, JSON-ready (summary.json's ``at_end``)."""
    return {"step": int(step), **{
        name: metrics_lib.jsonable(evaluator(step, deterministic=deterministic)[0])
        for name, deterministic in (("stochastic", False), ("deterministic", True))}}


def box_diagnostics(out, canvas_px):
    """Where the present boxes are: mean side, mean |shift|, fraction fully inside the canvas,
    and ``box_side_ratio``, the mean over images with >= 2 present boxes of their largest
    side over their smallest (about 1 when every box fits one digit; about 2 when one box
    spans two digits and another is left with a scrap)."""
    present = out["present"] > 0.5  # [N, T]
    if not present.any():
        return {"box_side_px": 0.0, "box_abs_shift": 0.0, "box_inside_frac": 0.0,
                "box_side_ratio": 0.0}
    centre_all, side_all = metrics_lib.where_px(out["scale"], out["shift"], canvas_px)
    side, centre = side_all[present], centre_all[present]  # [P], [P, 2]
    shift = out["shift"][present]  # [P, 2]
    inside = np.all((centre - side[:, None] / 2 >= -0.5) & (centre + side[:, None] / 2 <= canvas_px + 0.5), -1)
    several = present.sum(1) >= 2  # [N]
    ratio = 0.0
    if several.any():
        big = np.where(present, side_all, -np.inf).max(1)  # [N]
        small = np.where(present, side_all, np.inf).min(1)  # [N]
        ratio = float((big[several] / small[several]).mean())
    return {"box_side_px": float(side.mean()), "box_abs_shift": float(np.abs(shift).mean()),
            "box_inside_frac": float(inside.mean()), "box_side_ratio": ratio}


def se_by_count(images, recon, true_count):
    """SE (docs/ORIGINAL.md §8) over the test images of each true object count:
    {'se_<c>obj': float}."""
    true_count = np.asarray(true_count).reshape(-1)
    return {f"se_{c}obj": metrics_lib.squared_error(images[true_count == c], recon[true_count == c])
            for c in np.unique(true_count)}


def boxed_panels(images, recon, where, canvas_px, n=64):
    """[image with inferred boxes | reconstruction with boxes] for the first ``n`` scenes.

    Args: images, recon [N, S, S, C] (C 1: grayscale, 3: colour); where: dict with ``scale``
    [N, T], ``shift`` [N, T, 2], ``count`` [N].
    """
    boxes = metrics_lib.boxes_from_where(where["scale"][:n], where["shift"][:n], canvas_px)
    return viz.reconstruction_panels(images[:n], recon[:n], boxes, where["count"][:n])


def eval_images(model, spec, out, test, step, generator_seed):
    """Reconstruction panels of the first 64 test scenes and a grid of 64 prior samples."""
    recon = boxed_panels(test["image"].numpy(), out["recon"], out, spec.canvas_px)
    gen = tf.random.Generator.from_seed(generator_seed + step)
    samples = generate_scenes(model, 64, gen)
    images = np.clip(samples["images"], 0, 1)
    return {"reconstructions": recon,
            "samples": boxed_panels(images, images, samples, spec.canvas_px)}


def generate_scenes(model, num, generator):
    """``num`` scenes from the model's prior (its ``generate``), as numpy."""
    out = model.generate(model.generation_noise(num, generator))
    return {k: v.numpy() for k, v in out.items()}
