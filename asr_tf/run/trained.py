"""A trained run, rebuilt from its workdir: its model at a checkpoint, its evaluation, figures.

By default on the run's own test scenes with its own evaluation noise (``num_test`` and
``seed`` from its record): the evaluation the run logged at that step, if it logged one.
tools/evaluate.py, tools/generate.py and tools/export.py need nothing but ``--workdir``.
"""
import numpy as np
import tensorflow as tf

from asr_tf import viz
from asr_tf.run import config, evaluation, workdir as workdir_lib


def load_trained(workdir, checkpoint=None):
    """Rebuilds a run's model from its record and restores its latest (or the given)
    checkpoint. Returns (model, spec, step). Raises CheckpointError / FileNotFoundError
    clearly. The run's bindings stay parsed in gin (``config.recorded`` reads them)."""
    config.parse_record(workdir)
    spec = workdir_lib.run_spec()
    model, _, _ = workdir_lib.build_components(spec)
    step = workdir_lib.restore_model(workdir, model, checkpoint)
    return model, spec, step


def evaluate_workdir(workdir, checkpoint=None, num_test=None, seed=None, deterministic=False):
    """The four metrics (and diagnostics) of a trained run at a checkpoint, as a dict with
    ``step``, the checkpoint's. ``deterministic``: means and z_pres thresholded at 0.5
    (Q25-Q27) instead of the run's configured pass."""
    model, spec, step = load_trained(workdir, checkpoint)
    num_test = config.recorded("num_test") if num_test is None else num_test
    seed = config.recorded("seed") if seed is None else seed
    evaluator = evaluation.Evaluator(model, spec, num_test, seed)
    result, _ = evaluator(step, deterministic=deterministic or None)
    return dict(step=step, **result)


def end_evaluations(workdir, checkpoint=None):
    """Both passes of a checkpoint (``evaluation.both_passes``) on the run's own test scenes and
    noise, written into its summary.json as ``at_end`` (as the loop writes them at the end of
    an invocation); returns them."""
    model, spec, step = load_trained(workdir, checkpoint)
    evaluator = evaluation.Evaluator(model, spec, config.recorded("num_test"),
                                     config.recorded("seed"))
    both = evaluation.both_passes(evaluator, step)
    summary = workdir_lib.read_summary(workdir)
    summary["at_end"] = both
    workdir_lib.write_summary(workdir, summary)
    return both


def write_figure(workdir, out_path, reconstruct=False, num=64, seed=None, checkpoint=None):
    """Writes a PNG grid of prior samples, or of test reconstructions with inferred boxes
    (the first ``num`` test scenes; ``seed`` default: the run's)."""
    model, spec, step = load_trained(workdir, checkpoint)
    seed = config.recorded("seed") if seed is None else seed
    if reconstruct:
        evaluator = evaluation.Evaluator(model, spec, num_test=num, seed=seed)
        _, out = evaluator(step)
        grid = evaluation.boxed_panels(evaluator.test["image"].numpy()[..., 0], out["recon"],
                                       out, spec.canvas_px, n=num)
    else:
        samples = evaluation.generate_scenes(model, num, tf.random.Generator.from_seed(seed),
                                             spec)
        grid = viz.image_grid(np.clip(samples["images"], 0.0, 1.0))
    return viz.save_png(grid, out_path)
