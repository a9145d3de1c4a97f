"""Which port variable is which variable of the original code (for lab/original_compare.py).

A mapping is a list of (port variable, the original's variable name, rows), rows being
``None`` (the whole variable), ``(start, stop)`` (a row block: the port holds each LSTM kernel
as blocks, the image block, the feedback block and the recurrent block, where the original has
one kernel [inputs + units, 4 units]) or ``'forget'`` (an LSTM bias: TF1's cells add a forget
bias of 1 inside the cell, the port starts its bias there). Names are those of the original's
graph built by lab/original_graph.py (scope ``air``).
"""
import numpy as np

# The forget-gate bias TF1's LSTM cells add inside the cell; the port initialises it in its bias.
FORGET_BIAS = 1.0


def _dense(port_layer, orig_scope):
    return [(port_layer.kernel, f"{orig_scope}/kernel", None),
            (port_layer.bias, f"{orig_scope}/bias", None)]


def _head(port_head, orig_hidden, orig_out):
    return _dense(port_head.layers[0], orig_hidden) + _dense(port_head.layers[1], orig_out)


def _lstm(core, orig_scope, widths):
    """The port's split kernels take row blocks of the original's one kernel [in + u, 4u]."""
    pairs, start = [], 0
    for kernel, width in zip(core.kernels + [core.recurrent_kernel],
                             list(widths) + [core.units]):
        pairs.append((kernel, f"{orig_scope}/kernel", (start, start + width)))
        start += width
    pairs.append((core.bias, f"{orig_scope}/bias", "forget"))
    return pairs


def _vae(vae, scope):
    enc, dec = vae.encoder, vae.decoder
    return (_dense(enc.h0, f"{scope}/recognition_1/fc") + _dense(enc.h1, f"{scope}/recognition_2/fc")
            + _dense(enc.loc, f"{scope}/rec_mean/fc") + _dense(enc.log_var, f"{scope}/rec_log_variance/fc")
            + _dense(dec.h0, f"{scope}/generative_1/fc") + _dense(dec.h1, f"{scope}/generative_2/fc")
            + _dense(dec.logits, f"{scope}/gen_mean/fc"))


def pprior_map(model):
    """(port variable, the original's variable name, rows or 'forget' or None) for AIR-pPrior/ASR."""
    inf, pri, s = model.inference, model.prior, "air/air_model"
    return (_lstm(inf.lstm, f"{s}/infer_rnn_running", inf.lstm.input_widths)
            + _head(inf.shift_loc, f"{s}/inf_shift/dense", f"{s}/inf_shift/dense_1")
            + _head(inf.shift_log_var, f"{s}/inf_shift/dense_2", f"{s}/inf_shift/dense_3")
            + _dense(inf.scale_hidden_loc, f"{s}/inf_scale/dense")
            + _dense(inf.scale_loc, f"{s}/inf_scale/dense_1")
            + _dense(inf.scale_hidden_log_var, f"{s}/inf_scale/dense_2")
            + _dense(inf.scale_log_var, f"{s}/inf_scale/dense_3")
            + _head(inf.z_pres, f"{s}/z_pres/log_odds/dense", f"{s}/z_pres/log_odds/dense_1")
            + _lstm(pri.lstm, f"{s}/gen_rnn_running", pri.lstm.input_widths)
            + _head(pri.shift_loc, f"{s}/gen_shift/dense", f"{s}/gen_shift/dense_1")
            + _head(pri.shift_log_var, f"{s}/gen_shift/dense_2", f"{s}/gen_shift/dense_3")
            + _head(pri.z_pres, f"{s}/z_pres/prior/dense", f"{s}/z_pres/prior/dense_1")
            + _vae(model.vae, f"{s}/vae"))


def air_map(model):
    """The same for plain AIR (the original's training_air_original.py)."""
    net, s = model.net, "air/rnn"
    return (_lstm(net.lstm, f"{s}/rnn", net.lstm.input_widths)
            + _head(net.scale_loc, f"{s}/scale/mean/hidden/fc", f"{s}/scale/mean/output/fc")
            + _head(net.scale_log_var, f"{s}/scale/log_variance/hidden/fc",
                    f"{s}/scale/log_variance/output/fc")
            + _head(net.shift_loc, f"{s}/shift/mean/hidden/fc", f"{s}/shift/mean/output/fc")
            + _head(net.shift_log_var, f"{s}/shift/log_variance/hidden/fc",
                    f"{s}/shift/log_variance/output/fc")
            + _head(net.z_pres, f"{s}/z_pres/log_odds/hidden/fc", f"{s}/z_pres/log_odds/output/fc")
            + _vae(model.vae, f"{s}/vae"))


def to_port(value, rows):
    if rows is None:
        return value
    if rows == "forget":  # [4u]: gate order i, j, f, o
        u = value.shape[0] // 4
        out = value.copy()
        out[2 * u:3 * u] += np.float32(FORGET_BIAS)
        return out
    return value[rows[0]:rows[1]]


def load_weights(mapping, weights):
    """Sets each port variable from the original's weights {name: array}."""
    for var, name, rows in mapping:
        var.assign(to_port(weights[name], rows))


def original_weights(mapping):
    """The port's weights as the original's variables {name: array} (blocks stacked back)."""
    parts = {}
    for var, name, rows in mapping:
        value = var.numpy()
        if rows == "forget":
            u = value.shape[0] // 4
            value = value.copy()
            value[2 * u:3 * u] -= np.float32(FORGET_BIAS)
        parts.setdefault(name, []).append((rows, value))
    return {name: np.concatenate([v for _, v in sorted(p, key=lambda r: r[0][0])])
            if isinstance(p[0][0], tuple) else p[0][1] for name, p in parts.items()}
