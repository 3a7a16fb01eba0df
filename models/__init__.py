"""Reference architectures for normonnx, in plain PyTorch, one per normalisation family.

Each entry of :data:`MODELS` is a small but structurally realistic network with seeded random
weights and non-trivial normalisation parameters (affine weights ``1 + 0.1 N``, biases ``0.1 N``,
running means ``0.1 N``, running variances ``U(0.5, 1.5)``), so that a wrong ONNX lowering shows
up numerically. All of them export with ``torch.onnx.export(..., dynamo=True)`` at opsets 18 and
21 and run in milliseconds on CPU.

The first seven use torch's norm modules. The next five (``hand_written``) write their norms out in
primitive tensor ops, in the spellings real model code uses, so that export must *recognise* them; the
last (``convnext_v2``) is built only from ``normonnx.nn`` layers, one norm op each:

============== ============================================== ==========================
name           architecture                                   norms
============== ============================================== ==========================
resnet         ResNet-18 layout, basic blocks                 BatchNorm2d
resnet_gn      ResNet-50-style bottlenecks                    GroupNorm(32)
unet           diffusion UNet, 6 ResBlocks + attention        GroupNorm(32)
vit            ViT encoder, 4 pre-LN blocks                   LayerNorm
convnext       ConvNeXt, channels-first + -last LayerNorm     LayerNorm, LayerNorm2d
style_transfer Johnson et al. fast style transfer             InstanceNorm2d (+ running)
llama          Llama decoder, 2 blocks, RoPE, SwiGLU          RMSNorm
convnext_hand  ConvNeXt, official repo's LayerNorm class      hand LN (channels-first/-last)
llama_hand     Llama decoder, HF RMSNorm spellings            LlamaRMSNorm, T5, Gemma (1+w)
tutorial_gn    4 conv blocks, tutorial GroupNorm spellings    view / split+cat / unbiased / 5-D
resnet_ws      ResNet basic blocks, weight-standardized convs GroupNorm, BatchNorm2d (+ WS)
dit_block      DiT blocks + final layer, AdaLN modulation     LayerNorm * (1 + scale) + shift
convnext_v2    ConvNeXt-V2 of normonnx.nn layers only         LayerNorm (cf/-last), GRN
============== ============================================== ==========================

``expected_norms`` says how many norm nodes of each kind a correct export keeps: one per norm
module or hand-written norm (eval BatchNorm after a conv included; folding it is the exporter's
choice). Norms of *parameters* (weight standardization, ``weight_norm``) are constants at
inference and do not count.

Usage::

    import models

    entry = models.get("resnet")
    model = entry.factory()  # already in eval mode
    y = model(*entry.example_inputs())
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from normonnx.norms import KINDS

from . import (
    convnext,
    convnext_hand,
    convnext_v2,
    dit_block,
    llama,
    llama_hand,
    resnet,
    resnet_gn,
    resnet_ws,
    style_transfer,
    tutorial_gn,
    unet,
    vit,
)

__all__ = ["MODELS", "NORM_KINDS", "ModelEntry", "get", "names"]

#: The norm kinds an entry's ``norm_kinds`` may list: the registered ones.
NORM_KINDS: tuple[str, ...] = tuple(KINDS)


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One reference model.

    Attributes:
        name: registry key.
        factory: builds the model with its seeded weights, already in ``.eval()``.
        example_inputs: the (seeded) inputs to export and verify with.
        input_names: one name per positional input.
        dynamic_axes: per input name, the axes that may be dynamic and their names (axes that the
            model fixes, e.g. a ViT's spatial size, are left out). Meant for
            ``torch.export.Dim.DYNAMIC`` / ``Dim.AUTO``: torch.export may refine their ranges (e.g.
            a minimum spatial size, ``seq <= 64`` for llama). Unbounded *named* ``Dim``s are too
            strict for some models: a batch-1 example gets specialised, and UNet / ConvNeXt add
            minimum-size guards.
        second_size_inputs: seeded inputs of another batch/spatial size, differing only along
            ``dynamic_axes``, to check a dynamic export.
        norm_kinds: the norm kinds occurring in the model (a subset of :data:`NORM_KINDS`).
        description: one line saying what the model is.
        expected_norms: how many norm nodes of each kind (keys from :data:`NORM_KINDS`) the model
            has after a correct export: one per norm module or hand-written norm, eval BatchNorm
            after a conv included; parameter norms (weight standardization, weight norm) excluded,
            they fold into constants. ``sum(expected_norms.values())`` is the norm-node count.
        hand_written: the model writes (some of) its norms in primitive tensor ops rather than
            torch's norm modules / functionals, so export has to recognise them.
    """

    name: str
    factory: Callable[[], nn.Module]
    example_inputs: Callable[[], tuple[torch.Tensor, ...]]
    input_names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]
    second_size_inputs: Callable[[], tuple[torch.Tensor, ...]]
    norm_kinds: tuple[str, ...]
    description: str
    expected_norms: dict[str, int]
    hand_written: bool


def _image_axes() -> dict[str, dict[int, str]]:
    """Dynamic batch, height and width of an NCHW input ``x`` (a fresh dict per entry)."""
    return {"x": {0: "batch", 2: "h", 3: "w"}}


MODELS: dict[str, ModelEntry] = {
    e.name: e
    for e in (
        ModelEntry(
            name="resnet",
            factory=resnet.resnet,
            example_inputs=resnet.example_inputs,
            input_names=("x",),
            dynamic_axes=_image_axes(),
            second_size_inputs=resnet.second_size_inputs,
            norm_kinds=("batch",),
            description="ResNet-18-layout classifier (basic blocks, 32-256 ch) with BatchNorm2d",
            expected_norms={"batch": 20},
            hand_written=False,
        ),
        ModelEntry(
            name="resnet_gn",
            factory=resnet_gn.resnet_gn,
            example_inputs=resnet_gn.example_inputs,
            input_names=("x",),
            dynamic_axes=_image_axes(),
            second_size_inputs=resnet_gn.second_size_inputs,
            norm_kinds=("group",),
            description="ResNet-50-style bottleneck network with GroupNorm(32) in place of BN",
            expected_norms={"group": 29},
            hand_written=False,
        ),
        ModelEntry(
            name="unet",
            factory=unet.unet,
            example_inputs=unet.example_inputs,
            input_names=("x",),
            dynamic_axes=_image_axes(),
            second_size_inputs=unet.second_size_inputs,
            norm_kinds=("group",),
            description="diffusion UNet: 6 GroupNorm+SiLU ResBlocks, mid self-attention, skips",
            expected_norms={"group": 14},
            hand_written=False,
        ),
        ModelEntry(
            name="vit",
            factory=vit.vit,
            example_inputs=vit.example_inputs,
            input_names=("x",),
            dynamic_axes={"x": {0: "batch"}},
            second_size_inputs=vit.second_size_inputs,
            norm_kinds=("layer",),
            description="ViT encoder: patch embedding, cls token, 4 pre-LN blocks (dim 128)",
            expected_norms={"layer": 9},
            hand_written=False,
        ),
        ModelEntry(
            name="convnext",
            factory=convnext.convnext,
            example_inputs=convnext.example_inputs,
            input_names=("x",),
            dynamic_axes=_image_axes(),
            second_size_inputs=convnext.second_size_inputs,
            norm_kinds=("layer",),
            description="ConvNeXt: dwconv 7x7 blocks, channels-first/-last LayerNorm, layer scale",
            expected_norms={"layer": 15},
            hand_written=False,
        ),
        ModelEntry(
            name="style_transfer",
            factory=style_transfer.style_transfer,
            example_inputs=style_transfer.example_inputs,
            input_names=("x",),
            dynamic_axes=_image_axes(),
            second_size_inputs=style_transfer.second_size_inputs,
            norm_kinds=("instance",),
            description="Johnson fast style transfer, InstanceNorm2d (one uses running stats)",
            expected_norms={"instance": 11},
            hand_written=False,
        ),
        ModelEntry(
            name="llama",
            factory=llama.llama,
            example_inputs=llama.example_inputs,
            input_names=("x",),
            dynamic_axes={"x": {0: "batch", 1: "seq"}},
            second_size_inputs=llama.second_size_inputs,
            norm_kinds=("rms",),
            description="Llama decoder: 2 blocks of RMSNorm, RoPE GQA causal attention, SwiGLU",
            expected_norms={"rms": 5},
            hand_written=False,
        ),
        ModelEntry(
            name="convnext_hand",
            factory=convnext_hand.convnext_hand,
            example_inputs=convnext_hand.example_inputs,
            input_names=("x",),
            dynamic_axes=_image_axes(),
            second_size_inputs=convnext_hand.second_size_inputs,
            norm_kinds=("layer",),
            description="ConvNeXt with the official repo's hand-written LayerNorm (4 channels-first, "
            "5 channels-last) and one nn.LayerNorm before the head",
            expected_norms={"layer": 10},
            hand_written=True,
        ),
        ModelEntry(
            name="llama_hand",
            factory=llama_hand.llama_hand,
            example_inputs=llama_hand.example_inputs,
            input_names=("x",),
            dynamic_axes={"x": {0: "batch", 1: "seq"}},
            second_size_inputs=llama_hand.second_size_inputs,
            norm_kinds=("rms",),
            description="Llama decoder with hand-written RMSNorms: 3 HF LlamaRMSNorm (Cast form), "
            "1 T5LayerNorm, 1 Gemma (1 + w) scale",
            expected_norms={"rms": 5},
            hand_written=True,
        ),
        ModelEntry(
            name="tutorial_gn",
            factory=tutorial_gn.tutorial_gn,
            example_inputs=tutorial_gn.example_inputs,
            input_names=("x",),
            dynamic_axes={"x": {0: "batch"}},
            second_size_inputs=tutorial_gn.second_size_inputs,
            norm_kinds=("group",),
            description="conv net, one tutorial GroupNorm per block: view, split+cat (G=8), "
            "unbiased var (exactly a rescaled GN at static H, W), 5-D reshape",
            expected_norms={"group": 4},
            hand_written=True,
        ),
        ModelEntry(
            name="resnet_ws",
            factory=resnet_ws.resnet_ws,
            example_inputs=resnet_ws.example_inputs,
            input_names=("x",),
            dynamic_axes=_image_axes(),
            second_size_inputs=resnet_ws.second_size_inputs,
            norm_kinds=("batch", "group"),
            description="ResNet basic blocks, GroupNorm + 1 BatchNorm; convs weight-standardized "
            "(5 timm F.batch_norm, 3 BiT var_mean) or weight_norm (1): parameter norms, not counted",
            expected_norms={"group": 8, "batch": 1},
            hand_written=True,
        ),
        ModelEntry(
            name="dit_block",
            factory=dit_block.dit_block,
            example_inputs=dit_block.example_inputs,
            input_names=("x", "c"),
            dynamic_axes={"x": {0: "batch", 1: "tokens"}, "c": {0: "batch"}},
            second_size_inputs=dit_block.second_size_inputs,
            norm_kinds=("layer",),
            description="DiT: 2 blocks + final layer, non-affine LayerNorm modulated by "
            "x * (1 + scale(c)) + shift(c) (AdaLN, 5 modulated LayerNorms)",
            expected_norms={"layer": 5},
            hand_written=True,
        ),
        ModelEntry(
            name="convnext_v2",
            factory=convnext_v2.convnext_v2,
            example_inputs=convnext_v2.example_inputs,
            input_names=("x",),
            dynamic_axes=_image_axes(),
            second_size_inputs=convnext_v2.second_size_inputs,
            norm_kinds=("layer", "grn"),
            description="ConvNeXt-V2 of normonnx.nn layers only: 4 channels-first + 6 trailing "
            "LayerNorm, 5 GlobalResponseNorm (channels last)",
            expected_norms={"layer": 10, "grn": 5},
            hand_written=False,
        ),
    )
}


def names() -> list[str]:
    """The registered model names, in registry order."""
    return list(MODELS)


def get(name: str) -> ModelEntry:
    """The entry called ``name``; ``KeyError`` listing the valid names if there is none."""
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; valid names: {', '.join(MODELS)}") from None
