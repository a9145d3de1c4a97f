"""TensorBoard summaries and metrics.jsonl lines: live, and each step once across kills.

Written through: the loop flushes after every step that logged something (every ``log_every``
steps, and evaluations), so TensorBoard shows a run from its first ``log_every`` steps on, and
a checkpoint is saved only after the flush of its step. Each invocation writes event files of
its own.

A run killed between checkpoints (``kill -9`` at any instant included) has logged steps after
the checkpoint that the same command resumes from, and then logs them again. So ``RunLog``
starts by cutting what earlier invocations logged after the restored step: from every event
file in ``train/`` and ``eval/`` and from ``metrics.jsonl``, together with a record or line
that the kill tore. A cut file is written beside the original and replaces it (``os.replace``):
a kill during the cut leaves each file cut or not, and the next start cuts again. Any reader of
the workdir (TensorBoard, EventAccumulator, ``tools/``) then finds each step once.

A TensorBoard server running through the kill and the resume has already read the killed
process's steps after the checkpoint. TensorBoard 2.21 with its default data server drops them
when the resumed run logs the first of those steps again (it keeps a time series ordered by
step: a point at or before the last one it holds replaces the points from that step on;
measured, tests/test_loop.py). Its Python reader (``--load_fast=false``) purges only at
a SessionLog.START event, which tf.summary does not write: it shows them until restarted.

Latency, the start of ``tools/train.py`` to the first training scalar that a running
``tensorboard --logdir runs/`` serves over HTTP (``python tools/benchmark.py --what tensorboard
--config air_asr_14``; 2026-11-30, 2-core EPYC at load average ~7, ``--threads 1``): 45 s and
47 s in two runs, step 20 (log_every 20); start-up and XLA compilation take ~40 s, the server
reloads every 5 s; then a point every log interval (~2.5 s). The tiny test config
(log_every 1, no XLA, reload every 1 s): 41 s.
"""
import json
import os
import struct

import numpy as np
import tensorflow as tf
from tensorflow.core.util import event_pb2

from asr_tf.run import workdir as workdir_lib

RUNS = ("train", "eval")  # TensorBoard runs: subfolders of the workdir


class RunLog:
    """The run's summaries (TensorBoard runs ``RUNS``) and metrics.jsonl, written through.

    Args:
      workdir: the run folder.
      resumed_at: the step of the checkpoint this invocation starts from (0: none); what
        earlier invocations logged after it is cut first.
    """

    def __init__(self, workdir, resumed_at):
        self.workdir = workdir
        self.metrics_path = os.path.join(workdir, workdir_lib.METRICS_FILE)
        for run in RUNS:
            folder = os.path.join(workdir, run)
            for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
                path = os.path.join(folder, name)
                if name == _CUT_TMP:
                    os.remove(path)  # a cut interrupted by a kill
                elif "tfevents" in name:
                    _cut_event_file(path, resumed_at)
        if os.path.exists(self.metrics_path):
            _cut_metrics(self.metrics_path, resumed_at)
        self._writers = {}
        self._unflushed = False

    def _writer(self, run):
        if run not in RUNS:
            raise ValueError(f"unknown summary run {run!r}: one of {RUNS}")
        if run not in self._writers:
            self._writers[run] = tf.summary.create_file_writer(os.path.join(self.workdir, run))
        return self._writers[run]

    def scalar(self, run, tag, value, step):
        with self._writer(run).as_default(step=int(step)):
            tf.summary.scalar(tag, float(value))
        self._unflushed = True

    def image(self, run, tag, array, step):
        """``array``: [H, W, C] values in 0..255."""
        with self._writer(run).as_default(step=int(step)):
            tf.summary.image(tag, np.asarray(array)[None].astype(np.uint8))
        self._unflushed = True

    def metrics_line(self, record):
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def flush(self):
        """Puts what was logged since the last flush into the event files (visible to
        TensorBoard; survives a kill)."""
        if self._unflushed:
            for writer in self._writers.values():
                writer.flush()
            self._unflushed = False

    def close(self):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


_CUT_TMP = ".cut.tmp"  # no "tfevents" in the name: TensorBoard skips it


def _records(path):
    """The complete records of a TFRecord file, and the bytes they take: a kill can tear the
    last one. The framing: length (uint64), its CRC (4 bytes), the record, its CRC (4 bytes).
    (tf.data's reader reports a torn record as DataLoss, a torn length not at all.)"""
    with open(path, "rb") as f:
        data = f.read()
    records, pos = [], 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        end = pos + 12 + length + 4
        if end > len(data):
            break
        records.append(data[pos + 12:end - 4])
        pos = end
    return records, pos


def _cut_event_file(path, last_step):
    """Keeps the events of ``path`` up to ``last_step`` (and none torn); removes a file that
    keeps no summary."""
    records, size = _records(path)
    events = [event_pb2.Event.FromString(r) for r in records]
    kept = [r for r, e in zip(records, events) if e.step <= last_step]
    if len(kept) == len(records) and size == os.path.getsize(path):
        return
    if not any(e.HasField("summary") for e in events if e.step <= last_step):
        os.remove(path)
        return
    tmp = os.path.join(os.path.dirname(path), _CUT_TMP)
    with tf.io.TFRecordWriter(tmp) as writer:
        for record in kept:
            writer.write(record)
    os.replace(tmp, path)


def _cut_metrics(path, last_step):
    """Keeps the metrics.jsonl lines up to ``last_step`` (a torn last line goes too)."""
    with open(path) as f:
        text = f.read()
    kept = []
    for line in text.splitlines(keepends=True):
        try:
            if line.endswith("\n") and json.loads(line)["step"] <= last_step:
                kept.append(line)
        except ValueError:
            pass  # torn by a kill
    if "".join(kept) != text:
        with open(path + ".tmp", "w") as f:
            f.write("".join(kept))
        os.replace(path + ".tmp", path)

