"""Network factory shared by the methods: the segmentation-models-pytorch U-Net and its weights.

`encoder_weights` is `null` (random init), `imagenet` (downloaded by
segmentation-models-pytorch) or a path to a local encoder state dict (a torchvision /
timm ResNet checkpoint), for machines that cannot download.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import torch
from torch import nn

IN_CHANNELS = 1  # mammograms are single-channel


class WeightsUnavailableError(RuntimeError):
    """ImageNet weights were asked for but cannot be obtained."""


def _load_local_encoder_weights(encoder: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise WeightsUnavailableError(
            f"model.encoder_weights points to {path}, which does not exist. Give the path of a ResNet state dict "
            "(e.g. torchvision's resnet34-b627a593.pth), or set it to null for random initialisation.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    state = {key.removeprefix("module.").removeprefix("encoder."): value for key, value in state.items()}
    state = {key: value for key, value in state.items() if not key.startswith("fc.")}
    conv1 = state.get("conv1.weight")
    if conv1 is not None and conv1.shape[1] != IN_CHANNELS:  # RGB filters -> one grey channel, as smp does
        state["conv1.weight"] = conv1.sum(dim=1, keepdim=True)
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsUnavailableError(f"{path}: not a matching encoder state dict (missing {missing[:5]}, "
                                      f"unexpected {unexpected[:5]}).")


def build_unet(model_params: dict[str, Any]) -> smp.Unet:
    """A U-Net as configured in params.yaml `model` (1 input channel, 1 output logit)."""
    weights = model_params.get("encoder_weights")
    local = weights not in (None, "imagenet")
    kwargs = dict(
        encoder_name=model_params["encoder"],
        decoder_channels=tuple(model_params["decoder_channels"]),
        in_channels=IN_CHANNELS,
        classes=1,
    )
    try:
        network = smp.Unet(encoder_weights=None if local else weights, **kwargs)
    except Exception as error:  # smp raises URLError/HTTPError/OSError variants when offline
        if weights != "imagenet":
            raise
        raise WeightsUnavailableError(
            f"model.encoder_weights: imagenet — the ImageNet weights for {model_params['encoder']} could not be "
            f"downloaded ({type(error).__name__}: {error}). Download them on a connected machine and set "
            "model.encoder_weights to the local .pth path, or set it to null to train from random weights."
        ) from error
    if local:
        _load_local_encoder_weights(network.encoder, Path(weights))
    return network
