"""The config schema: every key of the pipeline declared once, with its type, default and meaning.

Registered in Hydra's ConfigStore as `schema` (conf/config.yaml lists it first), so a YAML file in
conf/ holds only what differs from these defaults, and an unknown key or a value of the wrong type
fails when the config is composed, before any work starts.
Show the composed config: python -m pipeline.run --cfg job

Fixed choices are Enums of pipeline/config/choices.py (a typo fails at composition); choices
from a registry (noise.kind, judge.kind, generate.engine) are str, checked in the stages' check.
A kind's own settings are declared by the kind, next to its code (pipeline/registry.py), not
here: the schema holds only what every kind has, and a `settings` node that the kind types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from pipeline.config.choices import (
    Definition,
    Dtype,
    LoggerMode,
    ModelSource,
    NoiseLength,
    TaskSet,
    Verify,
    plain,
)
from pipeline.config.finetune import FinetuneConfig
from pipeline.store.key_rules import without_empty_arch


@dataclass
class TinyArch:
    """A random Llama built offline (model.source=tiny)."""

    vocab_size: int = 512  # tokenizer vocabulary (BPE merges learned from pipeline/assets)
    hidden_size: int = 32  # embedding width d
    intermediate_size: int = 64  # MLP width
    num_layers: int = 2  # decoder layers
    num_heads: int = 4  # attention heads
    max_position_embeddings: int = 1024  # longest sequence in tokens
    seed: int = 0  # torch seed of the random init


@dataclass
class ModelConfig:
    name: str = MISSING  # readable name in stage keys and tables
    source: ModelSource = ModelSource.hub  # hub | local | gguf_package | tiny
    id: Optional[str] = None  # hub id, local dir, or <python package>/<file.gguf>
    revision: Optional[str] = None  # hub revision; null = main
    dtype: Dtype = Dtype.auto  # auto: bf16 where native (CUDA, AMX/AVX512-BF16 CPUs), else
    # float32 | float32 | bfloat16 | float16; the resolved dtype enters stage keys (models/devices)
    arch: Optional[TinyArch] = None  # only for source=tiny


@dataclass
class DataConfig:
    name: str = MISSING  # readable name in stage keys and tables
    train: Optional[str] = MISSING  # Alpaca JSON/JSONL path, pkg:<asset>, or
    # hf:<dataset>[:config][@split]; null only through an unset paths.* key (refused in the check)
    train_limit: Optional[int] = None  # use only the first N training records (null = all)
    diversity_cutoff: int = 50  # Table-4 K: repetition/diversity on the first K whitespace tokens


def kind_settings() -> DictConfig:
    """A kind's `settings` node as composed: open (not struct), so that any key of the selected
    kind's settings can be given in its YAML or on the command line without `+`; checked and
    typed right after composition against the kind's own dataclass (Registry.settings), where
    an unknown key or a wrong type fails naming the kind and the key."""
    return OmegaConf.create({}, flags={"struct": False})


@dataclass
class NoiseConfig:
    kind: str = "uniform"  # none | a kind of pipeline/train/noise_kinds/; none or alpha 0: baseline
    alpha: float = 5.0  # noise scale alpha (>= 0); the paper uses 5, 10, 15
    length: NoiseLength = NoiseLength.per_example  # per_example: no noise on padding | padded
    settings: Any = field(default_factory=kind_settings)  # noise.kind's own (its Settings)


@dataclass
class GenerateConfig:
    prompts: str = MISSING  # AlpacaEval-format prompts: path, pkg:<file> or hf:<dataset>
    reference: str = MISSING  # reference outputs for win rates (AlpacaEval format)
    dataset_name: str = "alpaca_eval"  # `dataset` field for prompts that carry none
    limit: Optional[int] = None  # use only the first N prompts (null = all)
    batch_size: int = 16  # prompts per generate() call (left padded, sorted by length)
    max_new_tokens: int = 2048  # cap on generated tokens per answer
    max_total_length: int = 2048  # cap on prompt + answer tokens (the paper's 2048)
    repetition_penalty: float = 1.2  # the paper's value; 1.0 = off
    engine: str = "hf"  # a pipeline/generation/engine_kinds/ engine: hf (this process) | vllm
    settings: Any = field(default_factory=kind_settings)  # generate.engine's own (its Settings)


@dataclass
class JudgeConfig:
    """Defaults are an AlpacaEval-1 API judge of the OpenAI API."""

    name: str = MISSING  # readable name in stage keys and tables
    kind: str = "openai"  # a kind of pipeline/judging/kinds/: local | openai | openai_compatible
    annotator: str = MISSING  # alpaca_eval annotator config (local: a dir in pipeline/assets)
    alpaca_eval_version: int = 1  # 1 (the paper's) | 2; alpaca_eval itself defaults to 2
    both_orders: bool = False  # judge (ref, model) and (model, ref) and average the verdicts
    lc_data: Optional[str] = None  # df_gamed.csv path (LC v1) | hub (download) | null: minimal
    settings: Any = field(default_factory=kind_settings)  # judge.kind's own (its Settings)


@dataclass
class OpenLLMTask:
    task: str = MISSING  # lm-eval task name
    num_fewshot: int = 0  # in-context examples
    metric: str = "acc"  # lm-eval metric name (acc, acc_norm)


@dataclass
class OpenLLMConfig:
    name: str = "none"  # readable name in stage keys and tables
    task_set: TaskSet = TaskSet.hub  # hub: lm-eval's built-in tasks | local: the shipped files
    limit: Optional[int] = None  # at most this many questions per task (null = all)
    batch_size: int = 8  # lm-eval batch size
    seed: int = 1234  # lm-eval's python/numpy/torch/few-shot seeds
    tasks: dict[str, OpenLLMTask] = field(default_factory=dict)  # short name -> task; {} = skip


@dataclass
class OverfitConfig:
    enabled: bool = False  # run the overfit stage (Figs 4-5) for every arm
    heldout: str = "pkg:default_eval_reference.json"  # held-out Alpaca-format rows
    heldout_limit: Optional[int] = None  # first N held-out rows (null = all)
    loss_sample: Optional[int] = None  # training rows whose loss is measured (null = all)
    generate_sample: int = 24  # training instructions answered and scored (ROUGE-L, BLEU)
    seed: int = 0  # which rows are sampled
    batch_size: int = 16  # sequences per forward pass / generate() call
    max_new_tokens: int = 1024  # cap on generated tokens per answer
    repetition_penalty: float = 1.2  # the paper's decoding setting


@dataclass
class LengthVariant:
    instruction_suffix: str = ""  # appended to each instruction
    min_new_tokens: int = 0  # EOS suppressed until this many new tokens
    max_new_tokens: Optional[int] = None  # null = generate.max_new_tokens


@dataclass
class LengthControlConfig:
    enabled: bool = False  # generate, judge and analyse the variants from the noise-off model
    variants: dict[str, LengthVariant] = field(default_factory=dict)  # name -> change


@dataclass
class AnalysisConfig:
    definition: Definition = Definition.paper  # Table-4: paper (reference code's) | corrected


@dataclass
class CompareConfig:
    resamples: int = 2000  # paired-bootstrap resamples over prompts (win rate, length, diversity)
    lc_resamples: int = 200  # resamples of the LC difference (each refits alpaca_eval's GLM)
    level: float = 0.95  # confidence level of every interval
    seed: int = 0  # bootstrap seed


@dataclass
class CalibrationConfig:
    enabled: bool = True  # measure the judge against reference verdicts (judge_calibration)
    # alpaca_eval's published GPT-4 verdicts, pinned (pipeline/assets/calibration_sources.yaml):
    # from paths.cache, else downloaded there, sha256-checked; or a local annotation file/folder
    pairs: str = "alpaca_eval@cd543a149df89434d8a54582c0151c0b945c3d20"
    n_pairs: int = 200  # pairs sampled (seeded) from it; each asked in both orders
    seed: int = 0  # which pairs, which are swapped, and the bootstrap
    resamples: int = 2000  # bootstrap resamples of each agreement CI


@dataclass
class PathsConfig:
    store: str = "runs"  # stage store root (relative to the working directory)
    cache: str = "${paths.store}/cache"  # converted/built base models
    lock_stale_after_s: float = 300.0  # a lock whose heartbeat is older (seconds) is taken over
    lock_heartbeat_s: float = 15.0  # how often (seconds) a lock holder refreshes its lock
    verify: Verify = Verify.size  # reuse check of stored files: size (cheap) | full (sha256)
    results: str = "results"  # tables and figures go to <results>/<experiment.name>/
    paper_numbers: str = "pkg:paper_numbers.yaml"  # the paper's figures (structured)
    sharegpt_train: Optional[str] = None  # Alpaca-format JSON of ShareGPT's 512-token chunks
    # (data=sharegpt reads it: one key for every ShareGPT point of a multirun)


@dataclass
class LoggerConfig:
    mode: LoggerMode = LoggerMode.offline  # disabled | offline | online (needs WANDB_API_KEY)
    project: str = "neftune-repro"  # W&B project
    dir: str = "${paths.store}/wandb"  # where W&B writes its run files


@dataclass
class ExperimentConfig:
    name: str = "default"  # results/<name>/ and the W&B group: one directory name (letters,
    # digits, '.', '_', '-'; no leading dot), checked first in plan.check_all


@dataclass
class Config:
    model: ModelConfig = MISSING  # base model to fine-tune (group model/)
    data: DataConfig = MISSING  # training data (group data/)
    noise: NoiseConfig = field(default_factory=NoiseConfig)  # the +NEFT arm's noise
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)  # optimiser, schedule
    generate: GenerateConfig = MISSING  # evaluation prompts, reference, decoding
    judge: JudgeConfig = MISSING  # the AlpacaEval annotator
    openllm: OpenLLMConfig = field(default_factory=OpenLLMConfig)  # lm-eval tasks
    overfit: OverfitConfig = field(default_factory=OverfitConfig)  # Figs 4-5
    length_control: LengthControlConfig = field(default_factory=LengthControlConfig)  # Table 5
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)  # Table 4 arithmetic
    compare: CompareConfig = field(default_factory=CompareConfig)  # CIs of +NEFT minus base
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)  # judge trust
    paths: PathsConfig = field(default_factory=PathsConfig)  # store, caches, results
    logger: LoggerConfig = field(default_factory=LoggerConfig)  # W&B
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)  # the study's name
    head_to_head: bool = True  # also judge the +NEFT answers against the base answers directly
    point_name: Optional[str] = None  # names this point's file in results/<experiment>/points/
    seeds: Optional[list[int]] = None  # train every arm once per seed (distinct: a repeat is
    # refused); null = [finetune.seed]
    dry_run: bool = False  # print every job (resources, memory plan, stored stages); run nothing


def register() -> None:
    """Put the schema in Hydra's ConfigStore (idempotent)."""
    ConfigStore.instance().store(name="schema", node=Config)


def config_params(node) -> dict:
    """A config node as the plain dict a stage key hashes (store/key_rules.py: without_empty_arch
    keeps the keys computed before the schema existed)."""
    return without_empty_arch(plain(node))


register()
