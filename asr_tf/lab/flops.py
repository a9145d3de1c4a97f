"""FLOP counts of a training step: analytic, and counted from the compiled graph (XLA HLO).

Only matrix products are counted (2 FLOPs per multiply-add); elementwise work is a few
percent and is left out of both counts, so they can be compared.
"""
import re

import numpy as np

_DOT = re.compile(r"=\s*f32\[([\d,]*)\](?:\{[^}]*\})?\s+dot\(f32\[([\d,]*)\]")
_CONTRACT = re.compile(r"lhs_contracting_dims=\{([\d,]*)\}")


def _dims(text):
    return [int(d) for d in text.split(",") if d]


def hlo_dot_flops(hlo_text):
    """Sums 2 * prod(output) * prod(contracted lhs dims) over every ``dot`` in HLO text.

    Every computation in the module is counted once. A training step unrolls all T glimpse
    steps (no loop), so its count equals the analytic count of :func:`train_step_flops` with
    ``steps=T`` (tests/test_flops.py); in a ``while`` loop's body a step would count once.
    """
    total = 0
    for line in hlo_text.splitlines():
        dot, contract = _DOT.search(line), _CONTRACT.search(line)
        if not dot or not contract:
            continue
        lhs = _dims(dot.group(2))
        k = int(np.prod([lhs[i] for i in _dims(contract.group(1))]))
        total += 2 * int(np.prod(_dims(dot.group(1)))) * k
    return total


def _dense_macs(widths):
    return sum(a * b for a, b in zip(widths[:-1], widths[1:]))


def step_macs(model, batch):
    """Forward multiply-adds of one glimpse step per batch (without the once-per-pass image
    projection), as a dict by component."""
    s, g, u = model.canvas_px, model.glimpse_px, 256
    z = model.z_what_dim
    if model.kind == "pprior":
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
    u = model.prior.units if model.kind == "pprior" else model.net.units
    per_step = step_macs(model, batch)
    image_proj = batch * s * s * 4 * u
    extract_first = batch * model.glimpse_px * s * s
    fwd = image_proj + steps * sum(per_step.values())
    bwd = 2 * (fwd - image_proj - steps * extract_first) + image_proj + steps * extract_first
    return 2 * (fwd + bwd)
