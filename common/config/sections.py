"""Config sections both stages share: training loop, optimizer, data and augmentation. Stage schemas
compose them. Choices are `Literal` types declared here once; the loader checks them at load time."""
from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from typing import Literal, Optional, Union, get_args

from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from common.errors import ConfigError

Precision = Literal["fp32", "bf16", "fp16"]
CompileMode = Literal["none", "model", "blocks"]  # train.compile: common.train.compile
# common.data.templates.TEMPLATE_SETS: open_clip's ImageNet lists ("openai" = "openai_imagenet", the 80
# CLIP prompts; "simple" = "simple_imagenet", its 7-prompt subset) and one plain prompt ("short")
TemplateSetName = Literal["openai", "openai_imagenet", "simple", "simple_imagenet", "short"]
Interpolation = Literal["bicubic", "bilinear"]  # what open_clip's PreprocessCfg accepts
ResizeMode = Literal["shortest", "longest", "squash"]
CheckpointErrors = Literal["stop", "warn"]  # a checkpoint that cannot be written: stop the run, or go on


WandbMode = Literal["disabled", "online", "offline"]
SpikeAction = Literal["none", "warn", "rollback"]


@dataclass
class WandbConfig:
    """Config section `train.wandb`: the same scalars as metrics.jsonl, and the run's config, in Weights &
    Biases (`pip install 'evaclip[wandb]'`). `offline` writes under RUN/wandb/ without a network (`wandb sync`
    uploads it later); a resumed run continues the same wandb run."""
    mode: WandbMode = "disabled"
    project: str = ""
    name: str = ""  # "": the run folder's name

    def validate_run(self, run: object) -> None:
        """The wandb package on this machine (an optional extra)."""
        if self.mode != "disabled" and importlib.util.find_spec("wandb") is None:
            raise ConfigError(f"train.wandb.mode={self.mode} needs the wandb package — pip install "
                              "'evaclip[wandb]', or set train.wandb.mode=disabled")

    def validate(self) -> None:
        if self.mode != "disabled" and not self.project:
            raise ConfigError(f"train.wandb.mode={self.mode} needs train.wandb.project — name the wandb project, "
                              "or set train.wandb.mode=disabled")


@dataclass
class SpikeConfig:
    """Config section `train.spike`: a loss spike is a step whose loss exceeds `factor` × the median loss of
    the `window` applied steps before it (judged where the engine reads its losses: log steps and before a
    checkpoint; a run shorter than the window is never judged). `warn` logs it; `rollback` reloads the
    newest checkpoint and re-seeds the data stream past the steps that led to the spike (at most
    `train.max_rollbacks` times). For losses ≥ 0 (contrastive, cosine): a median ≤ 0 is not judged."""
    action: SpikeAction = "warn"
    window: int = field(default=20, metadata={"min": 2})
    factor: float = 3.0

    def validate(self) -> None:
        if not 1.0 < self.factor < float("inf"):
            raise ConfigError(f"train.spike.factor={self.factor} can never fire or fires on ordinary steps — use "
                              "a finite factor > 1 (e.g. 3: a loss three times the recent median)")


@dataclass
class TrainConfig:
    """The engine's loop. `batch_size` is per process and per forward (the micro-batch). Two accumulations:
    `contrastive_accum` K scores K micro-batches as ONE contrastive batch (K × batch_size × processes
    pairs: more negatives, the memory of one micro-batch; a task that supports it, stage 2), and
    `grad_accum` G sums the gradients of G such batches, each scored on its own (more samples per
    optimizer step, NOT more negatives). Samples per optimizer step: batch_size × K × G × processes."""
    output_dir: str = "runs/default"
    steps: int = field(default=100, metadata={"min": 1})
    batch_size: int = field(default=64, metadata={"min": 1})
    contrastive_accum: int = field(default=1, metadata={"min": 1})
    grad_accum: int = field(default=1, metadata={"min": 1})
    precision: Precision = "fp32"
    compile: CompileMode = "none"  # torch.compile: none | model (whole model) | blocks (each repeated block)
    compile_backend: str = "inductor"  # torch.compile's backend (aot_eager: no code generation, for debugging)
    seed: int = 0
    log_every: int = field(default=10, metadata={"min": 1})
    eval_every: int = field(default=0, metadata={"min": 0})  # 0: evaluate only at the end
    save_every: int = field(default=0, metadata={"min": 0})  # 0: save only at the end
    keep_last: int = field(default=2, metadata={"min": 1})
    remote_dir: str = ""  # fsspec URL: each complete checkpoint + metrics synced there; --resume auto restores
    grad_clip: float = field(default=1.0, metadata={"min": 0.0})  # 0: off
    deepspeed: str = ""  # a JSON in configs/deepspeed/, e.g. configs/deepspeed/zero2.json
    max_bad_steps: int = field(default=5, metadata={"min": 1})  # consecutive non-finite steps before stopping
    num_threads: int = field(default=0, metadata={"min": 0})  # torch intra-op threads; 0: torch's default
    checkpoint_errors: CheckpointErrors = "stop"  # a failed checkpoint write (full disk…): stop, or warn and go on
    dist_timeout_s: float = field(default=1800.0, metadata={"min": 1.0})  # a collective waits this long for a rank
    progress: bool = True  # tqdm progress bar on the main process
    tensorboard: bool = True
    wandb: WandbConfig = field(default_factory=WandbConfig)
    telemetry: bool = True  # samples/s, data wait vs compute and MFU in every loss record
    peak_tflops: Optional[float] = None  # the device's peak for MFU; None: a known GPU's data sheet (CPU: none)
    data_wait_warn: float = field(default=0.2, metadata={"min": 0.0, "max": 1.0})  # warn once above this share; 0: never
    spike: SpikeConfig = field(default_factory=SpikeConfig)
    max_rollbacks: int = field(default=3, metadata={"min": 0})  # spike rollbacks before the run stops

    def validate(self) -> None:
        if self.peak_tflops is not None and not self.peak_tflops > 0:
            raise ConfigError(f"train.peak_tflops={self.peak_tflops} must be > 0 — the device's peak in TFLOP/s, "
                              "or null to take a known GPU's from its data sheet")
        if self.spike.action == "rollback" and self.spike.window >= self.steps:
            raise ConfigError(f"train.spike.window={self.spike.window} is not below train.steps={self.steps}: the "
                              "rollback rule can never fire — lower the window, or set train.spike.action=none")
        if self.spike.action == "rollback" and not self.save_every:
            raise ConfigError("train.spike.action=rollback reloads a checkpoint, but train.save_every=0 saves "
                              "none before the end — set train.save_every (e.g. 1000)")

    def validate_run(self, run: object) -> None:
        """The files and packages this section names: the DeepSpeed JSON, the remote file system."""
        if self.remote_dir:
            check_remote_url(self.remote_dir)
        if self.deepspeed:
            from common.config.deepspeed_json import read_deepspeed_json
            read_deepspeed_json(self.deepspeed)  # exists, parses, names a ZeRO stage that exists


def check_remote_url(url: str) -> None:
    """`train.remote_dir`: a one-line `ConfigError` for a URL whose file system fsspec does not know or
    cannot load (common/train/checkpoint/remote.py syncs to it)."""
    import fsspec
    protocol = fsspec.utils.get_protocol(url)
    try:
        fsspec.get_filesystem_class(protocol)
    except (ValueError, ImportError) as err:
        raise ConfigError(f"train.remote_dir='{url}': no fsspec file system for '{protocol}://' "
                          f"({str(err).splitlines()[0][:120]}) — install its package or use another URL") from None


@dataclass
class OptimConfig:
    """AdamW or LAMB with linear warmup then cosine decay to `min_lr_ratio × lr`."""
    name: Literal["adamw", "lamb"] = "adamw"
    lr: float = field(default=1e-3, metadata={"min": 0.0})
    weight_decay: float = field(default=0.1, metadata={"min": 0.0})
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = field(default=1e-6, metadata={"min": 0.0})
    warmup_steps: int = field(default=10, metadata={"min": 0})
    min_lr_ratio: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})
    layer_decay: float = field(default=1.0, metadata={"min": 0.0, "max": 1.0})  # 1.0: off


@dataclass
class AugmentConfig:
    """Config section `data.augment`: the train crop/flip and the normalisation both transforms use."""
    scale: tuple[float, float] = (0.5, 1.0)  # RandomResizedCrop area range
    hflip: bool = False
    mean: tuple[float, float, float] = OPENAI_DATASET_MEAN
    std: tuple[float, float, float] = OPENAI_DATASET_STD
    interpolation: Interpolation = "bicubic"
    resize_mode: ResizeMode = "shortest"  # eval resize: shortest side + center crop (open_clip's default)

    def validate(self) -> None:
        if not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise ConfigError(f"data.augment.scale={list(self.scale)} must satisfy 0 < min <= max <= 1")
        if min(self.std) <= 0:
            raise ConfigError(f"data.augment.std={list(self.std)} must be > 0 in every channel")


def check_templates_spec(value: str, key: str) -> None:
    """A template set name (`TemplateSetName`) or something that names a file (has '/' or ends in .txt);
    whether the file exists is checked with the run (`common.data.run_data.check_run_data`)."""
    names = get_args(TemplateSetName)
    if value and value not in names and "/" not in value and not value.endswith(".txt"):
        raise ConfigError(f"{key}={value!r} is neither a template set nor a file — use one of "
                          f"{', '.join(names)}, or a path to a text file (one template a line, with {{c}})")


@dataclass
class ShardSource:
    """One item of a `data.train_shards` list: shards (a folder, brace pattern, glob or comma list) drawn
    with probability weight / Σ weights; `name` labels its draw count in the logs ("": its list index)."""
    shards: str
    weight: float = 1.0
    name: str = ""


@dataclass
class DataConfig:
    """Webdataset shards as written by scripts/make_shards.py or img2dataset (a folder, brace pattern or
    comma list), or for training a list of `{shards, weight, name}` sources mixed by weight."""
    train_shards: Union[str, list[ShardSource]] = "data/fashion-mnist/train"
    eval_shards: str = "data/fashion-mnist/test"
    num_workers: int = field(default=1, metadata={"min": 0})
    shuffle_buffer: int = field(default=2000, metadata={"min": 0})
    image_size: int = field(default=56, metadata={"min": 8})
    templates: TemplateSetName = "simple"  # prompt-template set: captions from labels and zero-shot classifiers
    eval_batch_size: int = field(default=256, metadata={"min": 1})
    eval_max_samples: int = field(default=0, metadata={"min": 0})  # periodic evals: first N of the split; 0: all
    final_eval_max_samples: int = field(default=0, metadata={"min": 0})  # the end-of-run eval; 0: all
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def eval_limit(self, final: bool) -> int:
        """How many eval samples (the first N in the split's fixed order) an eval uses; 0: all."""
        return self.final_eval_max_samples if final else self.eval_max_samples

    def train_sources(self) -> list[ShardSource]:
        """`train_shards` as a list of named sources (a plain spec: one source named "0" of weight 1)."""
        items = [ShardSource(self.train_shards)] if isinstance(self.train_shards, str) else self.train_shards
        return [ShardSource(s.shards, s.weight, s.name or str(i)) for i, s in enumerate(items)]

    def validate(self) -> None:
        if isinstance(self.train_shards, list):
            if not self.train_shards:
                raise ConfigError("data.train_shards=[] names no source — give a shard spec or a list of "
                                  "{shards, weight} items")
            for i, source in enumerate(self.train_shards):
                if not source.weight > 0:
                    raise ConfigError(f"data.train_shards[{i}].weight={source.weight} must be > 0 — give every "
                                      "source a positive weight, or remove the source")
        names = [s.name for s in self.train_sources()]
        if len(set(names)) < len(names):
            raise ConfigError(f"data.train_shards: source names {names} repeat — give each source its own name")


SET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class ZeroShotSetConfig:
    """One item of `eval.zeroshot`: a labelled eval set (samples with an image and a `cls` label), its
    class names and prompt templates. Its metrics are logged under its `name`."""
    name: str
    shards: str  # a folder, brace pattern, glob or comma list (e.g. ROOT/test of a make_shards set)
    classnames: str = ""  # text file, one name a line (line i = label i); "": classnames.txt beside the shards
    templates: str = ""  # a TemplateSetName or a file (one template a line, {c} for the class name); "": the
    #                      set's zeroshot_classification_templates.txt, else data.templates


@dataclass
class EvalConfig:
    """Evaluations beyond the held-out split of `data.eval_shards`: zero-shot sets, each run periodically
    (first `data.eval_max_samples`) and at the end (`data.final_eval_max_samples`)."""
    zeroshot: list[ZeroShotSetConfig] = field(default_factory=list)

    def validate(self) -> None:
        seen: set[str] = set()
        for i, item in enumerate(self.zeroshot):
            key = f"eval.zeroshot[{i}]"
            if not SET_NAME.match(item.name) or item.name in ("loss", "n"):
                raise ConfigError(f"{key}.name={item.name!r} must be letters, digits, '_', '.' or '-' (and not "
                                  "'loss' or 'n') — it names the set's metrics")
            if item.name in seen:
                raise ConfigError(f"{key}.name={item.name!r} is used twice — give every zero-shot set its own name")
            seen.add(item.name)
            if not item.shards:
                raise ConfigError(f"{key}.shards is empty — point it at the set's labelled shards")
            check_templates_spec(item.templates, f"{key}.templates")
