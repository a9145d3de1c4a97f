"""Lab tooling: benchmarks, the paper's tables, serving under load, count reports, FLOPs.

Nothing that training, evaluation, export or serving runs imports this package."""
