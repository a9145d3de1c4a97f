"""Benchmarks behind tools/benchmark.py: one function per mode in BENCHMARKS.

Each mode function takes keyword options (ignoring the ones it does not use, so the tool can
pass all of its flags) and returns a JSON-serialisable dict of results. Add a mode by writing a
function and registering it in BENCHMARKS (e.g. 'train', 'serving').
"""
from __future__ import annotations

import time

from asr_tf.lab import serving_benchmark


def data_benchmark(
    dataset: str = "mnist_13",
    batch_size: int = 64,
    warmup_batches: int = 20,
    batches: int = 200,
    seed: int = 0,
    fresh_scenes: bool = False,
    data: str | None = None,
    **unused,
) -> dict:
    """Scenes per second of the training tf.data pipeline, measured after warm-up batches.

    With ``data`` (a folder or 'tfds:NAME'), of that data set on ``dataset``'s canvas: the
    seconds to scan it (headers, boxes) and to decode it once (``load``), and the rate
    streamed from the files (decoded batch by batch) and from memory.
    """
    from asr_tf.data import files, pipeline, scenes

    def rate(spec, **kwargs):
        iterator = iter(pipeline.make_dataset(spec, "train", batch_size=batch_size, seed=seed,
                                              **kwargs))
        start = time.perf_counter()
        for _ in range(warmup_batches):
            next(iterator)
        warmup_s = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(batches):
            next(iterator)
        elapsed_s = time.perf_counter() - start
        return round(batches * batch_size / elapsed_s, 1), round(elapsed_s, 3), round(warmup_s, 3)

    result = dict(what="data", dataset=dataset, batch_size=batch_size, batches=batches)
    if data is None:
        scenes_per_s, seconds, warmup_s = rate(dataset, fresh_scenes=fresh_scenes)
        return dict(result, fresh_scenes=fresh_scenes, seconds=seconds,
                    warmup_seconds=warmup_s, scenes_per_s=scenes_per_s)
    builtin = scenes.get_spec(dataset)
    start = time.perf_counter()
    spec = files.load_data(data, builtin.canvas_px, builtin.counts, builtin.size_range_px)
    result.update(data=spec.data, canvas_px=spec.canvas_px, images=spec.num_train + spec.num_test,
                  scan_seconds=round(time.perf_counter() - start, 2))
    result["streamed_scenes_per_s"], _, _ = rate(spec)
    start = time.perf_counter()
    in_memory = spec.load()
    result.update(load_seconds=round(time.perf_counter() - start, 2), in_memory=in_memory,
                  in_memory_scenes_per_s=rate(spec)[0] if in_memory else None)
    return result


def matmul_gflops(m=64, k=1024, n=1024, seconds=2.0):
    """GFLOP/s of a plain float32 matmul [m, k] x [k, n] on this machine (the step's scale)."""
    import tensorflow as tf

    a, b = tf.random.normal([m, k]), tf.random.normal([k, n])
    f = tf.function(lambda a, b: tf.matmul(a, b))
    f(a, b).numpy()
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(20):
            c = f(a, b)
        c.numpy()
        reps += 20
    return 2.0 * m * k * n * reps / (time.perf_counter() - start) / 1e9


YARDSTICK_N = 2048  # the machine's matmul rate: one float32 [n, n] x [n, n] product


def yardstick_matmul(n=YARDSTICK_N):
    """A callable running one float32 [n, n] x [n, n] matmul (TensorFlow's own kernel, as a
    user would call it) to the host, and its FLOPs. Timed between the step's blocks, it
    measures the machine's matmul rate under the same load as the step."""
    import tensorflow as tf

    a, b = tf.random.normal([n, n]), tf.random.normal([n, n])
    f = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)))
    return (lambda: f(a, b).numpy()), 2.0 * n ** 3


def model_kind_bindings(kind):
    """The gin bindings that turn a run config into one of model ``kind`` ('air', 'pprior'):
    every binding of ``configs/<kind>.gin``, i.e. ``build_model.kind`` and the per-model values
    that build_model requires (temperature, stop threshold, decoder noise; AIR's prior
    schedule)."""
    import os
    import re

    from asr_tf.run import config

    bindings = []
    with open(os.path.join(config.CONFIG_DIR, f"{kind}.gin")) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line or line.startswith(("include ", "import ")):
                continue
            if not re.match(r"[A-Za-z_][\w.]*\s*=\s*\S", line):
                raise ValueError(f"{kind}.gin: {line!r} is not a one-line binding")
            bindings.append(line)
    return bindings


def _time_alternating(fns, warmup, steps, block=10):
    """Times several step functions in alternating blocks of ``block`` steps (so that a drift
    in machine speed hits all of them alike). Returns one list of step times per function."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in fns]
    while len(times[-1]) < steps:
        for fn, out in zip(fns, times):
            for _ in range(min(block, steps - len(out))):
                start = time.perf_counter()
                fn()
                out.append(time.perf_counter() - start)
    return times


def train_benchmark(config: str = "air_asr_14", batch_size: int = 64, warmup_batches: int = 5,
                    batches: int = 50, seed: int = 0, kinds: str = "air,pprior,asr",
                    jit_modes: str = "0,1", **unused) -> dict:
    """ms per training step of AIR, pPrior and ASR on a config's data, FLOPs and GFLOP/s.

    For each model kind and jit mode: the median step time over ``batches`` steps after
    warm-up, fed by the training tf.data pipeline in its steady state (from the second epoch
    on, the scenes come from its in-memory cache), and, in alternating blocks of 10 steps
    (so that a drift in machine speed hits all alike), by the pipeline as in its first epoch
    (every scene synthesised) and by batches drawn into memory beforehand (no pipeline at
    all): does the step wait on data? All three see the same scene distribution, so they
    execute about as many glimpse steps. Also the analytic FLOPs of the glimpse steps the
    loop needs (``steps_executed``: training computes all T steps, unrolled, so this counts
    only the useful part of the work), the achieved GFLOP/s, its ratio to a plain [64, 1024]
    x [1024, 1024] matmul measured before (``fraction_of_matmul``) and to the machine's rate,
    a float32 2048^2 matmul timed in the same alternating blocks as the steps
    (``fraction_of_matmul_2048``), and the time of one evaluation over the test scenes.
    """
    import gin
    import keras
    import numpy as np
    import tensorflow as tf

    from asr_tf.run import config as config_lib
    from asr_tf import models, objectives, training
    from asr_tf.run import evaluation, workdir as workdir_lib
    from asr_tf.lab import flops
    from asr_tf.data import pipeline

    results = {"what": "train", "config": config, "batch_size": batch_size}
    peak = matmul_gflops()
    results["matmul_gflops"] = round(peak, 1)
    yardstick, yardstick_flops = yardstick_matmul()
    for kind in kinds.split(","):
        bindings = [] if kind == "asr" else model_kind_bindings(kind)
        zero = ["Objective.constraints = []"] if kind != "asr" else []
        config_lib.parse([config], bindings + zero)
        spec = workdir_lib.run_spec()
        keras.utils.set_random_seed(seed)
        model, objective = models.model_for(spec), objectives.objective_for(spec)
        optimizer = training.make_optimizer(model)
        generator = tf.random.Generator.from_seed(seed)
        data = iter(pipeline.make_dataset(spec, "train", batch_size=batch_size, seed=seed))
        start = time.perf_counter()
        for _ in range(pipeline.steps_per_epoch(spec, batch_size)):  # fills the scene cache
            next(data)
        results.setdefault("first_epoch_pipeline_seconds", round(time.perf_counter() - start, 1))
        first_epoch = iter(pipeline.make_dataset(spec, "train", batch_size=batch_size, seed=seed,
                                                 cache_scenes=False))
        in_memory = [next(data) for _ in range(16)]
        for jit in [bool(int(j)) for j in jit_modes.split(",")]:
            executed = {"pipeline": [], "first_epoch": [], "memory": []}

            def step(batch, source):
                logs = training.train_step(model, optimizer, generator, batch,
                                           tf.constant(0, tf.int64), objective,
                                           tf.distribute.get_strategy(), batch_size, jit)
                executed[source].append(float(logs["steps_executed"]))

            cycle = iter(range(10**9))
            real, first, memory, stick = _time_alternating(
                [lambda: step(next(data), "pipeline"),
                 lambda: step(next(first_epoch), "first_epoch"),
                 lambda: step(in_memory[next(cycle) % len(in_memory)], "memory"),
                 yardstick],
                warmup_batches, batches)
            real_s, first_s, memory_s = (float(np.median(t)) for t in (real, first, memory))
            stick_gflops = yardstick_flops / float(np.median(stick)) / 1e9
            glimpses = {k: float(np.mean(v[warmup_batches:])) for k, v in executed.items()}
            step_flops = np.mean([flops.train_step_flops(model, batch_size, t)
                                  for t in executed["pipeline"][warmup_batches:]])
            key = f"{kind}{'_jit' if jit else ''}"
            results[key] = {
                "ms_per_step": round(real_s * 1e3, 1),
                "ms_per_step_first_epoch": round(first_s * 1e3, 1),
                "ms_per_step_in_memory_input": round(memory_s * 1e3, 1),
                "images_per_s": round(batch_size / real_s, 1),
                "glimpse_steps_executed": round(glimpses["pipeline"], 2),
                "glimpse_steps_executed_in_memory": round(glimpses["memory"], 2),
                "pipeline_overhead": round(real_s / memory_s - 1.0, 3),
                "pipeline_overhead_first_epoch": round(first_s / memory_s - 1.0, 3),
                "gflop_per_step": round(step_flops / 1e9, 3),
                "gflops": round(step_flops / real_s / 1e9, 1),
                "fraction_of_matmul": round(step_flops / real_s / 1e9 / peak, 3),
                f"matmul_{YARDSTICK_N}_gflops": round(stick_gflops, 1),
                f"fraction_of_matmul_{YARDSTICK_N}": round(step_flops / real_s / 1e9
                                                           / stick_gflops, 3),
            }
        if kind == "asr":
            evaluator = evaluation.Evaluator(model, spec, seed=seed)
            evaluator(0)
            start = time.perf_counter()
            evaluator(1)
            results["eval_seconds_1000"] = round(time.perf_counter() - start, 2)
        gin.clear_config()
    return results


def sampler_benchmark(batch_size: int = 64, batches: int = 200, warmup_batches: int = 20,
                      seed: int = 0, **unused) -> dict:
    """ms per glimpse step of the spatial transformer, forward + backward: extract a 28 px
    glimpse from a 50 px canvas and render it back, with the separable matmul sampler (used)
    and the gather-based one of the original (kept as the reference), plain and with XLA."""
    import numpy as np
    import tensorflow as tf

    from asr_tf.nn import transformer

    rng = np.random.default_rng(seed)
    canvas = tf.constant(rng.random((batch_size, 50, 50)), tf.float32)  # [B, S, S]
    scale = tf.Variable(rng.uniform(0.3, 0.6, batch_size).astype(np.float32))  # [B]
    shift = tf.Variable(rng.uniform(-0.5, 0.5, (batch_size, 2)).astype(np.float32))  # [B, 2]

    def separable():
        glimpse = transformer.extract_glimpse(canvas, scale, shift, 28, "hard")
        return transformer.render_glimpse(glimpse, scale, shift, 50, "hard")

    def gather():
        glimpse = transformer.sample_gather(canvas, transformer.glimpse_theta(scale, shift), (28, 28))
        return transformer.sample_gather(glimpse, transformer.inverse_theta(scale, shift), (50, 50))

    results = {"what": "sampler", "batch_size": batch_size}
    for name, sampler in (("separable", separable), ("gather", gather)):
        for jit in (False, True):
            @tf.function(jit_compile=jit)
            def step(sampler=sampler):
                with tf.GradientTape() as tape:
                    loss = tf.reduce_sum(tf.square(sampler()))
                return tape.gradient(loss, [scale, shift])

            (times,) = _time_alternating([lambda: step()[0].numpy()], warmup_batches, batches)
            results[f"{name}{'_jit' if jit else ''}_ms"] = round(float(np.median(times)) * 1e3, 3)
    return results


def tensorboard_benchmark(config: str = "air_asr_14", **unused) -> dict:
    """Seconds from the start of ``tools/train.py --config <config> --threads 1`` (a fresh run
    in a temporary folder) until a ``tensorboard --logdir runs/`` started before it (default
    reload interval, 5 s) serves its first training scalars over HTTP: ``served_s`` maps each
    of the first four served steps to that time."""
    import json
    import os
    import pathlib
    import shutil
    import socket
    import subprocess
    import sys
    import tempfile
    import urllib.parse
    import urllib.request

    root = tempfile.mkdtemp(prefix="tb_benchmark_")
    os.makedirs(os.path.join(root, "runs"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    query = urllib.parse.urlencode({"run": f"{config}/train", "tag": "loss"})
    url = f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?{query}"
    tool = pathlib.Path(__file__).resolve().parents[2] / "tools" / "train.py"
    procs = [subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", "runs",
                               "--host", "127.0.0.1", "--port", str(port)], cwd=root,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    served_s = {}
    try:
        while True:  # the server is up
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=5)
                break
            except OSError:
                time.sleep(0.2)
        start = time.time()
        procs.append(subprocess.Popen([sys.executable, str(tool), "--config", config,
                                       "--threads", "1"], cwd=root,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        while len(served_s) < 4 and procs[1].poll() is None and time.time() - start < 1800:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    points = json.load(response)
            except (OSError, ValueError):
                points = []
            for _, step, _ in points:
                served_s.setdefault(int(step), round(time.time() - start, 1))
            time.sleep(0.2)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)
    return dict(what="tensorboard", config=config, served_s=served_s,
                first_scalar_s=min(served_s.values(), default=None))


BENCHMARKS = {
    "data": data_benchmark,
    "train": train_benchmark,
    "sampler": sampler_benchmark,
    "serving": serving_benchmark.benchmark,
    "tensorboard": tensorboard_benchmark,
}


def run(what: str, **options) -> dict:
    """Run the benchmark mode `what` with keyword options; ValueError for an unknown mode."""
    if what not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {what!r}; allowed: {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[what](**options)
