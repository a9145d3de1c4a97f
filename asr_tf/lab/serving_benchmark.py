"""Serving latency of an exported SavedModel: in-process, and under load over gRPC.

``run``: in-process, ``tf.saved_model.load`` and calls of one signature (default
``serving_default``); the model's own code (asr_tf, TFP) is not used. This is the compute
part of a request; a model server adds (de)serialisation and the network on top.

``benchmark`` (``tools/benchmark.py --what serving``): both, with the server's memory watched.

``load``: concurrent gRPC clients against a PredictionService (``asr_tf.serving``, the
servicer the tests use, or a model server): requests/s, latency p50/p99, errors, and
malformed requests sent in the middle of the load, each of which must get INVALID_ARGUMENT
while every other request succeeds.

  from asr_tf.lab import serving_benchmark
  serving_benchmark.run("models/air_asr_14/1")
  serving_benchmark.load("127.0.0.1:8500", "air_asr_14", images)
"""
import json
import os
import subprocess
import sys
import threading
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
      images: optional [M, S, S, C] float32 in [0, 1] (e.g. test scenes), tiled to each batch
        size instead of uniform noise. The glimpse loop stops when every image of the batch
        has stopped, so latency depends on the images (reported as ``max_count``).
    Returns:
      dict: ``export_path``, ``signature``, ``canvas_px``, ``cpu_count``, ``tf_version``,
      ``load_s`` and per batch size ``batch_<N>``: ``p50_ms``, ``p99_ms``, ``min_ms``,
      ``mean_ms``, ``cpu_ms`` (CPU time of this process per call, all threads: on a shared
      machine the wall-clock figures include waiting for a core, this does not),
      ``images_per_s`` (N / mean latency), ``iterations`` and ``max_count`` (the largest
      inferred count in the batch: the loop ran min(max_count + 1, T) steps).
    """
    start = time.perf_counter()
    loaded = tf.saved_model.load(export_path)
    load_s = time.perf_counter() - start
    fn = loaded.signatures[signature]
    specs = fn.structured_input_signature[1]
    canvas, channels = int(specs["images"].shape[1]), int(specs["images"].shape[3])
    rng = np.random.RandomState(seed)
    result = {"export_path": os.path.abspath(export_path), "signature": signature,
              "canvas_px": canvas, "cpu_count": os.cpu_count(), "tf_version": tf.__version__,
              "load_s": round(load_s, 3)}
    for n in batch_sizes:
        if images is None:
            batch = rng.rand(n, canvas, canvas, channels).astype(np.float32)
        else:
            batch = np.resize(np.asarray(images, np.float32), (n, canvas, canvas, channels))
        args = {"images": tf.constant(batch)}
        if "seed" in specs:
            args["seed"] = tf.constant(seed, tf.int64)
        iters = iterations or (100 if n <= 8 else 30)
        for _ in range(max(1, warmup)):
            out = _block(fn(**args))
        times = []
        cpu_start = time.process_time()
        for _ in range(iters):
            t0 = time.perf_counter()
            _block(fn(**args))
            times.append(time.perf_counter() - t0)
        cpu_ms = (time.process_time() - cpu_start) / iters * 1e3
        mean = float(np.mean(times))
        result[f"batch_{n}"] = {"p50_ms": round(_percentile_ms(times, 50), 2),
                                "p99_ms": round(_percentile_ms(times, 99), 2),
                                "min_ms": round(float(np.min(times)) * 1e3, 2),
                                "mean_ms": round(mean * 1e3, 2), "cpu_ms": round(cpu_ms, 2),
                                "images_per_s": round(n / mean, 1), "iterations": iters,
                                "max_count": int(np.max(out["count"])) if "count" in out else None}
    return result


def _block(outputs):
    """Forces the results to host memory (the call is asynchronous on some devices)."""
    return {k: v.numpy() for k, v in outputs.items()}


# Malformed requests of the load test: name -> images [N, S, S, 1] (each must be refused with
# INVALID_ARGUMENT, by the signature's dtype or by the graph's input checks).
MALFORMED = ("wrong_shape", "wrong_rank", "wrong_dtype", "nan", "above_one", "below_zero",
             "empty_batch")


def malformed_images(kind, canvas_px):
    """The images of a malformed request ``kind`` (one of MALFORMED)."""
    s = canvas_px
    ok = np.full([1, s, s, 1], 0.5, np.float32)
    if kind == "wrong_shape":
        return np.zeros([1, s - 10, s - 10, 1], np.float32)
    if kind == "wrong_rank":
        return np.zeros([s, s, 1], np.float32)
    if kind == "wrong_dtype":
        return ok.astype(np.float64)
    if kind == "nan":
        ok[0, s // 2, s // 2, 0] = np.nan
        return ok
    if kind == "above_one":
        ok[0, 0, 0, 0] = 1.5
        return ok
    if kind == "below_zero":
        ok[0, -1, -1, 0] = -0.25
        return ok
    if kind == "empty_batch":
        return np.zeros([0, s, s, 1], np.float32)
    raise ValueError(f"unknown malformed request {kind!r}; allowed: {', '.join(MALFORMED)}")


def _request(model_name, images, signature="serving_default"):
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
    return request


def load(address, model_name, images, clients=8, requests_per_client=50, batch_size=1,
         malformed_rounds=2, expected_count=None, timeout_s=120.0):
    """Concurrent Predict calls against ``address``, with malformed requests in between.

    ``clients`` threads, each with its own channel, send ``requests_per_client`` requests of
    ``batch_size`` images (consecutive rows of ``images``, cycled) one after another. One more
    thread sends every kind of MALFORMED ``malformed_rounds`` times, spread evenly over the
    load (the k-th of n once k / (n + 1) of the well-formed requests are answered).

    Args:
      address: ``host:port`` of a PredictionService.
      model_name: the served model's name.
      images: [M, S, S, 1] float32 in [0, 1] (e.g. test scenes).
      expected_count: optional [M] int, the model's ``count`` for each row of ``images``
        (e.g. from an in-process call); a response that differs counts as an error.
    Returns:
      dict: ``requests``, ``errors`` (failed or wrong well-formed requests; first messages
      in ``error_messages``), ``seconds``, ``requests_per_s``, ``images_per_s``, ``p50_ms``,
      ``p99_ms``, ``max_ms``, and ``malformed``: per kind the number sent and the status
      codes received (all must be INVALID_ARGUMENT), ``malformed_ok`` whether they were.
    """
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    images = np.asarray(images, np.float32)
    m, canvas = images.shape[0], images.shape[1]
    batches = []  # (request, rows) per distinct batch
    for start in range(0, max(m, batch_size * clients), batch_size):
        rows = np.arange(start, start + batch_size) % m
        batches.append((_request(model_name, images[rows]), rows))
    latencies = [[] for _ in range(clients)]
    errors, messages, completed = [0], [], [0]
    lock = threading.Lock()
    begin = threading.Barrier(clients + 2)
    done = threading.Event()

    def client(c):
        channel = grpc.insecure_channel(address)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        begin.wait()
        for i in range(requests_per_client):
            request, rows = batches[(c + i * clients) % len(batches)]
            t0 = time.perf_counter()
            try:
                response = stub.Predict(request, timeout=timeout_s)
                count = tf.make_ndarray(response.outputs["count"])
                wrong = count.shape != (len(rows),) or (
                    expected_count is not None and np.any(count != expected_count[rows]))
                problem = f"wrong count {count} for rows {rows}" if wrong else None
            except grpc.RpcError as err:
                problem = f"{err.code().name}: {err.details()}"
            latencies[c].append(time.perf_counter() - t0)
            with lock:
                completed[0] += 1
                if problem:
                    errors[0] += 1
                    messages.append(problem)
        channel.close()

    malformed = {kind: {"sent": 0, "codes": {}} for kind in MALFORMED}

    def bad_client():
        channel = grpc.insecure_channel(address)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        requests = [(kind, _request(model_name, malformed_images(kind, canvas)))
                    for kind in MALFORMED] * malformed_rounds
        begin.wait()
        total = clients * requests_per_client
        for k, (kind, request) in enumerate(requests):
            # the k-th goes out once k / (n + 1) of the well-formed requests are done
            while completed[0] < total * (k + 1) / (len(requests) + 1) and not done.wait(0.002):
                pass
            try:
                stub.Predict(request, timeout=timeout_s)
                code = "OK"
            except grpc.RpcError as err:
                code = err.code().name
            entry = malformed[kind]
            entry["sent"] += 1
            entry["codes"][code] = entry["codes"].get(code, 0) + 1
        channel.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    threads.append(threading.Thread(target=bad_client))
    for t in threads:
        t.start()
    begin.wait()
    start = time.perf_counter()
    for t in threads[:-1]:
        t.join()
    seconds = time.perf_counter() - start
    done.set()
    threads[-1].join()
    flat = np.concatenate([np.asarray(v) for v in latencies]) * 1e3
    total = clients * requests_per_client
    return {"address": address, "clients": clients, "requests_per_client": requests_per_client,
            "batch_size": batch_size, "requests": total, "errors": errors[0],
            "error_messages": messages[:5], "seconds": round(seconds, 3),
            "requests_per_s": round(total / seconds, 1),
            "images_per_s": round(total * batch_size / seconds, 1),
            "p50_ms": round(float(np.percentile(flat, 50)), 2),
            "p99_ms": round(float(np.percentile(flat, 99)), 2),
            "max_ms": round(float(flat.max()), 2), "malformed": malformed,
            "malformed_ok": all(e["codes"] == {"INVALID_ARGUMENT": e["sent"]}
                                for e in malformed.values())}


SERVER_RSS_BOUND_MB = 32  # allowed growth of the server's memory after its first load


def benchmark(export_path: str = None, dataset: str = "mnist_14", clients: int = 8,
                      requests_per_client: int = 100, serving_batch_sizes: str = "1,16",
                      load_rounds: int = 2, seed: int = 0, **unused) -> dict:
    """A SavedModel's ``serving_default``: in-process latency, then gRPC under load.

    In-process (:func:`run`): p50/p99 per batch size on test scenes of
    ``dataset``. Under load: the PredictionService of ``asr_tf.serving`` (the servicer the
    tests use) in its own process on 127.0.0.1; ``clients`` concurrent clients send
    ``requests_per_client`` requests each, per batch size, ``load_rounds`` times over, with
    every kind of malformed request in the middle (:func:`load`); each
    well-formed response's counts are checked against the in-process model. The server's
    resident memory is read after a warm-up and after each load; from the end of the first
    round of loads to the end of the last it may grow by at most SERVER_RSS_BOUND_MB.
    """
    if not export_path:
        raise ValueError("--export_path is required for --what serving (a <export_dir>/<version> folder)")
    from asr_tf import serving
    from asr_tf.data import pipeline, scenes

    spec = scenes.get_spec(dataset)
    test = next(iter(pipeline.make_dataset(spec, split="test", batch_size=spec.num_test,
                                           seed=seed, repeat=False, drop_remainder=False)))
    images = test["image"].numpy()  # [M, S, S, 1]
    sizes = [int(n) for n in serving_batch_sizes.split(",")]
    result = {"what": "serving", "dataset": dataset,
              "in_process": run(export_path, batch_sizes=sizes, images=images, seed=seed)}
    loaded = tf.saved_model.load(export_path)
    infer = loaded.signatures["serving_default"]
    expected = np.concatenate([infer(images=tf.constant(images[i:i + 250]))["count"].numpy()
                               for i in range(0, len(images), 250)])
    del loaded, infer
    name = os.path.basename(os.path.dirname(os.path.abspath(export_path)))
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    server = subprocess.Popen([sys.executable, "-m", "asr_tf.serving", export_path, name,
                               str(clients)], cwd=repo, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(server.stdout.readline())
        address = f"127.0.0.1:{info['port']}"
        for n in sizes:  # warm-up: every batch size once, and a malformed request
            load(address, name, images, clients=2, requests_per_client=3, batch_size=n,
                    malformed_rounds=1, expected_count=expected)
        rss = [serving.rss_bytes(info["pid"])]
        result["server_rss_mb_after_warmup"] = round(rss[0] / 2**20, 1)
        for r in range(load_rounds):
            for n in sizes:
                out = load(address, name, images, clients=clients,
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
