"""The classifier: torchvision Inception V3 with one-logit heads, split into blocks.

The network is run block by block so that training can start from cached features
of the frozen lower blocks (:mod:`train.cache`) and the exported model is exactly
the same computation from pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from train import weights as weights_lib

# Order of the feature blocks of torchvision's Inception3 (the aux head branches
# off after Mixed_6e).
BLOCKS: tuple[str, ...] = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1",
    "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2",
    "Mixed_5b", "Mixed_5c", "Mixed_5d",
    "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
    "Mixed_7a", "Mixed_7b", "Mixed_7c",
)  # fmt: skip
AUX_AFTER = "Mixed_6e"
# Blocks the head may sit on, with their output channels: ``Mixed_7c`` is the full network;
# ``Mixed_6e`` keeps the 17x17 stage (22 x 22 cells at 384 px), a finer map for small marks
# at about 0.4 of the time per epoch of training Mixed_6e through Mixed_7c (measured at 384 px).
LAST_BLOCKS: dict[str, int] = {"Mixed_6e": 768, "Mixed_7a": 1280, "Mixed_7b": 2048, "Mixed_7c": 2048}
POOLS = ("avg", "max", "avgmax")
HEAD = "head"  # pseudo block name: only the classifier heads train
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    """Where and how training math runs: device, memory layout, autocast precision.

    ``channels_last`` is the layout oneDNN (CPU) and cuDNN convolutions are fastest in;
    ``amp`` runs convolutions and matrix products in bfloat16 (CPUs with AVX-512 BF16 or
    AMX, and GPUs) or float16 (GPUs), with weights, losses and optimiser state in float32.
    """

    device: str = "cpu"
    amp: str = "none"
    channels_last: bool = True

    def __post_init__(self) -> None:
        if self.amp not in AMP_DTYPES:
            raise ValueError(f"--amp {self.amp!r}: allowed are {', '.join(AMP_DTYPES)}")
        kind = self.device.split(":")[0]
        if kind not in ("cpu", "cuda"):
            raise ValueError(f"--device {self.device!r}: allowed are cpu, cuda, cuda:N")
        if kind == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {self.device}: CUDA is not available on this machine; use --device cpu")
        if kind == "cpu" and self.amp == "fp16":
            raise ValueError("--amp fp16 needs --device cuda; on the CPU use --amp bf16")

    def autocast(self) -> AbstractContextManager:
        kind = self.device.split(":")[0]
        return torch.autocast(device_type=kind, dtype=AMP_DTYPES[self.amp] or torch.float32, enabled=self.amp != "none")

    def input(self, x: torch.Tensor) -> torch.Tensor:
        """A batch moved to the device (pinned, asynchronous on CUDA) in the model's layout."""
        if self.device != "cpu":
            x = x.pin_memory().to(self.device, non_blocking=True) if x.device.type == "cpu" else x.to(self.device)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def prepare(self, model: nn.Module) -> nn.Module:
        """The model on the device, in the runtime's layout."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model


class WatermarkNet(nn.Module):
    """Inception V3 backbone + one-logit head with a configurable global pool.

    ``pool="avgmax"`` concatenates global average and global max pooling of the
    last feature map: a small, local watermark moves the max even when it barely
    moves the average. ``last_block`` is the block the head sits on (a key of
    :data:`LAST_BLOCKS`); the blocks after it are replaced by identities and hold no
    weights. Build with the full network to load backbone weights, then
    :meth:`cut_after` (as :func:`build_model` does), or pass ``last_block`` to rebuild a
    trained model's layout before loading its state dict.
    """

    def __init__(self, *, pool: str = "avgmax", dropout: float = 0.5, last_block: str = "Mixed_7c") -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool={pool!r}: allowed are {', '.join(POOLS)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout!r}: allowed is 0 <= dropout < 1")
        self.pool = pool
        net = torchvision.models.inception_v3(
            weights=None, aux_logits=True, init_weights=False, transform_input=False, num_classes=1
        )
        net.AuxLogits.fc = nn.Linear(net.AuxLogits.fc.in_features, 1)
        width = LAST_BLOCKS[BLOCKS[-1]] * (2 if pool == "avgmax" else 1)
        net.fc = nn.Linear(width, 1)
        net.dropout = nn.Dropout(dropout)
        self.net = net
        self.last_block = BLOCKS[-1]
        if last_block != BLOCKS[-1]:
            self.cut_after(last_block)

    def cut_after(self, last_block: str) -> None:
        """Put the head on ``last_block``: later blocks become identities, ``fc`` a new layer of its width."""
        if last_block not in LAST_BLOCKS:
            raise ValueError(f"last_block={last_block!r}: allowed are {', '.join(LAST_BLOCKS)}")
        if BLOCKS.index(last_block) > BLOCKS.index(self.last_block):
            raise ValueError(f"last_block={last_block!r}: the model already ends at {self.last_block}")
        for name in BLOCKS[BLOCKS.index(last_block) + 1 :]:
            setattr(self.net, name, nn.Identity())
        width = LAST_BLOCKS[last_block] * (2 if self.pool == "avgmax" else 1)
        if self.net.fc.in_features != width:
            self.net.fc = nn.Linear(width, 1)
        self.last_block = last_block

    def block(self, name: str) -> nn.Module:
        return getattr(self.net, name)

    def features(self, x: torch.Tensor, *, start: int = 0, stop: int = len(BLOCKS)) -> torch.Tensor:
        """Run blocks ``BLOCKS[start:stop]`` on ``x`` (no aux head)."""
        for name in BLOCKS[start:stop]:
            x = self.block(name)(x)
        return x

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Global pool + dropout + fc: last feature map -> logits ``[N, 1]``."""
        if self.pool == "avg":
            pooled = F.adaptive_avg_pool2d(x, 1)
        elif self.pool == "max":
            pooled = F.adaptive_max_pool2d(x, 1)
        else:
            pooled = torch.cat([F.adaptive_avg_pool2d(x, 1), F.adaptive_max_pool2d(x, 1)], dim=1)
        return self.net.fc(self.net.dropout(torch.flatten(pooled, 1)))

    def forward_from(
        self, x: torch.Tensor, start: int = 0, *, with_aux: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (and aux logits when asked and reachable) from block ``start`` on."""
        aux = None
        aux_index = BLOCKS.index(AUX_AFTER) + 1
        if with_aux and start < aux_index:
            x = self.features(x, start=start, stop=aux_index)
            aux = self.net.AuxLogits(x)
            x = self.features(x, start=aux_index)
        else:
            x = self.features(x, start=start)
        return self.head(x), aux

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels (normalised per the preprocessing spec) -> logits ``[N, 1]``."""
        return self.forward_from(x, 0)[0]

    def explain(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[N, 1]`` and an evidence map ``[N, h, w]`` from one forward pass.

        The map is a class-activation map read off the head: at each cell of the last
        feature map, the logit contribution the head's weights give that cell's features,
        counted as if every channel's maximum were there (the max-pool weights) plus the
        cell's share of the average (the avg-pool weights divided by ``h * w``). Its peak
        is where the evidence for a watermark is strongest; it costs one 1x1 projection
        on top of the ordinary forward pass.
        """
        features = self.features(x)
        return self.head(features), evidence_map(features, self.net.fc.weight, self.pool)


def evidence_map(features: torch.Tensor, weight: torch.Tensor, pool: str) -> torch.Tensor:
    """Per-cell logit contributions ``[N, h, w]`` of a last feature map ``[N, C, h, w]``
    under a head with ``fc.weight`` of shape ``[1, C]`` (avg or max) or ``[1, 2C]`` (avgmax)."""
    channels = features.shape[1]
    cells = features.shape[2] * features.shape[3]
    w = weight.reshape(-1)
    if pool == "avgmax":
        w = w[:channels] / cells + w[channels:]
    elif pool == "avg":
        w = w / cells
    return torch.einsum("c,nchw->nhw", w.to(features.dtype), features)


def block_index(name: str) -> int:
    """Index of a block name in :data:`BLOCKS`; ``head`` means after all blocks."""
    if name == HEAD:
        return len(BLOCKS)
    if name not in BLOCKS:
        raise ValueError(f"block {name!r}: allowed are {HEAD!r} or one of {', '.join(BLOCKS)}")
    return BLOCKS.index(name)


def model_from_config(config: dict) -> WatermarkNet:
    """An untrained model in the layout a saved training config describes (pool, dropout,
    head's block), ready for that run's state dict; configs from before an option exist
    get its default."""
    return WatermarkNet(
        pool=config.get("pool", "avgmax"), dropout=config.get("dropout", 0.5), last_block=config.get("last_block", BLOCKS[-1])
    )


def build_model(
    weights: str, *, pool: str = "avgmax", dropout: float = 0.5, last_block: str = "Mixed_7c"
) -> tuple[WatermarkNet, str]:
    """Build the classifier, load backbone weights and put the head on ``last_block``.

    Returns:
        The model and the input normalisation its weights expect.
    """
    model = WatermarkNet(pool=pool, dropout=dropout)
    normalization = weights_lib.load_pretrained_backbone(model.net, weights)
    model.cut_after(last_block)
    return model, normalization


def set_trainable(model: WatermarkNet, first_trainable: str) -> list[str]:
    """Freeze every block before ``first_trainable``; train it and all after it.

    The heads (``fc``, and the aux head when ``Mixed_6e`` trains) always train.
    Returns the names of the trainable parts.
    """
    first = block_index(first_trainable)
    trainable: list[str] = []
    for i, name in enumerate(BLOCKS):
        on = i >= first
        model.block(name).requires_grad_(on)
        if on:
            trainable.append(name)
    aux_on = first <= BLOCKS.index(AUX_AFTER)
    model.net.AuxLogits.requires_grad_(aux_on)
    if aux_on:
        trainable.append("AuxLogits")
    model.net.fc.requires_grad_(True)
    trainable.append("fc")
    return trainable


def set_train_mode(model: WatermarkNet, first_trainable: str) -> None:
    """Training mode for trainable parts; frozen blocks keep eval-mode batch norm."""
    model.train()
    first = block_index(first_trainable)
    for name in BLOCKS[:first]:
        model.block(name).eval()
    if first > BLOCKS.index(AUX_AFTER):
        model.net.AuxLogits.eval()


def parameter_groups(
    model: WatermarkNet, *, lr: float, backbone_lr_mult: float, weight_decay: float
) -> list[dict]:
    """AdamW groups: heads at ``lr``, unfrozen backbone blocks at ``lr * backbone_lr_mult``.

    All parameters are listed (frozen ones simply get no gradient), so the optimizer
    state stays valid when a later stage unfreezes more blocks.
    """
    head_ids = {id(p) for p in model.net.fc.parameters()} | {
        id(p) for p in model.net.AuxLogits.fc.parameters()
    }
    heads = [p for p in model.parameters() if id(p) in head_ids]
    rest = [p for p in model.parameters() if id(p) not in head_ids]
    return [
        {"params": heads, "lr": lr, "weight_decay": weight_decay, "name": "heads"},
        {"params": rest, "lr": lr * backbone_lr_mult, "weight_decay": weight_decay, "name": "backbone"},
    ]


def trainable_names(names: Sequence[str]) -> str:
    return ",".join(names)
