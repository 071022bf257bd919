"""Offline dataset tools: write webdataset shards (Fashion-MNIST, an image folder, a CSV). Used by scripts and
tests only; nothing in the library imports this wing."""
