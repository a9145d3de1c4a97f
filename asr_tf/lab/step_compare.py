"""Two training steps side by side: a baseline checkout's and this one's, in alternating blocks.

Each side is a process of its own checkout's command line::

  PYTHONPATH=<tree> python <tree>/tools/benchmark.py --what serve_steps --config C --kinds K \
      --jit_modes J --batch_size B --seed S [--with_binding ...] [--threads N]

(:func:`serve_steps`): it builds the run's model, optimizer and 16 batches held in memory,
prints a JSON line once ready, then serves timing requests: a line ``N`` on stdin runs N steps
and prints their seconds (and glimpse steps executed, CPU time, analytic GFLOP) as one JSON
line. Any checkout whose tools/benchmark.py has that command line can be the baseline.
"""
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from asr_tf.lab import benchmarks
from asr_tf.run import xla_cpu

THIS_TREE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def serve_steps(config="air_asr_14", kinds="asr", jit_modes="1", batch_size=64, seed=0,
                with_bindings=(), **unused):
    """The step server of one side (this checkout's code): see the module docstring."""
    import keras
    import tensorflow as tf

    from asr_tf import models, objectives, training
    from asr_tf.data import pipeline
    from asr_tf.lab import flops
    from asr_tf.run import config as config_lib, workdir as workdir_lib

    kind, jit = kinds, bool(int(jit_modes))
    kind_bindings = [] if kind == "asr" else (benchmarks.model_kind_bindings(kind)
                                              + ["Objective.constraints = []"])
    config_lib.parse([config], kind_bindings + list(with_bindings))
    xla_cpu.xla_cpu_codegen()  # before the first compilation
    spec = workdir_lib.run_spec()
    keras.utils.set_random_seed(seed)
    model, objective = models.model_for(spec), objectives.objective_for(spec)
    optimizer = training.make_optimizer(model)
    generator = tf.random.Generator.from_seed(seed)
    data = iter(pipeline.make_dataset(spec, "train", batch_size=batch_size, seed=seed,
                                      cache_scenes=False))
    batches = [next(data) for _ in range(16)]
    count = [0]

    def step():
        batch = batches[count[0] % len(batches)]
        count[0] += 1
        logs = training.train_step(model, optimizer, generator, batch, tf.constant(0, tf.int64),
                                   objective, tf.distribute.get_strategy(), batch_size, jit)
        return float(logs["steps_executed"])

    step()  # traces and compiles
    print(json.dumps({"ready": THIS_TREE,
                      "threads": tf.config.threading.get_intra_op_parallelism_threads(),
                      "xla_flags": os.environ.get("XLA_FLAGS", "")}), flush=True)
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
    return None


def _start_server(tree, config, kind, jit, batch_size, seed, bindings, threads):
    """A step server of ``tree``'s own code (its tools/benchmark.py, its asr_tf first on the
    path), ready; returns (process, its ready line)."""
    cmd = [sys.executable, os.path.join(tree, "tools", "benchmark.py"), "--what", "serve_steps",
           "--config", config, "--kinds", kind, "--jit_modes", str(int(jit)),
           "--batch_size", str(batch_size), "--seed", str(seed)]
    for binding in bindings:
        cmd += ["--with_binding", binding]
    if threads:
        cmd += ["--threads", str(threads)]
    env = xla_cpu.child_environ()
    env["PYTHONPATH"] = os.pathsep.join([tree] + [p for p in [env.get("PYTHONPATH")] if p])
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    ready = proc.stdout.readline()
    if not ready.startswith("{"):
        proc.kill()
        raise RuntimeError(f"the step server of {tree} failed to start: {' '.join(cmd)}")
    return proc, json.loads(ready)


def compare_steps(baseline_dir=None, config="air_asr_14", kinds="asr", jit_modes="1",
                  batch_size=64, batches=100, warmup_batches=10, seed=0, block=10,
                  with_bindings=(), threads=None, **unused):
    """The training step of a baseline and of this tree, side by side.

    Two step servers (:func:`serve_steps`) hold their step ready: the baseline (the checkout
    ``baseline_dir``, or this tree when None) and this tree with the extra gin bindings
    ``with_bindings`` (e.g. ``xla_cpu_codegen.vector_width = 256``). They run blocks of
    ``block`` steps in turn (baseline, this, this, baseline, ...), on the same 16 batches held
    in memory, so that drifts in the machine's speed hit both alike, and a float32 2048^2
    matmul (the machine's rate) is timed between the blocks. ``threads``: the TensorFlow
    threads of the two steps and of the matmul (default: all cores; 1 is how the project trains
    two runs side by side).

    Returns:
      dict: ``baseline`` / ``this`` (path, its code: ``workdir.code_state``) and per kind
      and jit mode: ms per step of each (median over ``batches`` steps), ``speedup``
      (baseline ms / this ms), the speed-up of each pair of neighbouring blocks (median and
      range), glimpse steps executed, GFLOP per step (analytic, the executed glimpse steps),
      GFLOP/s and their fraction of the 2048^2 matmul's rate; ``cpu_ms_per_step`` (the
      server's CPU time, all threads) and ``cpu_speedup``: with one thread a measure of the
      work that waiting for a core does not inflate.
    """
    trees = {"baseline": os.path.abspath(baseline_dir or THIS_TREE), "this": THIS_TREE}
    if not os.path.isfile(os.path.join(trees["baseline"], "tools", "benchmark.py")):
        raise ValueError(f"--compare_with {baseline_dir}: no tools/benchmark.py there")
    if trees["baseline"] == THIS_TREE and not with_bindings:
        raise ValueError("nothing to compare: give --compare_with DIR and/or --with_binding")
    bindings = {"baseline": [], "this": list(with_bindings)}
    if threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    yardstick, yardstick_flops = benchmarks.yardstick_matmul()
    from asr_tf.run import workdir as workdir_lib

    result = {"what": "train_compare", "config": config, "batch_size": batch_size,
              "block": block, "threads": threads or "all",
              "baseline": {"path": trees["baseline"],
                           **workdir_lib.code_state(trees["baseline"])[0]},
              "this": {"path": trees["this"], **workdir_lib.code_state(trees["this"])[0],
                       "bindings": bindings["this"]}}
    for kind in kinds.split(","):
        for jit in [bool(int(j)) for j in jit_modes.split(",")]:
            servers = {}
            try:
                for name, tree in trees.items():  # one at a time: compiling is heavy
                    servers[name], ready = _start_server(tree, config, kind, jit, batch_size,
                                                         seed, bindings[name], threads)
                    result[name]["worker_threads"] = ready["threads"] or "all"
                    result[name]["xla_flags"] = ready.get("xla_flags", "")

                def run_block(name, n):
                    servers[name].stdin.write(f"{n}\n")
                    servers[name].stdin.flush()
                    return json.loads(servers[name].stdout.readline())

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
                for server in servers.values():
                    server.stdin.close()
                    server.wait(timeout=120)
            result[f"{kind}{'_jit' if jit else ''}"] = _row(blocks, stick, yardstick_flops)
    return result


def _row(blocks, stick, yardstick_flops):
    """The figures of one kind and jit mode from both sides' timed blocks."""
    row = {}
    for name, timed in blocks.items():
        seconds = [t for b in timed for t in b["seconds"]]
        gflop = float(np.mean([g for b in timed for g in b["gflop"]]))
        ms = float(np.median(seconds)) * 1e3
        row[name] = {"ms_per_step": round(ms, 1),
                     "glimpse_steps_executed": round(float(np.mean(
                         [t for b in timed for t in b["steps_executed"]])), 2),
                     "gflop_per_step": round(gflop, 3),
                     "gflops": round(gflop / ms * 1e3, 1),
                     "cpu_ms_per_step": round(float(np.median(
                         [b["cpu_seconds"] for b in timed])) * 1e3, 1)}
    pairs = [float(np.median(b["seconds"]) / np.median(t["seconds"]))
             for b, t in zip(blocks["baseline"], blocks["this"])]
    stick_gflops = yardstick_flops / float(np.median(stick)) / 1e9
    n = benchmarks.YARDSTICK_N
    for name in blocks:
        row[name][f"fraction_of_matmul_{n}"] = round(row[name]["gflops"] / stick_gflops, 3)
    row.update({"speedup": round(row["baseline"]["ms_per_step"] / row["this"]["ms_per_step"], 3),
                "cpu_speedup": round(row["baseline"]["cpu_ms_per_step"]
                                     / row["this"]["cpu_ms_per_step"], 3),
                "speedup_by_block_median": round(statistics.median(pairs), 3),
                "speedup_by_block_range": [round(min(pairs), 3), round(max(pairs), 3)],
                f"matmul_{n}_gflops": round(stick_gflops, 1)})
    return row
