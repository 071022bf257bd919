"""Typed configs: YAML → dataclasses with one-line errors (`schema`), the sections both stages share."""
