"""How a method is spread over devices, and the full state dicts that let a run move between spreads.

- ``ddp`` (the default): every device holds the whole method and averages the gradients (Fabric's DDP).
- ``fsdp``: every device holds a shard of every weight, optimiser state and teacher alike (Fabric's
  FSDP); each ViT block is its own shard unit, gathered only while it runs. For ViTs that do not fit one
  device. Lightning runs FSDP on GPUs only.
  A teacher's moving average pairs each teacher weight with its student's, which shards need not hold in
  the same places, so it runs with the weights whole (:func:`whole_weights`).
- ``activation_checkpointing``: ViT blocks keep no activations for the backward pass, and recompute them.

Checkpoints hold *full* state dicts (parameter names, whole tensors) under every strategy, made with
:mod:`torch.distributed.checkpoint.state_dict`: a run saved under FSDP resumes under DDP or in one process,
and the other way round.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
from lightning.fabric.strategies import FSDPStrategy, Strategy
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

STRATEGIES = ("ddp", "fsdp")
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def vit_blocks() -> set[type[nn.Module]]:
    """The module classes that are one ViT block: the units to shard and to checkpoint."""
    from timm.models.vision_transformer import Block

    return {Block}


def strategy(name: str, activation_checkpointing: bool) -> str | Strategy:
    """Fabric's strategy for ``name`` (one of :data:`STRATEGIES`)."""
    if name == "ddp":
        return "auto"  # DDP on more than one device, nothing on one
    blocks = vit_blocks()
    return FSDPStrategy(
        auto_wrap_policy=blocks,
        activation_checkpointing_policy=blocks if activation_checkpointing else None,
        state_dict_type="full",
        use_orig_params=True,
    )


def checkpoint_blocks(module: nn.Module) -> None:
    """Recompute every ViT block's activations in the backward pass instead of keeping them (in place;
    under FSDP, Fabric does this itself)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        apply_activation_checkpointing,
        checkpoint_wrapper,
    )

    blocks = tuple(vit_blocks())
    apply_activation_checkpointing(
        module, checkpoint_wrapper_fn=checkpoint_wrapper, check_fn=lambda m: isinstance(m, blocks)
    )


def _wrapped(model: nn.Module) -> nn.Module:
    """The DDP/FSDP module (or the plain one) inside Fabric's and ``torch.compile``'s wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "_forward_module", model)


@contextmanager
def whole_weights(model: nn.Module, name: str, needed: bool = True) -> Iterator[None]:
    """Under FSDP, every weight whole on every process inside (gathered, and each process's shard of what
    changed kept on the way out): for updates that pair weights across networks, such as a teacher's moving
    average. Under DDP, or when not ``needed`` (a method with no such update), nothing to do."""
    if name != "fsdp" or not needed:
        yield
        return
    from torch.distributed.fsdp import FullyShardedDataParallel

    with FullyShardedDataParallel.summon_full_params(_wrapped(model), writeback=True):
        yield


def _plain(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)  # Fabric's wrapper holds the torch optimiser


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Whole weights and optimiser state keyed by parameter name, on the CPU, whatever the strategy (all
    processes must call it: under FSDP it gathers the shards)."""
    return get_state_dict(_wrapped(model), _plain(optimizer), options=_FULL)


def full_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Whole weights keyed by parameter name, on the CPU (all processes must call it; the first gets them)."""
    return get_model_state_dict(_wrapped(model), options=_FULL)


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, weights: dict, optim: dict) -> None:
    """Load what :func:`full_state` made into ``model`` and ``optimizer``, whatever their strategy now
    (every process passes the whole state; under FSDP each keeps its shard)."""
    set_state_dict(
        _wrapped(model),
        _plain(optimizer),
        model_state_dict=weights,
        optim_state_dict=optim,
        options=StateDictOptions(full_state_dict=True),
    )
