"""Reproduces the paper's Tables 1 and 2: trains the runs of some rows and writes the report.

  python tools/reproduce.py --table 1 --rows 14 24 --steps 20000 --seeds 3   # train + report
  (--rows 14,24 too)
  python tools/reproduce.py --table 2 --report_only                          # tables from disk
  python tools/reproduce.py --table 1 --rows 13 --variants size,asr/faithful:1,asr/size+decay

Runs that reached --steps (in --runs_dir, or archived in --archive_dir, default --out_dir/runs:
a new machine has no runs/) are skipped, runs cut short resume; --parallel runs train at once
with --threads threads each. The report (every table, per-run rows, curves and grids per row,
the small results of every run archived) is rewritten from what is on disk.
"""
import os

from absl import app, flags

flags.DEFINE_multi_integer("table", [1, 2], "Paper tables (1: counts, 2: overlap).")
flags.DEFINE_list("rows", None, "Rows (Table 1: 13, 14, 24; Table 2: mnist_overlap, "
                  "dsprites_overlap). Default: every row of --table.")
flags.DEFINE_integer("steps", 20000, "Training iterations of every run (the budget).")
flags.DEFINE_integer("seeds", 3, "AIR-ASR seeds.")
flags.DEFINE_integer("baseline_seeds", 1, "AIR and AIR-pPrior seeds.")
flags.DEFINE_list("variants", [], "Variants trained and reported beside a row's runs, as "
                  "[model/]overlay[+overlay][:seeds] (overlays: faithful, size, decay, floor20k): "
                  "'size' the size overlay on every run it fits (AIR-ASR of Table 1), "
                  "'asr/faithful:1' AIR-ASR with faithful, one seed.")
flags.DEFINE_integer("variant_seeds", None, "Seeds of the variants (default: --seeds).")
flags.DEFINE_list("train_models", ["air", "pprior", "asr"], "Train only these models' runs "
                  "(air, pprior, asr: the ASR configs and their variants); report every run.")
flags.DEFINE_integer("last", 5, "Each run's number: the mean of its last N evaluations.")
flags.DEFINE_integer("parallel", 2, "Runs trained at once.")
flags.DEFINE_integer("threads", 1, "TensorFlow threads of each run.")
flags.DEFINE_float("max_minutes", None, "Stop every invocation after this much wall time "
                   "(resumable).")
flags.DEFINE_string("runs_dir", "runs/tables", "Where the runs live.")
flags.DEFINE_string("out_dir", "docs/results", "Where tables and figures go.")
flags.DEFINE_string("archive_dir", None, "Where finished runs' small results are read from "
                    "(a run missing from --runs_dir) and archived to; default <out_dir>/runs. "
                    "Keep it the committed archive when --out_dir is a scratch folder, or the "
                    "archived runs are trained again.")
flags.DEFINE_string("results_md", "docs/RESULTS.md", "Markdown file whose marked sections "
                    "(<!-- begin table1 --> ... <!-- end table1 -->) get the tables; '' for none.")
flags.DEFINE_bool("figures", True, "Write learning curves and image grids.")
flags.DEFINE_bool("count_curves", False, "With --figures, also each row's counts over "
                  "training (<row>_counts.png: count fractions per true count, presence per step).")
flags.DEFINE_bool("report_only", False, "Do not train; report on the existing runs.")
flags.DEFINE_multi_string("gin_param", [], "Extra gin bindings for every run trained.")
FLAGS = flags.FLAGS


def main(argv):
    from asr_tf.lab import report, reproduce

    extra_rows = argv[1:]  # `--rows 14 24`: the rows after the first arrive as arguments
    if extra_rows and not FLAGS.rows:
        raise app.UsageError(f"unexpected arguments {extra_rows}")
    rows = (FLAGS.rows or []) + extra_rows or [r for t in FLAGS.table for r in reproduce.TABLES[t]]
    archive_dir = FLAGS.archive_dir or os.path.join(FLAGS.out_dir, "runs")
    print(f"finished runs: {FLAGS.runs_dir}, else the archive {archive_dir}")
    unknown = set(FLAGS.train_models) - set(reproduce.MODEL_PREFIXES)
    if unknown:
        raise app.UsageError(f"--train_models: unknown {sorted(unknown)}")
    try:
        runs = reproduce.plan(FLAGS.runs_dir, rows, FLAGS.seeds, FLAGS.baseline_seeds,
                              FLAGS.variants, FLAGS.variant_seeds, archive_dir=archive_dir)
    except ValueError as err:
        raise app.UsageError(str(err))
    if not FLAGS.report_only:
        chosen = [r for r in runs if reproduce.model_of(r.name) in FLAGS.train_models]
        codes = reproduce.train_runs(chosen, FLAGS.steps, FLAGS.parallel, FLAGS.threads,
                                     FLAGS.max_minutes, FLAGS.gin_param)
        failed = {w: c for w, c in codes.items() if c}
        if failed:
            print(f"runs that failed (see <workdir>.log): {failed}")
    report.write_report(runs, rows, FLAGS.steps, FLAGS.out_dir, FLAGS.results_md or None,
                        FLAGS.figures, FLAGS.last, count_curves=FLAGS.count_curves)
    archived = report.archive(runs, archive_dir)
    print(f"archived {len(archived)} runs' small results under {archive_dir}")


if __name__ == "__main__":
    app.run(main)
