"""The training loop both stages run (on accelerate): engine, run context, checkpoints, optimizer, metrics, CLI."""
