"""What both stages share, in wings; each imports only from the wings listed before it (docs/ARCHITECTURE.md):

    errors        what can stop a run, by who acts (the CLI's exit statuses)
    stop_signals  the signals that stop a run, and the loader-worker shield
    run_context   the facts of one process of a run (rank, device, the batch figures)
    config/       typed YAML configs: the loader (schema), the shared sections, the DeepSpeed JSON check
    artifacts     the run folder's map: every file a run writes, named once, with typed readers
    weights/      weights files: the stages' formats, safe loading of files from elsewhere, strict fitting
    vision/       the ONE image trunk (timm Eva by registered name), attention backends, trunk weight loading
    data/         shard lists, the webdataset streams, transforms, prompt templates, zero-shot sets
    evaluation/   cross-rank gathering and the shared top-k counter
    export/       a run → an open_clip folder (+ model card; --relocate) / a timm checkpoint
    train/        building and running a run (accelerate, DeepSpeed), checkpoints, telemetry, the CLI
    datasets/     offline tools that write shards (scripts only; the library never imports them)
"""
