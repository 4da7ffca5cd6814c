"""Training the [SEG] model: config, trainer (one process or torchrun), checkpoints."""
