"""Training and eval data: shard lists, deterministic webdataset streams, transforms, prompt templates."""
