"""Evaluation pieces both stages share: cross-rank gathering and the top-k counter."""
