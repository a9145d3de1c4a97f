"""Reproduces a Table 1 row: AIR, AIR-pPrior and AIR-ASR trained side by side.

  python tools/reproduce.py --table 1 --rows 13 --minutes 60 --seeds 3
  python tools/reproduce.py --rows 13 --report_only     # table and figures from existing runs

ASR trains for --minutes per seed; the baselines then train for the same number of steps
(one seed each, unless --baseline_seeds). Prints the table and writes docs-ready files.
"""
import json
import os

from absl import app, flags

flags.DEFINE_integer("table", 1, "Paper table (only 1: the number-of-objects runs).")
flags.DEFINE_list("rows", ["13"], "Rows: 13, 14, 24.")
flags.DEFINE_float("minutes", 60.0, "Training budget of each ASR seed, minutes.")
flags.DEFINE_integer("seeds", 3, "ASR seeds.")
flags.DEFINE_integer("baseline_seeds", 1, "Seeds of AIR and AIR-pPrior.")
flags.DEFINE_integer("steps", None, "Train every run for exactly this many steps instead.")
flags.DEFINE_integer("at_step", None, "Compare at this step (default: the largest common one).")
flags.DEFINE_integer("figure_step", None, "Grids from the checkpoints at this step (default: latest).")
flags.DEFINE_string("runs_dir", "runs/reproduce", "Where the runs live.")
flags.DEFINE_string("out_dir", "docs/results", "Where the table and figures go.")
flags.DEFINE_bool("figures", True, "Write learning curves and image grids.")
flags.DEFINE_bool("report_only", False, "Do not train; report on the existing runs.")
flags.DEFINE_multi_string("gin_param", [], "Extra gin bindings for every run, the baselines "
                          "too (a variant: give it its own --runs_dir).")
flags.DEFINE_string("asr_variant", None, "Train and report configs/air_asr_<row>_<variant>.gin "
                    "in place of the ASR config (e.g. 'size'); the baselines are unchanged.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from asr_tf import reproduce

    if FLAGS.table != 1:
        raise app.UsageError("only --table 1 is implemented (Table 2 has no count metric)")
    for row in FLAGS.rows:
        try:
            air, pprior, asr = reproduce.row_configs(row, FLAGS.asr_variant)
        except ValueError as e:
            raise app.UsageError(str(e))
        seeds = {asr: list(range(FLAGS.seeds)), air: list(range(FLAGS.baseline_seeds)),
                 pprior: list(range(FLAGS.baseline_seeds))}
        if not FLAGS.report_only:
            for s in seeds[asr]:
                reproduce.train(asr, reproduce.workdir_for(FLAGS.runs_dir, asr, s), s,
                                max_steps=FLAGS.steps,
                                max_minutes=None if FLAGS.steps else FLAGS.minutes,
                                extra=FLAGS.gin_param)
            steps = FLAGS.steps or reproduce.read_metrics(
                reproduce.workdir_for(FLAGS.runs_dir, asr, 0))[-1]["step"]
            for c in (air, pprior):
                for s in seeds[c]:
                    reproduce.train(c, reproduce.workdir_for(FLAGS.runs_dir, c, s), s,
                                    max_steps=steps, extra=FLAGS.gin_param)
        step, table, runs = reproduce.summarize(FLAGS.runs_dir, [air, pprior, asr], seeds,
                                                FLAGS.at_step)
        os.makedirs(FLAGS.out_dir, exist_ok=True)
        text = (reproduce.markdown_table(table, step) + "\n\n"
                + reproduce.per_seed_table(runs, step))
        print(f"Table 1, row {row}, at step {step} ({reproduce.machine()}):\n{text}")
        suffix = f"_{FLAGS.at_step}" if FLAGS.at_step else ""
        with open(os.path.join(FLAGS.out_dir, f"table1_{row}{suffix}.json"), "w") as f:
            json.dump(dict(step=step, table=table, machine=reproduce.machine()), f, indent=1)
        with open(os.path.join(FLAGS.out_dir, f"table1_{row}{suffix}.md"), "w") as f:
            f.write(text + "\n")
        if not FLAGS.figures:
            continue
        for name, path in reproduce.figures(FLAGS.runs_dir, [air, pprior, asr], seeds,
                                            FLAGS.out_dir, runs, FLAGS.figure_step).items():
            print(name, path)


if __name__ == "__main__":
    app.run(main)
