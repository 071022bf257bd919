"""Weights files: the formats the stages write (`formats`), loading files from elsewhere without running
them (`safe_load`), and fitting a state dict to a model strictly (`fit`)."""
