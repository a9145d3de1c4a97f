"""A gRPC ``PredictionService`` over an exported SavedModel, run the way TF Serving runs it.

The model server is not installed on these machines; this servicer stands in for it in the
tests (tests/test_export.py) and the serving load benchmark (``tools/benchmark.py --what
serving``). Like the model server it loads the SavedModel into a TF1 session, checks a
request's dtype against the SignatureDef but not its shape (each signature input is fed
through an unknown-shape placeholder), so the graph's own input checks answer bad shapes
and values (asr_tf/export.py). Errors map to gRPC status codes as the model server's do:
an InvalidArgumentError of the graph is INVALID_ARGUMENT.

  python -m asr_tf.serving models/air_asr_14/1 air_asr_14   # prints {"port": P} once serving

Needs ``grpcio`` and ``tensorflow-serving-api`` (both pinned in requirements.txt).
"""
import concurrent.futures
import json
import os
import sys
import threading

import tensorflow as tf


class SavedModelPredictionServicer:
    """``Predict`` of TF Serving's PredictionService over one SavedModel version folder.

    Args:
      path: ``<export_dir>/<version>``.
      model_name: the name requests must carry (an empty name is accepted).
      session_config: a ``tf.compat.v1.ConfigProto`` (thread pools), default TF's.
    """

    def __init__(self, path, model_name, session_config=None):
        from tensorflow.core.protobuf import saved_model_pb2

        self.model_name = model_name
        saved = saved_model_pb2.SavedModel()
        with open(os.path.join(path, "saved_model.pb"), "rb") as f:
            saved.ParseFromString(f.read())
        self.graph = tf.Graph()
        with self.graph.as_default():
            input_map = {}
            for sig in saved.meta_graphs[0].signature_def.values():
                for info in sig.inputs.values():
                    input_map[info.name] = tf.compat.v1.placeholder(
                        tf.dtypes.as_dtype(info.dtype), shape=None)
            self.session = tf.compat.v1.Session(graph=self.graph, config=session_config)
            meta = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], path,
                                                        input_map=input_map)
        self.graph.finalize()  # a request can add nothing to the graph (no growth per request)
        self.signatures = {k: v for k, v in meta.signature_def.items()
                           if v.method_name == "tensorflow/serving/predict"}
        self.input_map = input_map

    def Predict(self, request, context):  # noqa: N802 (gRPC method name)
        import grpc
        from tensorflow_serving.apis import predict_pb2

        codes = {c.value[0]: c for c in grpc.StatusCode}
        if request.model_spec.name and request.model_spec.name != self.model_name:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"Servable not found: {request.model_spec.name}")
        name = request.model_spec.signature_name or "serving_default"
        sig = self.signatures.get(name)
        if sig is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"Serving signature name: \"{name}\" not found in signature def")
        if set(request.inputs) != set(sig.inputs):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"inputs {sorted(request.inputs)} != expected {sorted(sig.inputs)}")
        feed = {}
        for key, proto in request.inputs.items():
            want = sig.inputs[key]
            if proto.dtype != want.dtype:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"Expects arg {key} to be {tf.dtypes.as_dtype(want.dtype).name} but "
                              f"{tf.dtypes.as_dtype(proto.dtype).name} is provided")
            feed[self.input_map[want.name]] = tf.make_ndarray(proto)
        keys = list(request.output_filter) or list(sig.outputs)
        try:
            values = self.session.run({k: sig.outputs[k].name for k in keys}, feed)
        except tf.errors.OpError as err:
            context.abort(codes.get(err.error_code, grpc.StatusCode.INTERNAL),
                          err.message.split("\n\t")[0])
        except Exception as err:  # keep serving whatever happens
            context.abort(grpc.StatusCode.INTERNAL, f"{type(err).__name__}: {err}")
        response = predict_pb2.PredictResponse()
        response.model_spec.name = self.model_name
        response.model_spec.signature_name = name
        for k, v in values.items():
            response.outputs[k].CopyFrom(tf.make_tensor_proto(v))
        return response

    def close(self):
        self.session.close()


def start_server(path, model_name, address="127.0.0.1:0", max_workers=8, session_config=None):
    """Serves ``path`` on ``address`` (port 0: a free port) in this process.

    Returns (server, port, servicer); stop with ``server.stop(None)`` and ``servicer.close()``.
    """
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    servicer = SavedModelPredictionServicer(path, model_name, session_config)

    class Service(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):  # noqa: N802
            return servicer.Predict(request, context)

    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=max_workers))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port(address)
    server.start()
    return server, port, servicer


def rss_bytes(pid=None):
    """Resident memory of a process (default: this one), from /proc (Linux)."""
    with open(f"/proc/{pid or 'self'}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/<pid>/status")


def main(argv):
    """``python -m asr_tf.serving PATH NAME [WORKERS]``: serves on 127.0.0.1 (a free port),
    prints ``{"port": P, "pid": ...}`` and serves until stdin is closed."""
    if len(argv) not in (3, 4):
        sys.exit("usage: python -m asr_tf.serving <export_dir>/<version> <model_name> [workers]")
    workers = int(argv[3]) if len(argv) == 4 else 8
    server, port, servicer = start_server(argv[1], argv[2], max_workers=workers)
    print(json.dumps({"port": port, "pid": os.getpid()}), flush=True)
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    done.wait()
    server.stop(None)
    servicer.close()


if __name__ == "__main__":
    main(sys.argv)
