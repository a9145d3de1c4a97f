"""Count reports of a trained run (lab tooling): where its boxes are per glimpse step, the count
histogram and presence per step as markdown (asr_tf/counts.py computes them), and for plain AIR
the count ledger.

* :func:`count_elbo_ledger` prices every count k = 0..T for plain AIR, whose proposals do not
  depend on z_pres (:func:`glimpse_ledger`): the nELBO of the test pass had it stopped after
  k glimpses, with the presence prior charged as a Bernoulli, and the count it would choose.
* :func:`diagnose_workdir` runs one test pass of a trained run and reports all of it
  (tools/diagnose_counts.py).
"""
import numpy as np
import tensorflow as tf

from asr_tf import metrics
from asr_tf import objectives
from asr_tf.counts import as_counts, count_histogram, count_report
from asr_tf.data import DataError
from asr_tf.models.base import batch_major, flat, unflat
from asr_tf.nn import transformer
from asr_tf.run import trained


def boxes_by_step(scale, shift, present, images, true_count, canvas_px):
    """Where the present boxes of each glimpse step are, per true count.

    Args:
      scale: [N, T] window side as a fraction of the canvas; shift: [N, T, 2] centres in
        [-1, 1] (x, y); present: [N, T] 1 where the step's object is on the canvas;
      images: [N, S, S] (or [N, S, S, C]) the test scenes; true_count: [N]; canvas_px: S.
    Returns:
      {true count c: {"present": [T] fraction of scenes with step t present, "side_px": [T]
      mean side of the present boxes, "ink_covered": [T] mean fraction of a scene's ink
      (sum of pixel values, over the channels too) inside the union of its present boxes
      0..t (a pixel is inside a box when its centre is)}}; NaN where no box.
    """
    scale, shift = np.asarray(scale, np.float64), np.asarray(shift, np.float64)
    present = np.asarray(present) > 0.5
    n, t_max = scale.shape
    if shift.shape != (n, t_max, 2) or present.shape != (n, t_max):
        raise ValueError(f"scale {scale.shape}, shift {shift.shape} and present {present.shape} "
                         "must be [N, T], [N, T, 2], [N, T]")
    true_count = as_counts("true_count", true_count)
    x = np.asarray(images, np.float64).reshape(n, canvas_px, canvas_px, -1).sum(-1)  # [N, S, S]
    centre, side = metrics.where_px(scale, shift, canvas_px)  # [N, T, 2], [N, T]
    grid = np.arange(canvas_px) + 0.5  # pixel centres
    lo, hi = centre - side[..., None] / 2, centre + side[..., None] / 2  # [N, T, 2]
    in_x = (grid[None, None, :] >= lo[..., 0:1]) & (grid[None, None, :] <= hi[..., 0:1])  # [N, T, S]
    in_y = (grid[None, None, :] >= lo[..., 1:2]) & (grid[None, None, :] <= hi[..., 1:2])
    inside = (in_y[:, :, :, None] & in_x[:, :, None, :]) & present[:, :, None, None]  # [N, T, S, S]
    union = np.logical_or.accumulate(inside, axis=1)
    ink = x.reshape(n, -1).sum(-1)  # [N]
    covered = (union * x[:, None]).reshape(n, t_max, -1).sum(-1) / np.maximum(ink, 1e-12)[:, None]
    out = {}
    for c in np.unique(true_count):
        rows = true_count == c
        p = present[rows]
        n_p = p.sum(0)
        out[int(c)] = {"present": p.mean(0),
                       "side_px": np.where(n_p > 0, (side[rows] * p).sum(0) / np.maximum(n_p, 1), np.nan),
                       "ink_covered": covered[rows].mean(0)}
    return out


def _per_step_header(t_max):
    """The two header lines of a markdown table with a column per glimpse step."""
    return ["| true count | " + " | ".join(f"step {t}" for t in range(t_max)) + " |",
            "|---" * (t_max + 1) + "|"]


def format_boxes(boxes):
    """Markdown table of :func:`boxes_by_step`."""
    if not boxes:
        return "(no scenes)\n"
    t_max = len(next(iter(boxes.values()))["present"])
    lines = ["Per glimpse step: fraction of scenes with the box present, its mean side (px), and "
             "the ink inside boxes 0..t:", "", *_per_step_header(t_max)]
    for c, e in boxes.items():
        cells = []
        for t in range(t_max):
            side = "–" if not np.isfinite(e["side_px"][t]) else f"{e['side_px'][t]:.1f} px"
            cells.append(f"{e['present'][t]:.2f} / {side} / {e['ink_covered'][t]:.2f}")
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_report(report):
    """Markdown tables of a :func:`count_report`."""
    hist, pres = report["histogram"], report["presence"]
    if not hist:
        return "(no scenes)\n"
    t_max = len(next(iter(hist.values()))[0]) - 1
    lines = ["| true count | scenes | " + " | ".join(f"inferred {k}" for k in range(t_max + 1)) + " |",
             "|---" * (t_max + 3) + "|"]
    for c, (frac, n) in hist.items():
        lines.append(f"| {c} | {n} | " + " | ".join(f"{f:.3f}" for f in frac) + " |")
    lines += ["", "Mean presence probability p_t over the scenes that reached step t "
              "(their count >= t; scenes in brackets):", "", *_per_step_header(t_max)]
    for c, entry in pres.items():
        cells = []
        for t in range(t_max):
            v = entry["reached"][t] if entry["reached"] is not None else entry["all"][t]
            n = entry["reached_n"][t] if entry["reached_n"] is not None else None
            cell = "–" if not np.isfinite(v) else f"{v:.3f}"
            cells.append(cell + (f" ({n})" if n is not None else ""))
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def glimpse_ledger(model, images, noise, step=0):
    """Every step's proposal of a plain-AIR test pass, whether or not it is used.

    AIR's proposals do not depend on z_pres (the LSTM sees only the image, Q33), so the test
    pass with count k uses exactly the first k of these; :func:`count_elbo_ledger` prices
    every k. From the model's own parts: ``proposals`` (all T steps, each priced as present)
    and each step's glimpse decoded and rendered on its own (the test pass renders them
    summed).

    Args:
      model: an AIR (``kind`` 'air'); images: [B, S, S, C]; noise: dict from
        ``model.sample_noise`` (test-pass noise); step: global step (for the prior log-odds).
    Returns:
      dict of numpy arrays: ``rendered`` [B, T, S, S, C] (each glimpse on the canvas, z=1),
      ``kl_glimpse`` [B, T] (KL of scale + shift + what, nats), ``z_pres_logit`` [B, T],
      ``prior_logit`` [T] (the annealed prior plus any -ap bias).
    """
    if model.kind != "air":
        raise ValueError(f"the glimpse ledger is plain AIR's; this model is {model.kind!r}")
    t_max = model.max_glimpses
    rec = model.proposals(images, noise, step)  # [T, B, ...]
    eps_pix = noise.get("eps_pix")
    glimpses = model.decode(flat(rec["z_what"]), None if eps_pix is None else flat(eps_pix))
    rendered = transformer.render_glimpse(glimpses, flat(rec["scale"]), flat(rec["shift"]),
                                          model.canvas_px,
                                          model.quirks.sampler_edge)  # [T*B, S, S, C]
    kl = rec["kl_scale"] + rec["kl_shift"] + rec["kl_what"]  # [T, B]
    return {"rendered": batch_major(unflat(rendered, t_max)).numpy(),
            "kl_glimpse": batch_major(kl).numpy(),
            "z_pres_logit": batch_major(rec["z_pres_logit"]).numpy(),
            "prior_logit": model.prior_logit(step).numpy()}


def _bernoulli_nll(images, recon):
    """[N] the loss's reconstruction term (``objectives.bernoulli_nll``) in float64, on the
    recon clipped to [0, 1]: the ledger prices what the model trains on."""
    recon = tf.constant(np.clip(recon, 0.0, 1.0), tf.float64)
    return objectives.bernoulli_nll(tf.constant(images, tf.float64), recon).numpy()


def _log_sigmoid(x):
    return -np.logaddexp(0.0, -np.asarray(x, np.float64))


def count_elbo_ledger(images, rendered, kl_glimpse, prior_logit):
    """What each count k = 0..T would cost a plain-AIR test pass, given its proposals.

    The scene is explained by the first k proposed glimpses (hard z = 1, canvas clipped to
    [0, 1]); the presence prior is charged as the Bernoulli it relaxes: -ln sigmoid(a_t) for
    each present step t < k and -ln(1 - sigmoid(a_k)) for the stopping step (none at k = T),
    i.e. the KL of a posterior certain of count k.

    Args:
      images: [N, S, S] (or [N, S, S, C]) in [0, 1].
      rendered: [N, T, S, S] (or [N, T, S, S, C]) each step's glimpse on the canvas
        (:func:`glimpse_ledger`).
      kl_glimpse: [N, T] KL of scale + shift + what of each step, nats.
      prior_logit: [T] (or [N, T]) prior log-odds a_t of presence.
    Returns:
      dict of numpy arrays: ``nll`` [N, T+1], ``kl_glimpse`` [N, T+1] (cumulative),
      ``presence_cost`` [N, T+1], ``nelbo`` [N, T+1] (their sum), ``best_count`` [N]
      (argmin over k), ``gain`` [N, T] (nll with t glimpses minus nll with t+1: the
      reconstruction value of adding glimpse t).
    """
    rendered = np.asarray(rendered, np.float64)
    if rendered.ndim not in (4, 5):
        raise ValueError(f"rendered must be [N, T, S, S(, C)], got shape {rendered.shape}")
    n, t_max = rendered.shape[:2]
    x = np.asarray(images, np.float64).reshape(n, *rendered.shape[2:])
    kl = np.asarray(kl_glimpse, np.float64)
    if kl.shape != (n, t_max):
        raise ValueError(f"kl_glimpse must be [{n}, {t_max}], got shape {kl.shape}")
    a = np.broadcast_to(np.asarray(prior_logit, np.float64), (n, t_max))
    canvas = np.concatenate([np.zeros_like(rendered[:, :1]), np.cumsum(rendered, 1)], 1)
    nll = np.stack([_bernoulli_nll(x, canvas[:, k]) for k in range(t_max + 1)], 1)  # [N, T+1]
    kl_cum = np.concatenate([np.zeros((n, 1)), np.cumsum(kl, 1)], 1)
    present_cost = np.concatenate([np.zeros((n, 1)), np.cumsum(-_log_sigmoid(a), 1)], 1)
    stop_cost = np.concatenate([-_log_sigmoid(-a), np.zeros((n, 1))], 1)  # no stop after T
    presence = present_cost + stop_cost
    nelbo = nll + kl_cum + presence
    return {"nll": nll, "kl_glimpse": kl_cum, "presence_cost": presence, "nelbo": nelbo,
            "best_count": np.argmin(nelbo, 1), "gain": nll[:, :-1] - nll[:, 1:]}


def ledger_summary(ledger, count, true_count):
    """Per true count: how the ELBO-preferred count (``best_count``) compares with the inferred.

    Returns {true count c: dict ``scenes``, ``best_hist`` [T+1] (fractions of scenes whose
    cheapest count is k), ``agree`` (fraction with best_count == inferred count),
    ``best_is_true`` (fraction with best_count == c), ``mean_gain`` [T] (mean reconstruction
    value of glimpse t, nats), ``mean_nelbo`` [T+1] (mean nELBO had every scene used k)}.
    """
    count, true_count = as_counts("count", count), as_counts("true_count", true_count)
    best = np.asarray(ledger["best_count"])
    t_max = ledger["gain"].shape[1]
    hist = count_histogram(best, true_count, t_max)
    out = {}
    for c, (frac, n) in hist.items():
        rows = true_count == c
        out[c] = {"scenes": n, "best_hist": frac, "agree": float(np.mean(best[rows] == count[rows])),
                  "best_is_true": float(np.mean(best[rows] == c)),
                  "mean_gain": ledger["gain"][rows].mean(0), "mean_nelbo": ledger["nelbo"][rows].mean(0)}
    return out


def format_ledger_summary(summary):
    """Markdown tables of a :func:`ledger_summary`."""
    if not summary:
        return "(no scenes)\n"
    t_max = len(next(iter(summary.values()))["mean_gain"])
    lines = ["Count with the lowest nELBO given the model's own proposals (fraction of scenes):", "",
             "| true count | scenes | " + " | ".join(f"k={k}" for k in range(t_max + 1))
             + " | = inferred | = true |", "|---" * (t_max + 5) + "|"]
    for c, e in summary.items():
        lines.append(f"| {c} | {e['scenes']} | " + " | ".join(f"{f:.3f}" for f in e["best_hist"])
                     + f" | {e['agree']:.3f} | {e['best_is_true']:.3f} |")
    lines += ["", "Mean nELBO (nats) had every scene stopped after k glimpses:", "",
              "| true count | " + " | ".join(f"k={k}" for k in range(t_max + 1)) + " |",
              "|---" * (t_max + 2) + "|"]
    for c, e in summary.items():
        lines.append(f"| {c} | " + " | ".join(f"{v:.1f}" for v in e["mean_nelbo"]) + " |")
    lines += ["", "Mean reconstruction value of glimpse t (nll with t glimpses minus with t+1, nats):",
              "", "| true count | " + " | ".join(f"glimpse {t}" for t in range(t_max)) + " |",
              "|---" * (t_max + 1) + "|"]
    for c, e in summary.items():
        lines.append(f"| {c} | " + " | ".join(f"{v:.1f}" for v in e["mean_gain"]) + " |")
    return "\n".join(lines) + "\n"


def expected_concrete_kl(alpha_q, alpha_p, temperature=1.0, num_points=20001):
    """E_q[ln q(y) - ln p(y)] of the Binary-Concrete z_pres KL (docs/ORIGINAL.md §3.3) by
    quadrature over the logistic noise: the KL the one-sample estimate averages to, in nats.

    Args:
      alpha_q, alpha_p: posterior and prior logits (broadcastable arrays).
      temperature: the shared temperature lambda.
    Returns:
      numpy array of the broadcast shape.
    """
    u = (np.arange(num_points) + 0.5) / num_points  # midpoints of (0, 1)
    noise = np.log(u) - np.log1p(-u)  # standard logistic
    aq, ap = np.broadcast_arrays(np.asarray(alpha_q, np.float64), np.asarray(alpha_p, np.float64))
    y = (aq[..., None] + noise) / temperature  # [..., M]

    def log_density(alpha):  # tfd.Logistic(alpha / lam, 1 / lam).log_prob(y)
        z = (y - alpha[..., None] / temperature) * temperature
        return -z - 2.0 * np.logaddexp(0.0, -z) + np.log(temperature)

    return (log_density(aq) - log_density(ap)).mean(-1)


def bernoulli_kl(alpha_q, alpha_p):
    """KL(Bernoulli(sigmoid(alpha_q)) || Bernoulli(sigmoid(alpha_p))) in nats."""
    aq, ap = np.asarray(alpha_q, np.float64), np.asarray(alpha_p, np.float64)
    q = 1.0 / (1.0 + np.exp(-aq))
    return (q * (_log_sigmoid(aq) - _log_sigmoid(ap))
            + (1.0 - q) * (_log_sigmoid(-aq) - _log_sigmoid(-ap)))


def diagnose_workdir(workdir, checkpoint=None, num_test=None, seed=None, ledger=True, batch=250,
                     ledger_prior_logit=None):
    """Count diagnostics of a trained run on its test scenes (one stochastic test pass, Q25).

    ``ledger_prior_logit``: price presence in the ledger at this prior log-odds instead of the
    run's at its step (e.g. -20.03, the floor: which count would the floor prior buy with the
    glimpses the model proposes now?).

    Returns a dict: ``step``, ``report`` (:func:`count_report` of the pass), ``boxes``
    (:func:`boxes_by_step`), ``markdown``, and for plain AIR with ``ledger``:
    ``ledger_summary`` and ``ledger_check`` (the largest |nll of the pass - ledger nll at the
    inferred count|, which must be ~0).
    """
    run = trained.load_trained(workdir, checkpoint)
    model, spec, step = run.model, run.spec, run.step
    if not spec.has_boxes:
        raise DataError(f"{spec.data} has no boxes: the count diagnostics are per true count "
                        "(tools/evaluate.py gives the histogram of inferred counts)")
    seed = run.seed if seed is None else seed
    scenes = run.evaluator(num_test, seed).test
    images, true_count = scenes["image"], scenes["count"].numpy()
    gen = tf.random.Generator.from_seed(seed * 1_000_003 + step + 11)
    counts, probs, nlls, ledgers, wheres = [], [], [], [], []
    for lo in range(0, int(images.shape[0]), batch):
        x = images[lo:lo + batch]
        noise = model.sample_noise(int(x.shape[0]), gen)
        out = model(x, noise, step=step, training=False)
        counts.append(out["count"].numpy())
        probs.append(out["z_pres_prob"].numpy())
        wheres.append({k: out[k].numpy() for k in ("scale", "shift", "present")})
        nlls.append(objectives.bernoulli_nll(x, out["recon"]).numpy())
        if ledger and model.kind == "air":
            led = glimpse_ledger(model, x, noise, step)
            prior = led["prior_logit"] if ledger_prior_logit is None else ledger_prior_logit
            ledgers.append(count_elbo_ledger(x.numpy(), led["rendered"], led["kl_glimpse"], prior))
    count = np.concatenate(counts)
    report = count_report(count, np.concatenate(probs), true_count)
    where = {k: np.concatenate([w[k] for w in wheres]) for k in wheres[0]}
    boxes = boxes_by_step(where["scale"], where["shift"], where["present"], images.numpy(),
                          true_count, spec.canvas_px)
    result = {"step": step, "report": report, "boxes": boxes,
              "markdown": f"Step {step}, {count.size} test scenes.\n\n" + format_report(report)
              + "\n" + format_boxes(boxes)}
    if ledgers:
        led = {k: np.concatenate([l[k] for l in ledgers]) for k in ledgers[0]}
        nll = np.concatenate(nlls)
        result["ledger_check"] = float(np.abs(led["nll"][np.arange(count.size), count] - nll).max())
        result["ledger_summary"] = ledger_summary(led, count, true_count)
        priced = ("the run's prior at this step" if ledger_prior_logit is None
                  else f"prior log-odds {ledger_prior_logit:g}")
        result["markdown"] += (f"\nLedger, presence priced at {priced}.\n\n"
                               + format_ledger_summary(result["ledger_summary"]))
    return result


def to_json(value):
    """A diagnosis (nested dicts, lists, numpy) as plain JSON values; NaN and inf as None."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_json(value.tolist())
    if isinstance(value, (np.floating, float)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value
