"""The original code's own training, run and logged as JSON lines, beside the port's runs.

The original implementation (taufikxu/MOG-ASR @ 72407c3) is not part of this project: it has no
licence. Where a prepared copy of it exists (its files extracted outside this repository and
edited to run under TensorFlow 2's ``tf.compat.v1``, docs/ORIGINAL.md §12), this module
runs its training script as it is and records what its own test pass computes::

  python tools/train_original.py --original DIR --out docs/results/original/orig_lr1e-4_s0.jsonl \
      --lr 1e-4 --seed 0 --max_steps 3000 [--model asr13|pprior13|air13]

The script runs in a child process of its own (``tf.compat.v1`` turns TF 2 behaviour off
process-wide): the parent (:func:`launch`) only builds the command line. In the child
(:func:`child_main`) two things are instrumented, without changing what the original computes:

* its optimizer counts the NaN and Inf entries of the raw gradients before its own guard zeroes
  them (one more fetched tensor per step);
* ``Session.run`` is watched: each training step's logged terms are kept (full precision, not
  the 4 decimals of its console), and each test pass (every 200 steps, 1,000 test scenes) is
  written as one JSON line: ``step``, ``test`` (the batch means of every term it logs: ``elbo``
  its negative ELBO, ``accu`` its count accuracy, ``mse`` its squared error, the KLs, the
  penalties), ``iou`` (its Hungarian box IoU), ``count_hist``, ``train20`` / ``train200`` (the
  training terms averaged over the last 20 / 200 steps, with ``nan_grad_entries``,
  ``nan_grad_steps`` and the same for Inf), ``wall_s`` and ``step_time_median_s``.

The port's own runs log the same quantities under the names of asr_tf/run/evaluation.py; the
comparison (asr_tf/lab/original_curves.py) maps one onto the other.
"""
import json
import os
import statistics
import subprocess
import sys
import time

# The original's scripts and their arguments per model (its README's command lines).
MODELS = {
    "asr13": ("train_air_pr.py", ["-dn", "13", "-ds", "20k", "-gm", "100.", "-gne", "10.",
                                  "-data", "mnist"]),
    "pprior13": ("train_air_pr.py", ["-dn", "13", "-ds", "20k", "-data", "mnist"]),
    "air13": ("training_air_original.py", ["-dn", "13", "-ds", "20k", "-data", "mnist"]),
}


def check_prepared(original_dir):
    """Raises FileNotFoundError unless ``original_dir`` is a prepared copy with its data."""
    root = os.path.abspath(original_dir)
    for name in ("train_air_pr.py", "training_air_original.py", "tf1_contrib_layers.py"):
        if not os.path.isfile(os.path.join(root, name)):
            raise FileNotFoundError(
                f"{root}: no {name}; give a prepared copy of the original (its files extracted "
                f"and edited to run under tf.compat.v1, with its stand-in tf1_contrib_layers.py; "
                f"docs/ORIGINAL.md §12)")
    data = os.path.join(root, "data", "multi_mnist_data", "common20k13.tfrecords")
    if not os.path.isfile(data):
        raise FileNotFoundError(f"{data} missing: write the original's data set first "
                                f"(its multi_mnist.py --images-per-digit 20000 --name_surfix 20k)")
    return root


def launch(original_dir, out, lr, seed, max_steps, threads=1, model="asr13", results_dir=None):
    """Runs the original's training in a child process; returns its exit code.

    Args:
      original_dir: the prepared copy. out: the JSON-lines file (overwritten).
      lr: its Adam rate (the code: 1e-4). seed: its TensorFlow graph seed (the code: 1235).
      max_steps: training steps. threads: its session's intra- and inter-op threads.
      model: a key of MODELS. results_dir: its results folder (default: beside ``out``).
    """
    root = check_prepared(original_dir)
    if model not in MODELS:
        raise ValueError(f"model {model!r}: use one of {sorted(MODELS)}")
    out = os.path.abspath(out)
    results_dir = os.path.abspath(results_dir or os.path.splitext(out)[0] + "_results")
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", ORIG_LR=repr(float(lr)),
               ORIG_SEED=str(int(seed)), ORIG_THREADS=str(int(threads)),
               ORIG_MAX_STEPS=str(int(max_steps)), PYTHONHASHSEED="0")
    cmd = [sys.executable, "-m", "asr_tf.lab.original_run", root, out, results_dir, model]
    return subprocess.call(cmd, env=env, cwd=root)


class _Recorder:
    """Collects the original's per-step training values and writes a line per test pass."""

    def __init__(self, out, models):
        self.out = open(out, "w")
        self.models = models  # [train, test], filled as the script builds them
        self.train_rows = []
        self.step_seconds = []
        self.start = time.time()
        self.last_step = 0

    def train_step(self, names, values, step, seconds):
        self.last_step = int(step)
        self.step_seconds.append(seconds)
        self.train_rows.append({n: float(_mean(v)) for n, v in zip(names, values)})

    def test_pass(self, names, values, counts, targets):
        """Keeps a test pass's values; :meth:`box_scores` writes them with its box IoU."""
        self.pending = (names, values, counts, targets)

    def box_scores(self, scores):
        """The original's box evaluation of the pending test pass: (precision [11], recall [11],
        gt IoU, detection IoU, global IoU); writes the pass's line."""
        import numpy as np

        names, values, counts, targets = self.pending
        test = {n: float(_mean(v)) for n, v in zip(names, values)}
        test.update(gt_iou=float(scores[2]), detection_iou=float(scores[3]),
                    iou=float(scores[4]))
        counts = np.asarray(counts)
        hist = np.bincount(counts, minlength=7).tolist()
        line = {"step": self.last_step, "wall_s": round(time.time() - self.start, 2),
                "step_time_median_s": (statistics.median(self.step_seconds[-200:])
                                       if self.step_seconds else None),
                "test": test, "count_hist": hist,
                "count_hist_by_true": {str(int(c)): np.bincount(counts[targets == c],
                                                                 minlength=7).tolist()
                                       for c in sorted(set(targets.tolist()))},
                "train20": _window_means(self.train_rows[-20:]),
                "train200": _window_means(self.train_rows[-200:])}
        self.out.write(json.dumps(line) + "\n")
        self.out.flush()


def _mean(v):
    import numpy as np

    return np.mean(np.asarray(v, dtype=np.float64))


def _window_means(rows):
    if not rows:
        return {}
    out = {k: statistics.fmean(r[k] for r in rows) for k in rows[0]}
    for kind in ("nan", "inf"):
        key = f"{kind}_grad_entries"
        if key in rows[0]:
            out[f"{kind}_grad_steps"] = sum(1 for r in rows if r[key] > 0)
            out[key] = sum(r[key] for r in rows)
    return out


def child_main(root, out, results_dir, model):
    """In the child process: instruments the original and runs its training script."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    sys.path.insert(0, root)
    os.chdir(root)
    import numpy as np
    import tensorflow.compat.v1 as tf

    script, args = MODELS[model]
    module_name = ("air.air_number_bbox_location" if script == "train_air_pr.py"
                   else "air.air_model")
    module = __import__(module_name, fromlist=["AIRModel"])
    base_model = module.AIRModel
    models = []
    recorder = _Recorder(out, models)
    base_adam = tf.train.AdamOptimizer

    class CountingAdam(base_adam):
        """The original's Adam; counts non-finite raw gradient entries (fetched, not used)."""

        def compute_gradients(self, loss, *a, **k):
            pairs = super().compute_gradients(loss, *a, **k)
            grads = [g for g, _ in pairs if g is not None]
            self.nan_entries = tf.add_n([tf.reduce_sum(tf.cast(tf.is_nan(g), tf.float32))
                                         for g in grads])
            self.inf_entries = tf.add_n([tf.reduce_sum(tf.cast(tf.is_inf(g), tf.float32))
                                         for g in grads])
            CountingAdam.last = self
            return pairs

    class Instrumented(base_model):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            # The AIR script's model keeps no list of logged terms and its script fetches only
            # loss, accuracy and mse: the terms below are fetched beside them (same run).
            self.fetched_beside = not hasattr(self, "log_variables_name")
            if self.fetched_beside:
                self.log_variables_name = ["elbo", "accu", "mse", "recon",
                                           "z_pres_prior_log_odds"]
                self.log_variables_tens = [self.loss, self.accuracy, self.mse_loss,
                                           tf.reduce_mean(self.reconstruction_loss),
                                           tf.convert_to_tensor(self.z_pres_prior_log_odds)]
            if k.get("train"):
                opt = CountingAdam.last
                self.log_variables_name += ["nan_grad_entries", "inf_grad_entries",
                                            "count_mean"]
                self.log_variables_tens += [opt.nan_entries, opt.inf_entries,
                                            tf.reduce_mean(tf.cast(self.rec_num_digits,
                                                                   tf.float32))]
            models.append(self)

    tf.train.AdamOptimizer = CountingAdam
    module.AIRModel = Instrumented
    base_run = tf.Session.run

    def watched_run(sess, fetches, feed_dict=None, **kwargs):
        if not (len(models) == 2 and isinstance(fetches, list) and fetches):
            return base_run(sess, fetches, feed_dict=feed_dict, **kwargs)
        if models[0].fetched_beside:
            return air_script_run(sess, fetches, feed_dict, **kwargs)
        start = time.perf_counter()
        result = base_run(sess, fetches, feed_dict=feed_dict, **kwargs)
        seconds = time.perf_counter() - start
        train, test = models
        if fetches[0] is train.training:
            recorder.train_step(train.log_variables_name, result[2:], result[1], seconds)
        elif (feed_dict and len(fetches) == len(test.log_variables_tens) + 3
              and fetches[0] is test.log_variables_tens[0]):
            targets = np.asarray(list(feed_dict.values())[1])
            recorder.test_pass(test.log_variables_name, result[:-3], result[-1], targets)
        return result

    test_terms = []

    def air_script_run(sess, fetches, feed_dict, **kwargs):
        """training_air_original.py: a training step fetches [training, loss, accuracy, mse,
        global_step, ...]; a test pass [loss, accuracy, mse], then [scales, shifts, counts]
        (its box evaluation's, a second draw). The logged terms ride on the first two."""
        train, test = models
        extra = []  # the logged terms fetched in this run
        if fetches[0] is train.training:
            extra = train.log_variables_tens
        elif feed_dict and fetches[0] is test.loss and len(fetches) == 3:
            extra = test.log_variables_tens
        start = time.perf_counter()
        result = base_run(sess, fetches + extra, feed_dict=feed_dict, **kwargs)
        seconds = time.perf_counter() - start
        values, result = result[len(fetches):], result[:len(fetches)]
        if fetches[0] is train.training:
            recorder.train_step(train.log_variables_name, values, result[4], seconds)
        elif extra:
            test_terms[:] = values  # held until the pass's counts arrive
        elif feed_dict and len(fetches) == 3 and fetches[2] is test.rec_num_digits:
            targets = np.asarray(list(feed_dict.values())[1])
            recorder.test_pass(test.log_variables_name, list(test_terms), result[2], targets)
        return result

    tf.Session.run = watched_run
    from air import evaluation_detection

    base_evaluation = evaluation_detection.evaluation

    def watched_evaluation(*a, **k):
        scores = base_evaluation(*a, **k)
        recorder.box_scores(scores)
        return scores

    evaluation_detection.evaluation = watched_evaluation
    sys.argv = [script] + args + ["-r", results_dir]
    import runpy

    runpy.run_path(os.path.join(root, script), run_name="__main__")


if __name__ == "__main__":
    child_main(*sys.argv[1:5])
