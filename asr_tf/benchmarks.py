"""Benchmarks behind tools/benchmark.py: one function per mode in BENCHMARKS.

Each mode function takes keyword options (ignoring the ones it does not use, so the tool can
pass all of its flags) and returns a JSON-serialisable dict of results. Add a mode by writing a
function and registering it in BENCHMARKS (e.g. 'train', 'serving').
"""
from __future__ import annotations

import time


def data_benchmark(
    dataset: str = "mnist_13",
    batch_size: int = 64,
    warmup_batches: int = 20,
    batches: int = 200,
    seed: int = 0,
    fresh_scenes: bool = False,
    **unused,
) -> dict:
    """Scenes per second of the training tf.data pipeline, measured after warm-up batches."""
    from asr_tf.data import pipeline

    start = time.perf_counter()
    iterator = iter(
        pipeline.make_dataset(
            dataset, "train", batch_size=batch_size, seed=seed, fresh_scenes=fresh_scenes
        )
    )
    for _ in range(warmup_batches):
        next(iterator)
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    elapsed_s = time.perf_counter() - start
    return dict(
        what="data",
        dataset=dataset,
        batch_size=batch_size,
        fresh_scenes=fresh_scenes,
        batches=batches,
        seconds=round(elapsed_s, 3),
        warmup_seconds=round(warmup_s, 3),
        scenes_per_s=round(batches * batch_size / elapsed_s, 1),
    )


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


def model_kind_bindings(kind, config_dir=None):
    """The gin bindings that turn a run config into one of model ``kind`` ('air', 'pprior'):
    every binding of ``<config_dir>/<kind>.gin``, i.e. ``build_model.kind`` and the per-model
    values that build_model requires (temperature, stop threshold, decoder noise; AIR's prior
    schedule). ``config_dir``: this checkout's configs/ by default, or another checkout's
    (older ones bind only the kind there)."""
    import os
    import re

    if config_dir is None:
        config_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                  "configs")
    bindings = []
    with open(os.path.join(config_dir, f"{kind}.gin")) as f:
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

    from asr_tf import config as config_lib
    from asr_tf import evaluation, flops, runs, training
    from asr_tf.data import pipeline

    results = {"what": "train", "config": config, "batch_size": batch_size}
    peak = matmul_gflops()
    results["matmul_gflops"] = round(peak, 1)
    yardstick, yardstick_flops = yardstick_matmul()
    for kind in kinds.split(","):
        bindings = [] if kind == "asr" else model_kind_bindings(kind)
        zero = ["Objective.constraints = []"] if kind != "asr" else []
        config_lib.parse([config], bindings + zero)
        spec = runs.run_spec()
        keras.utils.set_random_seed(seed)
        model, objective, _ = runs.build_components(spec)
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


SERVER_RSS_BOUND_MB = 32  # allowed growth of the server's memory after its first load


def serving_benchmark(export_path: str = None, dataset: str = "mnist_14", clients: int = 8,
                      requests_per_client: int = 100, serving_batch_sizes: str = "1,16",
                      load_rounds: int = 2, seed: int = 0, **unused) -> dict:
    """A SavedModel's ``serving_default``: in-process latency, then gRPC under load.

    In-process (``serving_benchmark.run``): p50/p99 per batch size on test scenes of
    ``dataset``. Under load: the PredictionService of ``asr_tf.serving`` (the servicer the
    tests use) in its own process on 127.0.0.1; ``clients`` concurrent clients send
    ``requests_per_client`` requests each, per batch size, ``load_rounds`` times over, with
    every kind of malformed request in the middle (``serving_benchmark.load``); each
    well-formed response's counts are checked against the in-process model. The server's
    resident memory is read after a warm-up and after each load; from the end of the first
    round of loads to the end of the last it may grow by at most SERVER_RSS_BOUND_MB.
    """
    if not export_path:
        raise ValueError("--export_path is required for --what serving (a <export_dir>/<version> folder)")
    import json
    import os
    import subprocess
    import sys

    import numpy as np
    import tensorflow as tf

    from asr_tf import serving
    from asr_tf import serving_benchmark as sb
    from asr_tf.data import pipeline, scenes

    spec = scenes.get_spec(dataset)
    test = next(iter(pipeline.make_dataset(spec, split="test", batch_size=spec.num_test,
                                           seed=seed, repeat=False, drop_remainder=False)))
    images = test["image"].numpy()  # [M, S, S, 1]
    sizes = [int(n) for n in serving_batch_sizes.split(",")]
    result = {"what": "serving", "dataset": dataset,
              "in_process": sb.run(export_path, batch_sizes=sizes, images=images, seed=seed)}
    loaded = tf.saved_model.load(export_path)
    infer = loaded.signatures["serving_default"]
    expected = np.concatenate([infer(images=tf.constant(images[i:i + 250]))["count"].numpy()
                               for i in range(0, len(images), 250)])
    del loaded, infer
    name = os.path.basename(os.path.dirname(os.path.abspath(export_path)))
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    server = subprocess.Popen([sys.executable, "-m", "asr_tf.serving", export_path, name,
                               str(clients)], cwd=repo, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(server.stdout.readline())
        address = f"127.0.0.1:{info['port']}"
        for n in sizes:  # warm-up: every batch size once, and a malformed request
            sb.load(address, name, images, clients=2, requests_per_client=3, batch_size=n,
                    malformed_rounds=1, expected_count=expected)
        rss = [serving.rss_bytes(info["pid"])]
        result["server_rss_mb_after_warmup"] = round(rss[0] / 2**20, 1)
        for r in range(load_rounds):
            for n in sizes:
                out = sb.load(address, name, images, clients=clients,
                              requests_per_client=requests_per_client, batch_size=n,
                              expected_count=expected)
                rss.append(serving.rss_bytes(info["pid"]))
                out["server_rss_mb_after"] = round(rss[-1] / 2**20, 1)
                result[f"load_round{r + 1}_batch_{n}"] = out
        # growth from the end of the first load to the end of the last (the first load's
        # allocations are the server's working set; later loads must not add to it)
        growth = (rss[-1] - rss[len(sizes)]) / 2**20
        result["server_rss_growth_mb"] = round(growth, 1)
        result["server_rss_bound_mb"] = SERVER_RSS_BOUND_MB
        result["server_rss_within_bound"] = bool(growth <= SERVER_RSS_BOUND_MB)
    finally:
        server.stdin.close()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    return result


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
    tool = pathlib.Path(__file__).resolve().parents[1] / "tools" / "train.py"
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
    "serving": serving_benchmark,
    "tensorboard": tensorboard_benchmark,
}


def _git_commit(tree):
    import subprocess

    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True,
                          text=True)
    return proc.stdout.strip() or None


def step_worker(tree, config, kind, jit, batch_size, seed, bindings=()):
    """A child process of :func:`compare_steps`: the training step of the code at ``tree``.

    Imports ``asr_tf`` from ``tree`` (this module's own package is dropped first), builds the
    model, optimizer and 16 batches held in memory as ``train_benchmark`` does, prints a JSON
    line once ready, then serves timing requests: a line ``N`` on stdin runs N steps and
    prints their seconds (and glimpse steps executed, and analytic GFLOPs) as one JSON line.
    ``bindings``: extra gin bindings (e.g. ``build_model.matmul_dtype = 'bfloat16'``).
    Works with the code of either side of the one-loss refactor: with ``asr_tf.runs`` (this
    tree: runs.run_spec / build_components, objectives.Objective, the strategy-wide
    training.train_step) or without it (417ff77 and its branches: train_lib.run_spec /
    build_components, PenaltyWeights, train_step(..., weights, jit)); both have
    config.parse, training.make_optimizer, pipeline.make_dataset, flops.train_step_flops.
    """
    import importlib
    import json
    import os
    import sys

    for name in [m for m in sys.modules if m == "asr_tf" or m.startswith("asr_tf.")]:
        del sys.modules[name]
    sys.path.insert(0, tree)
    import keras
    import tensorflow as tf

    config_lib = importlib.import_module("asr_tf.config")
    training = importlib.import_module("asr_tf.training")
    flops = importlib.import_module("asr_tf.flops")
    pipeline = importlib.import_module("asr_tf.data.pipeline")
    # not importlib.util.find_spec: the editable install's finder would find a missing module
    # in the installed checkout
    refactored = os.path.exists(os.path.join(tree, "asr_tf", "runs.py"))
    components = importlib.import_module("asr_tf.runs" if refactored else "asr_tf.train_lib")
    kind_bindings = ([] if kind == "asr"
                     else model_kind_bindings(kind, os.path.join(tree, "configs")))
    zero = [] if kind == "asr" else (
        ["Objective.constraints = []"] if refactored
        else ["PenaltyWeights.gamma_ne = 0.0", "PenaltyWeights.gamma_m = 0.0"])
    config_lib.parse([config], kind_bindings + zero + list(bindings))
    if os.path.exists(os.path.join(tree, "asr_tf", "xla_cpu.py")):  # before the first compile
        importlib.import_module("asr_tf.xla_cpu").xla_cpu_codegen()
    spec = components.run_spec()
    keras.utils.set_random_seed(seed)
    model, loss_spec, _ = components.build_components(spec)  # Objective, or PenaltyWeights
    optimizer = training.make_optimizer(model)
    generator = tf.random.Generator.from_seed(seed)
    data = iter(pipeline.make_dataset(spec, "train", batch_size=batch_size, seed=seed,
                                      cache_scenes=False))
    batches = [next(data) for _ in range(16)]
    count = [0]

    def step():
        batch = batches[count[0] % len(batches)]
        count[0] += 1
        if refactored:
            logs = training.train_step(model, optimizer, generator, batch,
                                       tf.constant(0, tf.int64), loss_spec,
                                       tf.distribute.get_strategy(), batch_size, jit)
        else:
            logs = training.train_step(model, optimizer, generator, batch,
                                       tf.constant(0, tf.int64), loss_spec, jit)
        return float(logs["steps_executed"])

    step()  # traces and compiles
    print(json.dumps({"ready": tree, "asr_tf": importlib.import_module("asr_tf").__file__,
                      "threads": tf.config.threading.get_intra_op_parallelism_threads(),
                      "xla_flags": os.environ.get("XLA_FLAGS", "")}),
          flush=True)
    for line in sys.stdin:
        seconds, executed = [], []
        cpu_start = time.process_time()
        for _ in range(int(line)):
            start = time.perf_counter()
            executed.append(step())
            seconds.append(time.perf_counter() - start)
        cpu_seconds = (time.process_time() - cpu_start) / max(len(seconds), 1)
        gflop = [flops.train_step_flops(model, batch_size, t) / 1e9 for t in executed]
        print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds,
                          "steps_executed": executed, "gflop": gflop}), flush=True)


def compare_steps(baseline_dir: str = None, config: str = "air_asr_14", kinds: str = "asr",
                  jit_modes: str = "1", batch_size: int = 64, batches: int = 100,
                  warmup_batches: int = 10, seed: int = 0, block: int = 10, with_bindings=(),
                  threads: int = None, **unused) -> dict:
    """The training step of a baseline and of this tree, side by side.

    Two worker processes (:func:`step_worker`) hold their step ready: the baseline (the
    checkout ``baseline_dir``, or this tree when None) and this tree with the extra gin
    bindings ``with_bindings`` (e.g. ``build_model.matmul_dtype = 'bfloat16'``). They run
    blocks of ``block`` steps in turn (baseline, this, this, baseline, ...), on the same 16
    batches held in memory, so that drifts in the machine's speed hit both alike, and a
    float32 2048^2 matmul (the machine's rate) is timed between the blocks. ``threads``: the
    TensorFlow intra- and inter-op threads of the two steps and of the matmul (default: all
    cores; 1 is how the project trains two runs side by side, ``tools/train.py --threads 1``).

    Returns:
      dict: ``baseline`` / ``this`` (path, commit) and per kind and jit mode: ms per step of
      each (median over ``batches`` steps), ``speedup`` (baseline ms / this ms), the speed-up
      of each pair of neighbouring blocks (median and range), glimpse steps executed, GFLOP
      per step (analytic, the executed glimpse steps), GFLOP/s and their fraction of the
      2048^2 matmul's rate; ``cpu_ms_per_step`` (the worker process's CPU time, all threads)
      and ``cpu_speedup``: with one thread a measure of the work that waiting for a core
      (other processes, steal) does not inflate.
    """
    import json
    import os
    import statistics
    import subprocess
    import sys

    import numpy as np

    from asr_tf import xla_cpu

    this_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    trees = {"baseline": os.path.abspath(baseline_dir or this_dir), "this": this_dir}
    if not os.path.isdir(os.path.join(trees["baseline"], "asr_tf")):
        raise ValueError(f"--compare_with {baseline_dir}: no asr_tf package there")
    if trees["baseline"] == this_dir and not with_bindings:
        raise ValueError("nothing to compare: give --compare_with DIR and/or --with_binding")
    bindings = {"baseline": [], "this": list(with_bindings)}
    set_threads = ""
    if threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        set_threads = (f"import tensorflow as tf; "
                       f"tf.config.threading.set_intra_op_parallelism_threads({threads}); "
                       f"tf.config.threading.set_inter_op_parallelism_threads({threads}); ")
    yardstick, yardstick_flops = yardstick_matmul()
    result = {"what": "train_compare", "config": config, "batch_size": batch_size,
              "block": block, "threads": threads or "all", "baseline": {"path": trees["baseline"],
                                           "commit": _git_commit(trees["baseline"])},
              "this": {"path": trees["this"], "commit": _git_commit(trees["this"]),
                       "bindings": bindings["this"]}}
    for kind in kinds.split(","):
        for jit in [bool(int(j)) for j in jit_modes.split(",")]:
            workers = {}
            try:
                for name, tree in trees.items():  # one at a time: compiling is heavy
                    code = (f"import sys; sys.path.insert(0, {this_dir!r}); {set_threads}"
                            f"from asr_tf.benchmarks import step_worker; step_worker({tree!r}, "
                            f"{config!r}, {kind!r}, {jit}, {batch_size}, {seed}, "
                            f"{bindings[name]!r})")
                    workers[name] = subprocess.Popen([sys.executable, "-c", code],
                                                     env=xla_cpu.child_environ(),
                                                     stdin=subprocess.PIPE,
                                                     stdout=subprocess.PIPE, text=True)
                    ready = workers[name].stdout.readline()
                    if not ready.startswith("{"):
                        raise RuntimeError(f"step worker for {tree} failed to start")
                    ready = json.loads(ready)
                    result[name]["worker_threads"] = ready["threads"] or "all"
                    result[name]["xla_flags"] = ready.get("xla_flags", "")

                def run_block(name, n):
                    workers[name].stdin.write(f"{n}\n")
                    workers[name].stdin.flush()
                    return json.loads(workers[name].stdout.readline())

                for name in trees:
                    run_block(name, warmup_batches)
                blocks = {name: [] for name in trees}
                stick = []
                for k in range(-(-batches // block)):
                    order = ("baseline", "this") if k % 2 == 0 else ("this", "baseline")
                    for name in order:
                        blocks[name].append(run_block(name, block))
                    start = time.perf_counter()
                    yardstick()
                    stick.append(time.perf_counter() - start)
            finally:
                for w in workers.values():
                    w.stdin.close()
                    w.wait(timeout=120)
            row = {}
            for name in trees:
                seconds = [t for b in blocks[name] for t in b["seconds"]]
                gflop = float(np.mean([g for b in blocks[name] for g in b["gflop"]]))
                ms = float(np.median(seconds)) * 1e3
                row[name] = {"ms_per_step": round(ms, 1),
                             "glimpse_steps_executed": round(float(np.mean(
                                 [t for b in blocks[name] for t in b["steps_executed"]])), 2),
                             "gflop_per_step": round(gflop, 3),
                             "gflops": round(gflop / ms * 1e3, 1)}
            pairs = [float(np.median(b["seconds"]) / np.median(t["seconds"]))
                     for b, t in zip(blocks["baseline"], blocks["this"])]
            for name in trees:  # CPU time of the worker process (all its threads) per step
                row[name]["cpu_ms_per_step"] = round(float(np.median(
                    [b["cpu_seconds"] for b in blocks[name]])) * 1e3, 1)
            stick_gflops = yardstick_flops / float(np.median(stick)) / 1e9
            for name in trees:
                row[name][f"fraction_of_matmul_{YARDSTICK_N}"] = round(
                    row[name]["gflops"] / stick_gflops, 3)
            row.update({"speedup": round(row["baseline"]["ms_per_step"]
                                         / row["this"]["ms_per_step"], 3),
                        "cpu_speedup": round(row["baseline"]["cpu_ms_per_step"]
                                             / row["this"]["cpu_ms_per_step"], 3),
                        "speedup_by_block_median": round(statistics.median(pairs), 3),
                        "speedup_by_block_range": [round(min(pairs), 3), round(max(pairs), 3)],
                        f"matmul_{YARDSTICK_N}_gflops": round(stick_gflops, 1)})
            result[f"{kind}{'_jit' if jit else ''}"] = row
    return result


def run(what: str, **options) -> dict:
    """Run the benchmark mode `what` with keyword options; ValueError for an unknown mode."""
    if what not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {what!r}; allowed: {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[what](**options)
