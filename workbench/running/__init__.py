"""Running: the run context and its stages (data, targets, evaluation, attacks), the trainer, devices, seeds and data parallelism."""
