"""TensorBoard summaries and metrics.jsonl lines that survive a kill: each step logged once.

Summaries and metric lines are held until the next checkpoint and committed with it, so a
run killed between checkpoints redoes those steps without logging anything twice.
"""
import json
import os
import shutil

import numpy as np
import tensorflow as tf


class SummaryBuffer:
    """Summaries and metric lines held until the next checkpoint, written exactly once.

    ``flush(step)`` commits them before the checkpoint is saved, in two phases so that a kill
    at any instant leaves either all or none of them in the run folder:
      1. event files are written complete into ``.summaries_staging/`` and the new metric
         lines into a file beside them;
      2. the marker ``logged_through`` (JSON) records ``step`` and the pending commit;
      3. the staged files are moved into ``train/``, ``eval/`` and appended to
         ``metrics.jsonl`` (cut back first to its recorded length, so redoing it is
         harmless); the marker then records that nothing is pending.
    On start, a pending commit is finished and anything staged but never recorded is
    discarded. A run killed before its next checkpoint resumes from the older one and re-runs
    steps it has already logged (deterministically, the same values): everything at or before
    ``logged_through`` is dropped instead of being written twice.
    """

    _STAGING = ".summaries_staging"

    def __init__(self, workdir):
        self.workdir = workdir
        self.marker_path = os.path.join(workdir, "logged_through")
        self.metrics_path = os.path.join(workdir, "metrics.jsonl")
        self.staging = os.path.join(workdir, self._STAGING)
        marker = self._read_marker()
        self.logged_through = int(marker["logged_through"])
        if marker.get("pending"):
            self._commit(marker["pending"])
        if os.path.isdir(self.staging):
            shutil.rmtree(self.staging)  # staged but never recorded: re-run, re-logged
        self._write_marker(None)
        self.items = []
        self.lines = []

    def _read_marker(self):
        if not os.path.exists(self.marker_path):
            return {"logged_through": 0}
        text = open(self.marker_path).read().strip()
        return json.loads(text) if text.startswith("{") else {"logged_through": int(text)}

    def _write_marker(self, pending):
        with open(self.marker_path + ".tmp", "w") as f:
            json.dump({"logged_through": self.logged_through, "pending": pending}, f)
        os.replace(self.marker_path + ".tmp", self.marker_path)

    def scalar(self, writer, tag, value, step):
        if step > self.logged_through:
            self.items.append(("scalar", writer, tag, float(value), int(step)))

    def image(self, writer, tag, array, step):
        if step > self.logged_through:
            self.items.append(("image", writer, tag, array, int(step)))

    def metrics_line(self, record):
        if record["step"] > self.logged_through:
            self.lines.append(json.dumps(record))

    def flush(self, step):
        stage = os.path.join(self.staging, str(int(step)))
        for name in sorted({item[1] for item in self.items}):
            writer = tf.summary.create_file_writer(os.path.join(stage, name))
            for kind, writer_name, tag, value, item_step in self.items:
                if writer_name != name:
                    continue
                with writer.as_default(step=item_step):
                    if kind == "scalar":
                        tf.summary.scalar(tag, value)
                    else:
                        tf.summary.image(tag, value[None].astype(np.uint8))
            writer.close()
        if self.lines:
            os.makedirs(stage, exist_ok=True)
            with open(os.path.join(stage, "metrics.jsonl"), "w") as f:
                f.write("\n".join(self.lines) + "\n")
        self.items, self.lines = [], []
        self.logged_through = max(self.logged_through, int(step))
        if not os.path.isdir(stage):
            self._write_marker(None)
            return
        metrics_bytes = (os.path.getsize(self.metrics_path)
                         if os.path.exists(self.metrics_path) else 0)
        pending = {"stage": os.path.basename(stage), "metrics_bytes": metrics_bytes}
        self._write_marker(pending)  # from here on the commit is redone after a kill
        self._commit(pending)
        self._write_marker(None)

    def _commit(self, pending):
        """Moves one staged flush into place; safe to repeat after a kill part-way."""
        stage = os.path.join(self.staging, pending["stage"])
        if not os.path.isdir(stage):
            return
        for name in sorted(os.listdir(stage)):
            path = os.path.join(stage, name)
            if name == "metrics.jsonl":
                with open(path) as f:
                    staged = f.read()
                with open(self.metrics_path, "a+") as f:
                    f.truncate(pending["metrics_bytes"])  # an interrupted earlier append
                    f.write(staged)
                os.remove(path)
                continue
            os.makedirs(os.path.join(self.workdir, name), exist_ok=True)
            for event_file in os.listdir(path):
                target = os.path.join(self.workdir, name, event_file)
                while os.path.exists(target):  # another process's file of the same name
                    target += ".1"
                os.replace(os.path.join(path, event_file), target)
        shutil.rmtree(stage)
