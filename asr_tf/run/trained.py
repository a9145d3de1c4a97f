"""A trained run, rebuilt from its workdir: its model at a checkpoint, its evaluation, figures.

By default on the run's own test scenes with its own evaluation noise (``num_test`` and
``seed`` from its record): the evaluation the run logged at that step, if it logged one.
tools/evaluate.py, tools/generate.py and tools/export.py need nothing but ``--workdir``.
"""
import dataclasses

import gin
import numpy as np
import tensorflow as tf

from asr_tf import models
from asr_tf import viz
from asr_tf.run import config, evaluation, workdir as workdir_lib


@dataclasses.dataclass(frozen=True)
class Trained:
    """A run rebuilt from its workdir: the model at ``step``, its data set, and what its
    evaluations used: ``seed`` (the run's, from its invocation record) and ``num_test`` (its
    ``train_eval.num_test``; None: the whole test split)."""
    model: object
    spec: object  # a scenes.DatasetSpec, or a files.FileDataSpec (run_spec.data)
    step: int
    seed: int
    num_test: object

    def evaluator(self, num_test=None, seed=None):
        """The run's Evaluator: its test scenes and noise unless ``num_test`` / ``seed`` say
        otherwise."""
        return evaluation.Evaluator(self.model, self.spec,
                                    self.num_test if num_test is None else num_test,
                                    self.seed if seed is None else seed)


def load_trained(workdir, checkpoint=None):
    """Rebuilds a run from its record and restores its latest (or the given) checkpoint into
    its model; a :class:`Trained`. The record's bindings are read here, once, and cleared from
    gin afterwards. Raises CheckpointError / FileNotFoundError / files.DataError (the run's data
    from files is gone or changed) clearly."""
    config.parse_record(workdir)
    try:
        spec = workdir_lib.run_spec()
        model = models.model_for(spec)
        num_test = gin.get_bindings("train_eval").get("num_test")
    finally:
        gin.clear_config()
    first = next(iter(workdir_lib.invocations(workdir)), None)
    if first is None:
        raise FileNotFoundError(f"{workdir_lib.INVOCATIONS_FILE} is missing or empty in "
                                f"{workdir!r}: the run's seed is unknown")
    step = workdir_lib.restore_model(workdir, model, checkpoint)
    return Trained(model, spec, step, int(first["seed"]), num_test)


def evaluate_workdir(workdir, checkpoint=None, num_test=None, seed=None, deterministic=False):
    """The four metrics (and diagnostics) of a trained run at a checkpoint, as a dict with
    ``step``, the checkpoint's. ``deterministic``: means and z_pres thresholded at 0.5
    (Q25-Q27) instead of the run's configured pass."""
    run = load_trained(workdir, checkpoint)
    result, _ = run.evaluator(num_test, seed)(run.step, deterministic=deterministic or None)
    if not run.spec.has_boxes:
        result["box_metrics"] = evaluation.no_box_metrics(run.spec)
    return dict(step=run.step, **result)


def end_evaluations(workdir, checkpoint=None):
    """Both passes of a checkpoint (``evaluation.both_passes``) on the run's own test scenes and
    noise, written into its summary.json as ``at_end`` (as the loop writes them at the end of
    an invocation); returns them."""
    run = load_trained(workdir, checkpoint)
    both = evaluation.both_passes(run.evaluator(), run.step)
    summary = workdir_lib.read_summary(workdir)
    summary["at_end"] = both
    workdir_lib.write_summary(workdir, summary)
    return both


def write_figure(workdir, out_path, reconstruct=False, num=64, seed=None, checkpoint=None):
    """Writes a PNG grid of prior samples, or of test reconstructions with inferred boxes
    (the first ``num`` test scenes, or all if fewer; ``seed`` default: the run's)."""
    run = load_trained(workdir, checkpoint)
    seed = run.seed if seed is None else seed
    if reconstruct:  # at most the test split (a data set from files may hold fewer than num)
        evaluator = run.evaluator(num_test=min(num, run.spec.num_test), seed=seed)
        _, out = evaluator(run.step)
        grid = evaluation.boxed_panels(evaluator.test["image"].numpy(), out["recon"],
                                       out, run.spec.canvas_px, n=num)
    else:
        samples = evaluation.generate_scenes(run.model, num, tf.random.Generator.from_seed(seed))
        grid = viz.image_grid(np.clip(samples["images"], 0.0, 1.0))
    return viz.save_png(grid, out_path)
