"""The run layer: a run's folder, its configs, the training loop, its evaluation."""
