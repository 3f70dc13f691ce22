"""Typed, validated run configuration: the boundary between Hydra's DictConfig and the run.

Every config group has one dataclass here; `run_config(cfg)` turns a composed DictConfig into a
`RunConfig` or raises `ConfigError` with one line naming the key, the bad value and what is
allowed. Unknown keys are refused: the paper's own script silently dropped a flag it did not
know, and nobody noticed.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from qlora_lab.config_checks import NO_VALUE, ConfigError, at_least, build_dataclass, choice, positive, positive_float
from qlora_lab.config_eval import EvalConfig, LmEvalConfig, MmluConfig, PplConfig  # noqa: F401  (re-exported)
from qlora_lab.catalog import (BNB_SCALES, CLASSIFYING_KINDS, COMPUTE_DTYPES, CUSTOM, DTYPES, KIND_FAMILIES,
                               SCALE_FORMATS, TARGET_GROUPS, codebook_name, crossable, available_backends,
                               target_names)


@dataclass
class Resources:
    """What one job of this model asks the launcher for (scale-out hints)."""

    gpus: int = 0  # accelerators per job
    cpus: int = 2  # CPU cores per job
    mem_gb: int = 8  # host memory per job
    hours: float = 0.1  # wall-clock hours of one default-length run (the job's time limit too)
    gpu_mem_gb: float = 80  # memory of one GPU of the kind the job asks for (plan checks the fit)


@dataclass
class Arch:
    """Shape of a Llama built locally from a config (never downloaded)."""

    vocab_size: int = 2048  # tokenizer vocabulary, trained locally on the corpus
    hidden_size: int = 256
    intermediate_size: int = 704  # a multiple of 32: bitsandbytes' CPU repacking asserts it
    num_layers: int = 4
    num_heads: int = 4
    max_seq_len: int = 1024


@dataclass
class Pretrain:
    """A brief causal-LM pretraining of a built base, so LoRA has something to adapt."""

    steps: int = 300  # optimizer steps on the corpus
    batch_size: int = 8  # sequences per step
    seq_len: int = 256  # tokens per sequence
    learning_rate: float = 3e-3  # AdamW, cosine to 10% after warmup
    seed: int = 0  # init and data order
    checkpoints: list[int] = field(default_factory=list)  # steps (before `steps`) also saved, as model.checkpoint=STEP


@dataclass
class ModelConfig:
    """Which base model, where it comes from, and what a job for it needs."""

    name: str = "tiny"  # the config's own name, as chosen by `model=NAME`
    kind: str = "causal"  # causal (decoder LM) | seq2seq (T5) | classifier (RoBERTa, sequence classification)
    source: str = "build"  # build: made locally from `arch` + `pretrain`; pretrained: `path`
    # hub id or local folder (source=pretrained); given on a built model (`model.path=DIR`), the
    # run loads it instead, its name, kind, family and arch read from its config.json
    path: Optional[str] = None
    family: str = "llama"  # architecture family: which module names LoRA targets mean
    arch: Optional[Arch] = None  # shape: what source=build builds; for pretrained, what plan estimates with
    pretrain: Optional[Pretrain] = None  # source=build only
    checkpoint: Optional[int] = None  # source=build: load this step of the pretraining (one of pretrain.checkpoints)
    resources: Resources = field(default_factory=Resources)

    def validate(self) -> None:
        choice("model.kind", self.kind, sorted(KIND_FAMILIES))
        choice("model.source", self.source, ("build", "pretrained"))
        choice("model.family", self.family, KIND_FAMILIES[self.kind])
        if self.source == "build" and (self.arch is None or self.pretrain is None):
            raise ConfigError("model.arch", self.arch, "source=build needs model.arch and model.pretrain")
        if self.source == "pretrained" and not self.path:
            raise ConfigError("model.path", self.path, "source=pretrained needs a hub id or a local folder")
        if self.arch is not None:
            for key in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "max_seq_len"):
                positive(f"model.arch.{key}", getattr(self.arch, key))
            if self.source == "build" and self.arch.hidden_size % self.arch.num_heads:
                raise ConfigError("model.arch.num_heads", self.arch.num_heads, "must divide model.arch.hidden_size")
        if self.pretrain is not None:
            for key in ("batch_size", "seq_len"):
                positive(f"model.pretrain.{key}", getattr(self.pretrain, key))
            at_least("model.pretrain.steps", self.pretrain.steps, 0)
            positive_float("model.pretrain.learning_rate", self.pretrain.learning_rate)
            for step in self.pretrain.checkpoints:
                if not isinstance(step, int) or not 0 < step < self.pretrain.steps:
                    raise ConfigError("model.pretrain.checkpoints", self.pretrain.checkpoints,
                                      f"steps between 1 and model.pretrain.steps - 1 ({self.pretrain.steps - 1})")
        if self.checkpoint is not None:
            saved = list(self.pretrain.checkpoints) if self.source == "build" and self.pretrain else []
            if self.checkpoint not in saved:
                raise ConfigError("model.checkpoint", self.checkpoint,
                                  f"model={self.name} saves {', '.join(map(str, saved)) or 'no checkpoints'} "
                                  f"(model.pretrain.checkpoints); null loads its last step")


@dataclass
class DatasetConfig:
    """Where the (source, target) pairs come from and how the eval split is made."""

    name: str = "stdlib"  # the config's own name, as chosen by `dataset=NAME`
    format: str = "stdlib"  # row -> (source, target) function, see qlora_lab.data.formats
    hub_id: Optional[str] = None  # datasets.load_dataset id, used when `path` is unset
    hub_config: Optional[str] = None  # the hub dataset's config name (self_instruct's "self_instruct")
    hub_files: Optional[str] = None  # data_files within the hub dataset (OIG's unified_chip2.jsonl)
    task: Optional[str] = None  # GLUE: which task (mnli, sst2, ...); its hub config and field layout
    path: Optional[str] = None  # local JSON / JSONL / CSV / Parquet file in the format's field layout
    # held-out examples, split off by `split_seed` where the data has no split of its own;
    # null: a tenth of the rows, at most 1024 (the paper's) and at least one (qlora_lab.data.load.auto_n_eval)
    n_eval: Optional[int] = None
    split_seed: int = 42  # the paper's seed for its 1024-example eval split
    max_train_samples: Optional[int] = None  # cap after the split (None: all)
    max_eval_samples: Optional[int] = None  # cap after the split (None: all)

    def validate(self) -> None:
        from qlora_lab.data.formats import FORMATS

        choice("dataset.format", self.format, sorted(FORMATS))
        fmt = FORMATS[self.format]
        if fmt.tasks:
            choice("dataset.task", self.task, fmt.tasks)
        elif self.task is not None:
            raise ConfigError("dataset.task", self.task, f"only dataset=glue has tasks; leave it null for {self.name}")
        if self.path is None and self.hub_id is None and fmt.rows is None:
            raise ConfigError("dataset.path", None, f"dataset={self.name} needs dataset.path=FILE or a hub_id")
        if self.path is not None:
            if not Path(self.path).is_file():
                raise ConfigError("dataset.path", self.path, "no such file")
            if Path(self.path).suffix not in (".json", ".jsonl", ".csv", ".parquet"):
                raise ConfigError("dataset.path", self.path, "expected a .json, .jsonl, .csv or .parquet file")
        for key in ("n_eval", "max_train_samples", "max_eval_samples"):
            if getattr(self, key) is not None:
                positive(f"dataset.{key}", getattr(self, key))


@dataclass
class DTypeConfig:
    """How the frozen base weights are stored: the data type and its quantization settings."""

    name: str = "nf4"  # data type: see qlora_lab.catalog.DTYPES
    backend: str = "bnb"  # bnb (bitsandbytes via transformers), lab (qlora_kernels), none
    # how each block's scale is stored: qlora_kernels.scale_specs (fp32, dq8, e8m0, e8m0_rceil, e4m3, fp16,
    # q4_k, hqq); null: the data type's own (dq8 for the paper's, e4m3 for nvfp4, ...), or as double_quant says
    scale: Optional[str] = None
    double_quant: Optional[bool] = None  # the paper's DQ, i.e. scale dq8 (true) or fp32 (false); null: follows scale
    blocksize: Optional[int] = 64  # weights per block
    compute_dtype: str = "auto"  # matmuls and unquantized weights; auto: bf16 where native, else fp32
    codebook: Optional[dict] = None  # backend lab: a codebook spec of your own ({kind: normal_float, bits: 3})
    # where the storage came from when the base was released quantized (`gguf q4_k`): set from
    # model.path=FILE.gguf, never by hand; null: quantized here from 16-bit weights
    released: Optional[str] = None

    @property
    def storage_scale(self) -> str | None:
        """The scale format the weights are stored with, whether or not validate() has filled the
        keys in: `scale`, else what `double_quant` says, else the data type's own (None: unquantized)."""
        spec = CUSTOM if self.codebook is not None else DTYPES.get(self.name)
        if spec is None or not spec.blockwise:
            return None
        if self.scale is not None:
            return self.scale
        return spec.scale if self.double_quant is None else ("dq8" if self.double_quant else "fp32")

    def resolve_scale(self) -> None:
        """Fill in whichever of `scale` and `double_quant` was left null from the other (or the data
        type's default), so that a record names both (validate() does, after the schema's defaults
        are composed: the schema itself keeps both null)."""
        spec = CUSTOM if self.codebook is not None else DTYPES.get(self.name)
        if spec is None or not spec.blockwise:
            return
        if self.scale is None:
            self.scale = spec.scale if self.double_quant is None else ("dq8" if self.double_quant else "fp32")
        if self.double_quant is None and isinstance(self.scale, str):
            self.double_quant = self.scale == "dq8"

    def validate(self) -> None:
        if self.codebook is not None:
            self._validate_codebook()
            spec = CUSTOM
        else:
            choice("dtype", self.name, sorted(DTYPES))
            spec = DTYPES[self.name]
        self.resolve_scale()
        choice("dtype.backend", self.backend, spec.backends)
        ready = available_backends()
        if self.backend not in ready:
            runnable = [name for name, s in DTYPES.items() if set(s.backends) & set(ready)]
            raise ConfigError("dtype" if self.backend == spec.backends[0] else "dtype.backend",
                              self.name if self.backend == spec.backends[0] else self.backend,
                              f"needs backend '{self.backend}' (qlora_kernels), which this installation "
                              f"does not have; runnable now: {', '.join(runnable)}")
        choice("dtype.compute_dtype", self.compute_dtype, COMPUTE_DTYPES)
        if not spec.blockwise:
            for key in ("scale", "double_quant", "blocksize"):
                if getattr(self, key) is not None:
                    raise ConfigError(f"dtype.{key}", getattr(self, key),
                                      f"has no effect with dtype={self.name}; leave it null")
            return
        if not isinstance(self.double_quant, bool):
            raise ConfigError("dtype.double_quant", self.double_quant, "expected true or false")
        choice("dtype.scale", self.scale, list(SCALE_FORMATS))
        if self.double_quant != (self.scale == "dq8"):
            raise ConfigError("dtype.double_quant", self.double_quant,
                              f"double quantization is scale format dq8, and dtype.scale is {self.scale}; "
                              f"set one of them, or leave double_quant null")
        if self.backend == "bnb" and self.scale not in BNB_SCALES:
            raise ConfigError("dtype.scale", self.scale, f"backend bnb (bitsandbytes) stores {' or '.join(BNB_SCALES)} "
                                                         f"only; dtype.backend=lab runs every scale format")
        allowed_blocks = spec.blocksizes.get(self.backend)
        if allowed_blocks is not None and self.blocksize not in allowed_blocks:
            raise ConfigError("dtype.blocksize", self.blocksize,
                              f"backend {self.backend} supports {', '.join(map(str, allowed_blocks))}")
        if self.backend == "lab":
            book = self.name if self.codebook is not None else codebook_name(self.name)
            signed = _custom_signed(self.codebook) if self.codebook is not None else spec.signed
            centred = bool(self.codebook.get("affine")) if self.codebook is not None else spec.centred
            refused = crossable(self.scale, book, signed, self.blocksize, centred)
            if refused:
                raise ConfigError("dtype.scale", self.scale, refused)

    def _validate_codebook(self) -> None:
        if self.backend != "lab":
            raise ConfigError("dtype.backend", self.backend, "a dtype.codebook needs backend lab")
        try:
            from qlora_kernels import codebook_from_spec

            codebook_from_spec(self.name, self.codebook)
        except (ValueError, TypeError) as err:
            raise ConfigError("dtype.codebook", self.codebook, str(err).splitlines()[0]) from None


def _custom_signed(spec: dict) -> bool:
    """Whether a codebook spec of the user's own has values of both signs (only a table can lack them)."""
    if spec.get("kind") != "table":
        return True
    values = [float(v) for v in spec.get("values", [])]
    return bool(values) and min(values) < 0 < max(values)


LORA_INITS = ("gaussian", "loftq", "pissa")  # lora.init


@dataclass
class LoraConfig:
    """The LoRA adapters: rank, scale, dropout and which linear layers get one."""

    r: int = 64  # adapter rank (the paper: 64)
    alpha: float = 16.0  # scale numerator: the update is scaled by alpha / r
    dropout: float = 0.1  # on the adapter input (the paper: 0.1 up to 13B, 0.05 above)
    targets: Union[str, list] = "all"  # all | qv | attn | mlp | an explicit list of module names
    enabled: bool = True  # false: full fine-tuning of every weight (the 16-bit baseline; dtype bf16 or fp32)
    # where the adapter starts (qlora_lab/model/adapter_init.py): gaussian (peft's default: A random,
    # B zero), loftq (quantized base + adapter fitted to the 16-bit weights, with the run's own data
    # type), pissa (the adapter takes the principal singular directions, the base the residual)
    init: str = "gaussian"
    loftq_iter: int = 1  # LoftQ's alternations of quantize and SVD (1: the adapter fits Q(W)'s error)
    pissa_niter: int = 0  # PiSSA's SVD: 0 exact, N > 0 peft's fast randomized SVD with N subspace iterations
    dora: bool = False  # DoRA (peft's use_dora): a trained magnitude per output, LoRA on the direction
    rslora: bool = False  # rsLoRA (peft's use_rslora): scale by alpha / sqrt(r), not alpha / r

    def validate(self, family: str) -> None:
        positive("lora.r", self.r)
        positive_float("lora.alpha", self.alpha)
        choice("lora.init", self.init, LORA_INITS)
        positive("lora.loftq_iter", self.loftq_iter)
        at_least("lora.pissa_niter", self.pissa_niter, 0)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("lora.dropout", self.dropout, "expected a number in [0, 1)")
        if isinstance(self.targets, str):
            choice("lora.targets", self.targets, sorted(TARGET_GROUPS[family]) + ["all"])
            return
        known = target_names(family, "all")
        if not self.targets:
            raise ConfigError("lora.targets", self.targets, "expected a group name or a non-empty list")
        for name in self.targets:
            if name not in known:
                raise ConfigError("lora.targets", name, f"family {family} has {', '.join(known)}")


@dataclass
class TrainConfig:
    """The optimization: the paper's recipe, with step counts scaled to the model at hand."""

    max_steps: int = 30  # optimizer steps; 0 = eval-only run (post-training quantization)
    batch_size: int = 4  # sequences per device per micro-batch
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    learning_rate: float = 2e-4  # the paper's lr up to 13B
    lr_scheduler: str = "constant"  # constant (with warmup when warmup_ratio > 0), linear, cosine
    warmup_ratio: float = 0.03  # fraction of max_steps spent warming up
    max_grad_norm: float = 0.3  # the paper's clipping
    weight_decay: float = 0.0
    optimizer: str = "paged_adamw_32bit"  # bitsandbytes' paged optimizer, or adamw_torch
    gradient_checkpointing: bool = True  # recompute activations in backward (the paper: on)
    group_by_length: bool = False  # batch similar lengths together (the paper: on)
    source_max_len: int = 256  # source tokens kept (bos included; the rest cut off)
    target_max_len: int = 256  # target tokens kept (eos included; the rest cut off)
    train_on_source: bool = False  # also train on the source tokens (the paper: off)
    save_steps: int = 250  # checkpoint every N steps into the run folder (0: never)
    seed: int = 0  # init of the adapters, dropout and data order
    report_to: str = "wandb"  # wandb (offline unless WANDB_MODE says otherwise) | none
    # CPU only: torch's profiler over the first steps gives memory.peak_tensor_mb (it costs throughput
    # and memory while it runs, so it is opt-in; on a GPU CUDA's peak statistic is free and always read)
    cpu_tensor_peak: bool = False
    # a cluster rehearsal: compose and validate the config, check the GPUs, CPUs and memory the job
    # got against model.resources, write an ok record (rehearsal: true) and load no model
    rehearsal: bool = False

    def validate(self) -> None:
        at_least("train.max_steps", self.max_steps, 0)
        at_least("train.save_steps", self.save_steps, 0)
        for key in ("batch_size", "grad_accum_steps", "source_max_len", "target_max_len"):
            positive(f"train.{key}", getattr(self, key))
        positive_float("train.learning_rate", self.learning_rate)
        positive_float("train.max_grad_norm", self.max_grad_norm)
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError("train.warmup_ratio", self.warmup_ratio, "expected a number in [0, 1)")
        if self.weight_decay < 0:
            raise ConfigError("train.weight_decay", self.weight_decay, "expected a number >= 0")
        choice("train.lr_scheduler", self.lr_scheduler, ("constant", "linear", "cosine"))
        choice("train.optimizer", self.optimizer,
                ("paged_adamw_32bit", "paged_adamw_8bit", "adamw_torch", "adamw_bnb_8bit"))
        choice("train.report_to", self.report_to, ("wandb", "none"))


@dataclass
class RunConfig:
    """One run: a choice from every group. Its dict form is what `run_id` hashes."""

    model: ModelConfig
    dataset: DatasetConfig
    dtype: DTypeConfig
    lora: LoraConfig
    train: TrainConfig
    eval: EvalConfig

    def validate(self) -> None:
        self.model.validate()
        self.dataset.validate()
        self.dtype.validate()
        self.lora.validate(self.model.family)
        self.train.validate()
        self.eval.validate()
        self._validate_across_groups()

    def _validate_across_groups(self) -> None:
        """Choices that are each valid but do not go together, refused before any model loads."""
        kind = self.model.kind
        from qlora_lab.data.formats import FORMATS

        classifies = kind in CLASSIFYING_KINDS
        if FORMATS[self.dataset.format].classification != classifies:
            raise ConfigError("dataset", self.dataset.name,
                              "a classifier model needs a classification dataset (dataset=glue)" if classifies
                              else f"dataset={self.dataset.name} is a classification dataset; it needs "
                                   f"model.kind=classifier (model={self.model.name} is {kind})")
        if not self.lora.enabled and self.dtype.backend != "none":
            raise ConfigError("lora.enabled", False, f"full fine-tuning needs an unquantized base (dtype=bf16 or "
                                                     f"fp32), not dtype={self.dtype.name}")
        self._validate_adapter_init()
        causal_only = {"eval.mmlu.path": self.eval.mmlu.path, "eval.ppl.path": self.eval.ppl.path,
                       "eval.ppl.hub_id": self.eval.ppl.hub_id,
                       "eval.lm_eval.tasks": ",".join(self.eval.lm_eval.tasks) or None}
        for key, value in causal_only.items():
            if value is not None and kind != "causal":
                raise ConfigError(key, value, f"needs model.kind=causal (model={self.model.name} is {kind})")

    def _validate_adapter_init(self) -> None:
        """An init that reads the 16-bit weights, or fits a quantization error, where there is none."""
        init = self.lora.init
        if init == "gaussian":
            return
        if not self.lora.enabled:
            raise ConfigError("lora.init", init, "initializes LoRA adapters; lora.enabled=false trains every weight")
        if init == "loftq" and not DTYPES.get(self.dtype.name, CUSTOM).blockwise:
            raise ConfigError("lora.init", init, f"fits the error of a blockwise k-bit data type (nf4, fp4, int4, "
                                                 f"nf3, ...); dtype={self.dtype.name} has none to fit")
        from qlora_lab.checkpoint_config import quantized_checkpoint

        stored = quantized_checkpoint(self.model.path) if self.model.source == "pretrained" else None
        if stored:
            raise ConfigError("lora.init", init, f"needs the 16-bit weights; model.path={self.model.path} holds a "
                                                 f"{stored}-quantized checkpoint (use lora.init=gaussian)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SCHEMA_GROUP = "schema"  # a group's YAML starts from `/schema/<group>@_here_`: the dataclass's defaults


def register_schemas() -> None:
    """Each group's dataclass defaults as a Hydra config (`/schema/<group>`), so the group's YAML
    files hold only what differs from them: one source of truth for every default."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, cls in GROUPS.items():
        store.store(group=SCHEMA_GROUP, name=name, node=dataclasses.asdict(cls()))


GROUPS: dict[str, type] = typing.get_type_hints(RunConfig)  # group name -> its dataclass


def resolve_own_model(model: ModelConfig) -> ModelConfig:
    """The researcher's own checkpoint (`model.path`): name, kind, family and arch read from its
    config.json, loaded as `source=pretrained`."""
    from qlora_lab.checkpoint_config import own_model_fields

    fields = own_model_fields(model.path)
    return dataclasses.replace(model, **{**fields, "arch": Arch(**fields["arch"])}, source="pretrained", pretrain=None)


def released_storage(model: ModelConfig, dtype: DTypeConfig) -> DTypeConfig:
    """A base released quantized (model.path=FILE.gguf, or the folder of an NVFP4 release) is
    stored as released: the dtype group becomes the release's data type, `released` saying where
    it came from. The default dtype (nf4) gives way to it; another data type would mean a second
    quantization, refused in one line."""
    from qlora_lab.checkpoint_config import released_summary

    summary = released_summary(model.path) if model.source == "pretrained" else None
    if dtype.released is not None and summary is None:
        raise ConfigError("dtype.released", dtype.released, "is set from model.path (a GGUF file or an NVFP4 "
                                                            "release's folder); leave it null")
    if summary is None:
        return dtype
    if dtype.name not in ("nf4", summary.storage) or dtype.codebook is not None:
        raise ConfigError("dtype", dtype.name, f"model.path={Path(model.path).name} is released as {summary.released} "
                                               f"and loads as stored; leave dtype unset (or dtype={summary.storage})")
    own = DTYPES[summary.storage]
    return dataclasses.replace(dtype, name=summary.storage, backend="lab", scale=own.scale, double_quant=False,
                               blocksize=summary.blocksize, released=summary.released)


def run_config(cfg: Any) -> RunConfig:
    """DictConfig (or plain dict) -> validated RunConfig; the `hydra` node is not the run's."""
    from omegaconf import DictConfig, OmegaConf

    tree = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    tree.pop("hydra", None)
    hints = typing.get_type_hints(RunConfig)
    unknown = sorted(set(tree) - set(hints))
    if unknown:
        raise ConfigError(unknown[0], NO_VALUE, f"unknown top-level key; expected one of {', '.join(hints)}")
    groups = {}
    for name, cls in hints.items():
        if name not in tree:
            raise ConfigError(name, NO_VALUE, f"no {name} group chosen")
        groups[name] = build_dataclass(cls, tree[name], name)
    if groups["model"].source == "build" and groups["model"].path:  # `model.path=DIR_OR_HUB_ID` on a built base
        groups["model"] = resolve_own_model(groups["model"])
    groups["dtype"] = released_storage(groups["model"], groups["dtype"])
    config = RunConfig(**groups)
    config.validate()
    return config
