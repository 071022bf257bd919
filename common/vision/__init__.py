"""The ONE image encoder (timm `Eva` by registered name), its attention backends and weight loading."""
