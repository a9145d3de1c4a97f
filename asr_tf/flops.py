"""FLOP counts of a training step: analytic, and counted from the compiled graph (XLA HLO).

Only matrix products are counted (2 FLOPs per multiply-add); elementwise work is a few
percent and is left out of both counts, so they can be compared.
"""
import re

import numpy as np

_DOT = re.compile(r"=\s*f32\[([\d,]*)\][^=]*?\bdot\(\s*f32\[([\d,]*)\][^,]*,\s*f32\[([\d,]*)\]"
                  r"[^)]*\),\s*lhs_batch_dims=\{[\d,]*\},\s*lhs_contracting_dims=\{([\d,]*)\}"
                  r"|=\s*f32\[([\d,]*)\][^=]*?\bdot\(\s*f32\[([\d,]*)\][^,]*,\s*f32\[([\d,]*)\]"
                  r"[^)]*\),\s*lhs_contracting_dims=\{([\d,]*)\}")


def _dims(text):
    return [int(d) for d in text.split(",") if d]


def hlo_dot_flops(hlo_text):
    """Sums 2 * prod(output) * prod(contracted lhs dims) over every ``dot`` in HLO text.

    Every computation in the module is counted once, so a model unrolled over its steps
    (``unroll=True``) is counted as if every step executes.
    """
    total = 0
    for m in _DOT.finditer(hlo_text):
        g = m.groups()
        out, lhs, contract = (g[0], g[1], g[3]) if g[0] is not None else (g[4], g[5], g[7])
        lhs_dims = _dims(lhs)
        k = int(np.prod([lhs_dims[i] for i in _dims(contract)])) if contract else 1
        total += 2 * int(np.prod(_dims(out))) * k
    return total


def _dense_macs(widths):
    return sum(a * b for a, b in zip(widths[:-1], widths[1:]))


def step_macs(model, batch):
    """Forward multiply-adds of one glimpse step per batch (without the once-per-pass image
    projection), as a dict by component."""
    s, g, u = model.canvas_px, model.glimpse_px, 256
    z = model.z_what_dim
    kind = type(model).__name__
    if kind == "PPriorAIR":
        u = model.prior.units
        heads = (2 * _dense_macs([u, 64, 2])  # shift loc / log-var
                 + 2 * ((u + 2) * 64 + (64 + 2) * 1)  # scale | shift, loc / log-var
                 + _dense_macs([u, 64, 1]))  # z_pres
        prior_heads = 2 * _dense_macs([u, 64, 2])
        if model.fix_steps is None:
            prior_heads += _dense_macs([u, 64, 1])
        if model.quirks.learned_scale_prior:
            prior_heads += 2 * _dense_macs([u, 64, 1])
        rnn = 2 * ((z + 3) * 4 * u + u * 4 * u) + heads + prior_heads
    else:
        u = model.net.units
        rnn = u * 4 * u + 2 * _dense_macs([u, 64, 1]) + 2 * _dense_macs([u, 64, 2]) + _dense_macs([u, 64, 1])
    vae = _dense_macs([g * g, 512, 256]) + 256 * 2 * z + _dense_macs([z, 256, 512, g * g])
    transformer = (g * s * s + g * s * g) + (s * g * g + s * g * s)
    return {k: v * batch for k, v in dict(rnn=rnn, vae=vae, transformer=transformer).items()}


def train_step_flops(model, batch, steps):
    """Analytic FLOPs of one training step (forward + backward) executing ``steps`` glimpse steps.

    Backward costs two products per forward product (input and weight gradients), except
    where no input gradient is needed: the image projection into the LSTM and the first
    product of the glimpse extraction (both multiply the data).
    """
    s = model.canvas_px
    u = model.prior.units if hasattr(model, "prior") else model.net.units
    per_step = step_macs(model, batch)
    image_proj = batch * s * s * 4 * u
    extract_first = batch * model.glimpse_px * s * s
    fwd = image_proj + steps * sum(per_step.values())
    bwd = 2 * (fwd - image_proj - steps * extract_first) + image_proj + steps * extract_first
    return 2 * (fwd + bwd)
