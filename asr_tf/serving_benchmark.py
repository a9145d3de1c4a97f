"""Serving latency of an exported SavedModel (issue 6): p50/p99 and images/s per batch size.

In-process: ``tf.saved_model.load`` and calls of one signature (default ``serving_default``)
on random images in [0, 1]; the model's own code (asr_tf, TFP) is not used. This is the
compute part of a request; a model server adds (de)serialisation and the network on top.

  from asr_tf import serving_benchmark
  serving_benchmark.run("models/air_asr_14/1")
"""
import os
import time

import numpy as np
import tensorflow as tf


def _percentile_ms(seconds, q):
    return float(np.percentile(np.asarray(seconds) * 1e3, q))


def run(export_path, batch_sizes=(1, 64), iterations=None, warmup=3, signature="serving_default",
        seed=0, images=None):
    """Times ``signature`` of the SavedModel at ``export_path`` (a version folder).

    Args:
      export_path: ``<export_dir>/<version>``.
      batch_sizes: batch sizes N to time.
      iterations: timed calls per batch size; default 100 for N <= 8, else 30.
      warmup: untimed calls first (the first call also builds the runtime function).
      signature: the signature to call; it must take ``images`` (and optionally ``seed``).
      seed: of the random images (and the ``seed`` input of a stochastic signature).
      images: optional [M, S, S, 1] float32 in [0, 1] (e.g. test scenes), tiled to each batch
        size instead of uniform noise. The glimpse loop stops when every image of the batch
        has stopped, so latency depends on the images (reported as ``max_count``).
    Returns:
      dict: ``export_path``, ``signature``, ``canvas_px``, ``cpu_count``, ``tf_version``,
      ``load_s`` and per batch size ``batch_<N>``: ``p50_ms``, ``p99_ms``, ``mean_ms``,
      ``images_per_s`` (N / mean latency), ``iterations`` and ``max_count`` (the largest
      inferred count in the batch: the loop ran min(max_count + 1, T) steps).
    """
    start = time.perf_counter()
    loaded = tf.saved_model.load(export_path)
    load_s = time.perf_counter() - start
    fn = loaded.signatures[signature]
    specs = fn.structured_input_signature[1]
    canvas = int(specs["images"].shape[1])
    rng = np.random.RandomState(seed)
    result = {"export_path": os.path.abspath(export_path), "signature": signature,
              "canvas_px": canvas, "cpu_count": os.cpu_count(), "tf_version": tf.__version__,
              "load_s": round(load_s, 3)}
    for n in batch_sizes:
        if images is None:
            batch = rng.rand(n, canvas, canvas, 1).astype(np.float32)
        else:
            batch = np.resize(np.asarray(images, np.float32), (n, canvas, canvas, 1))
        args = {"images": tf.constant(batch)}
        if "seed" in specs:
            args["seed"] = tf.constant(seed, tf.int64)
        iters = iterations or (100 if n <= 8 else 30)
        for _ in range(max(1, warmup)):
            out = _block(fn(**args))
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            _block(fn(**args))
            times.append(time.perf_counter() - t0)
        mean = float(np.mean(times))
        result[f"batch_{n}"] = {"p50_ms": round(_percentile_ms(times, 50), 2),
                                "p99_ms": round(_percentile_ms(times, 99), 2),
                                "mean_ms": round(mean * 1e3, 2),
                                "images_per_s": round(n / mean, 1), "iterations": iters,
                                "max_count": int(np.max(out["count"])) if "count" in out else None}
    return result


def _block(outputs):
    """Forces the results to host memory (the call is asynchronous on some devices)."""
    return {k: v.numpy() for k, v in outputs.items()}
