"""The finetune section of the schema (finetune=...): optimiser and schedule, LoRA/QLoRA and the
distributed launch (DDP/FSDP). Part of pipeline/config/schema.py's Config; same conventions: every
key declared once with its type, default and meaning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from pipeline.config.choices import Dtype, LossLogits, Sampling, Strategy

# The linear layers of a Llama block: where the paper's (Q)LoRA puts its adapters.
LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraConfig:
    r: int = 64  # adapter rank
    alpha: int = 16  # LoRA scaling numerator (lora_alpha)
    dropout: float = 0.1  # dropout on the adapter input
    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_LINEAR))  # layers
    quantize_4bit: bool = False  # true: QLoRA's NF4 base (CUDA + bitsandbytes) | false: plain
    # LoRA on the model.dtype base; never a silent fall back from one to the other


@dataclass
class FsdpConfig:
    sharding: str = "full_shard"  # FSDP2: full_shard | shard_grad_op (checked: hybrid is FSDP1)
    fp32_master_weights: bool = False  # true: fp32 masters, grads, AdamW + bf16 compute (16
    # B/param, Trainer bf16 mixed precision); false: all in bf16 (8 B/param, the paper's code)
    cpu_offload: bool = False  # weights and optimiser states in CPU memory: fits more, slower
    rank0_load: bool = True  # only rank 0 reads the weights, then broadcasts (70B: not 8 copies)


@dataclass
class DistributedConfig:
    nproc_per_node: str = "1"  # processes per node: a number | auto (one per visible GPU)
    nnodes: int = 1  # nodes; > 1: srun starts torchrun on each (slurm/finetune_multinode.sbatch)
    strategy: Strategy = Strategy.none  # none: 1 process | ddp: copy per GPU | fsdp: sharded
    rdzv_port: int = 29400  # c10d rendezvous port on the first node (nnodes > 1)
    rdzv_endpoint: Optional[str] = None  # host:port; null = the SLURM job's first host:rdzv_port
    gpu_memory_gb: Optional[float] = None  # GB per GPU for the memory plan where torch sees no GPU
    n_params: Optional[float] = None  # the model's parameters (memory plan); null = known/counted
    fsdp: FsdpConfig = field(default_factory=FsdpConfig)  # strategy=fsdp only
    timeout_s: int = 7200  # collective timeout (s): rank 0's final consolidated save must fit


@dataclass
class FinetuneConfig:
    """Defaults are the paper's full fine-tune (finetune=paper)."""

    epochs: int = 3  # passes over the training data
    max_steps: int = -1  # > 0 stops after this many optimiser steps (overrides epochs)
    per_device_batch_size: int = 4  # sequences per forward pass
    effective_batch_size: int = 128  # sequences per optimiser step over all processes;
    # accumulation = effective_batch_size / (per_device_batch_size x world size)
    learning_rate: float = 5.0e-5  # peak learning rate
    lr_scheduler: str = "cosine"  # transformers scheduler name
    warmup_ratio: float = 0.03  # fraction of total steps spent warming up
    weight_decay: float = 0.0  # AdamW weight decay
    max_grad_norm: float = 1.0  # gradient clipping norm
    optim: str = "adamw_torch"  # transformers optimiser name
    max_length: int = 512  # tokens per example (prompt + response + EOS), longer ones truncated
    bf16: bool = True  # bf16 mixed precision where model.dtype resolves to bf16 (CUDA, a CPU
    # with AMX/AVX512-BF16); off elsewhere, whatever this says (models/devices.resolve_precision)
    weights_dtype: Dtype = Dtype.auto  # dtype the weights and AdamW states train in: auto =
    # model.dtype, except float32 on a CPU under bf16 mixed precision (pure bf16 loses updates
    # there) | float32 | bfloat16; resolved before any key; the result is saved in model.dtype
    loss_logits: LossLogits = LossLogits.auto  # positions the training loss computes logits at:
    # all (every token: transformers' own loss) | response (only where a label counts: the same
    # loss without the output layer and softmax on prompt and padding, ~1.2x a CPU bf16 step)
    # | auto = response on a CPU under bf16 mixed precision, all elsewhere (fp32 keeps its bits)
    gradient_checkpointing: bool = True  # trade compute for memory
    logging_steps: int = 10  # loss log interval in optimiser steps
    save_steps: int = 200  # checkpoint interval in optimiser steps (resume point after a kill)
    sampling: Sampling = Sampling.random  # random | group_by_length (less padding)
    seed: int = 42  # data order and init of anything random
    lora: Optional[LoraConfig] = None  # adapters instead of a full finetune; null = full
    distributed: DistributedConfig = field(default_factory=DistributedConfig)  # processes


def finetune_settings(node) -> FinetuneConfig:
    """The finetune config as its typed dataclass, from a DictConfig or a plain dict (a torchrun
    worker's request.json): what the training code reads, by attribute, and what
    train.trainer_args.training_arguments maps onto the Trainer's arguments."""
    from omegaconf import OmegaConf

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(FinetuneConfig), node))
