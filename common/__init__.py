"""What both stages share, in wings; each imports only from the wings listed before it (docs/ARCHITECTURE.md):

    config/      typed YAML configs: the loader (schema), the shared sections, the DeepSpeed JSON check
    vision/      the ONE image trunk (timm Eva by registered name), attention backends, trunk weight loading
    data/        shard lists, the webdataset streams, transforms, prompt templates
    evaluation/  cross-rank gathering and the shared top-k counter
    artifacts    the run folder: every file a run writes, declared once with a typed writer and reader
    export/      artifacts → an open_clip folder (+ model card; --relocate) / a timm checkpoint
    train/       the engine (accelerate, DeepSpeed), run context, checkpoints, optimizer, metrics, the CLI
    datasets/    offline tools that write shards (scripts only; the library never imports them)
"""
