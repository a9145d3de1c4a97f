"""Reading a comparison with the original (asr_tf/lab/original_compare.py): the difference of two
arrays, the verdict on it, a summary per section and the markdown tables of
tools/compare_original.py."""
import numpy as np

ROUNDING_REL = 1e-4  # normwise relative difference still counted as float32 rounding


def difference(a, b):
    """{max_abs, rel, shape} of two arrays of one shape (rel: max|a-b| / max|a|)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    d = np.abs(a - b)
    finite = np.isfinite(a) & np.isfinite(b)
    nonfinite_mismatch = int(np.sum(np.isfinite(a) != np.isfinite(b)))
    scale = float(np.max(np.abs(a[finite]))) if finite.any() else 0.0
    max_abs = float(np.max(d[finite])) if finite.any() else 0.0
    return {"max_abs": max_abs, "rel": max_abs / scale if scale > 0 else float(max_abs > 0),
            "scale": scale, "nonfinite_mismatch": nonfinite_mismatch, "shape": list(a.shape)}


def verdict(entry, threshold=ROUNDING_REL, amplification=10.0):
    """'rounding' (rel <= threshold), 'amplified' (above it, but at most ``amplification``
    times what the original itself moves when every weight moves one ulp (for a gradient, the
    largest of its moves one and two ulps up and down): rounding that the computation
    amplifies, e.g. the BCE's 1 / (r + 1e-10) at the sampler's residues) or 'different'.
    A finiteness mismatch is always 'different'."""
    if entry["nonfinite_mismatch"]:
        return "different"
    if entry["rel"] <= threshold:
        return "rounding"
    control = entry.get("control_rel")
    if control is not None and entry["rel"] <= amplification * max(control, threshold):
        return "amplified"
    return "different"


SECTIONS = ("train", "test", "loss", "grad", "clipped", "after")


def summarize(report):
    """Per section: how many entries agree to rounding, to amplified rounding, and which differ
    (name, rel, control rel)."""
    out = {}
    for section in SECTIONS:
        rows = {"rounding": 0, "amplified": 0, "different": []}
        for name, entry in report[section].items():
            if not (isinstance(entry, dict) and "rel" in entry):
                continue
            v = verdict(entry)
            if v == "different":
                rows["different"].append((name, entry["rel"], entry.get("control_rel")))
            else:
                rows[v] += 1
        out[section] = rows
    return out


def markdown(report):
    """The report as a markdown table per section (name, max abs, rel, control rel, verdict)."""
    lines = [f"Comparison with the original: {'+'.join(report['configs'])}, {report['kind']}, "
             f"batch {report['batch']}, noise seed {report['seed']}, weights: {report['weights']} "
             f"(step {report['step']}); executed glimpse steps (train) "
             f"{report['train']['steps_executed']}.", ""]
    for section in SECTIONS:
        lines += [f"### {section}", "", "| name | max abs | rel | control rel | verdict |",
                  "|---|---|---|---|---|"]
        for name, e in report[section].items():
            if isinstance(e, dict) and "rel" in e:
                ctl = e.get("control_rel")
                lines.append(f"| {name} | {e['max_abs']:.3g} | {e['rel']:.2e} | "
                             f"{'' if ctl is None else f'{ctl:.2e}'} | {verdict(e)} |")
        lines.append("")
    return "\n".join(lines)
