"""A structural constraint of a user's own: all objects of a scene on one horizontal row.

Train with it (no change to asr-tf's code; this folder on the Python path):

    PYTHONPATH=docs/constraints python tools/train.py --config docs/constraints/air_asr_13_one_row.gin
"""
import tensorflow as tf

from asr_tf import constraints


@constraints.register("one_row")
def one_row(boxes, tolerance_px=2.0):
    """All boxes on one row: how far each box centre lies above or below the boxes' mean
    height, beyond ``tolerance_px``, summed over the boxes that count, px. [B]"""
    y = boxes.centers_px[..., 1]  # [B, T]
    w = boxes.weight  # [B, T]
    mean_y = tf.reduce_sum(w * y, -1, keepdims=True) / tf.maximum(
        tf.reduce_sum(w, -1, keepdims=True), 1.0)  # [B, 1]
    return tf.reduce_sum(w * tf.nn.relu(tf.abs(y - mean_y) - tolerance_px), -1)
