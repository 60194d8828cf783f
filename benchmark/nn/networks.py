"""Network factory shared by the methods: the segmentation-models-pytorch U-Net, its parts, its weights.

- `build_unet`: one U-Net (encoder, decoder, 1-logit head).
- `build_encoder` + `UnetBranch`: a shared encoder read by several U-Net decoders (dual-branch methods).

`encoder_weights` is `null` (random init), `imagenet` (downloaded by
segmentation-models-pytorch) or a path to a local encoder state dict (a torchvision /
timm ResNet checkpoint), for machines that cannot download.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import segmentation_models_pytorch as smp
import segmentation_models_pytorch.encoders as smp_encoders
import torch
from segmentation_models_pytorch.base import SegmentationHead
from segmentation_models_pytorch.base import initialization as smp_init
from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder
from segmentation_models_pytorch.encoders import get_encoder
from torch import nn

from benchmark.cli import ReportedError
from benchmark.config import ConfigError

IN_CHANNELS = 1  # mammograms are single-channel


class WeightsUnavailableError(ReportedError, RuntimeError):
    """The configured encoder weights cannot be used: ImageNet weights that cannot be downloaded, or a local
    file that is missing or is not a state dict of the configured encoder."""


def _not_encoder_weights(path: Path, encoder: str, why: str) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"model.encoder_weights: {path} is not a state dict of the configured encoder {encoder} ({why}). Give the "
        f"path of a {encoder} state dict saved with torch.save (e.g. torchvision's or timm's checkpoint), or set it "
        "to null for random initialisation.")


def _load_local_encoder_weights(encoder: nn.Module, path: Path, encoder_name: str) -> None:
    if not path.is_file():
        raise WeightsUnavailableError(
            f"model.encoder_weights points to {path}, which does not exist. Give the path of a ResNet state dict "
            "(e.g. torchvision's resnet34-b627a593.pth), or set it to null for random initialisation.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # text, an empty file, a pickle of arbitrary objects: all refused by torch.load
        first_line = str(error).splitlines()[0] if str(error) else "empty"
        raise _not_encoder_weights(path, encoder_name,
                                   f"torch.load cannot read it: {type(error).__name__}: {first_line}") from error
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not state or not all(
            isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()):
        raise _not_encoder_weights(path, encoder_name, f"it holds a {type(state).__name__}, not a mapping of "
                                                       "parameter names to tensors")
    state = {key.removeprefix("module.").removeprefix("encoder."): value for key, value in state.items()}
    state = {key: value for key, value in state.items() if not key.startswith("fc.")}
    conv1 = state.get("conv1.weight")
    if conv1 is not None and conv1.ndim == 4 and conv1.shape[1] != IN_CHANNELS:  # RGB filters -> grey, as smp does
        state["conv1.weight"] = conv1.sum(dim=1, keepdim=True)
    expected = encoder.state_dict()
    wrong_shape = [f"{key} {tuple(value.shape)} instead of {tuple(expected[key].shape)}"
                   for key, value in state.items() if key in expected and value.shape != expected[key].shape]
    if wrong_shape:
        raise _not_encoder_weights(path, encoder_name, f"shapes differ: {'; '.join(wrong_shape[:3])}")
    # nn.Module's own method: smp's encoders override load_state_dict and return nothing
    missing, unexpected = nn.Module.load_state_dict(encoder, state, strict=False)
    if missing or unexpected:
        raise _not_encoder_weights(path, encoder_name, f"missing {missing[:5]}, unexpected {unexpected[:5]}")


def _with_weights(factory: Callable[[str | None], nn.Module], model_params: dict[str, Any],
                  encoder_of: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """Build with `factory(weights)`, turning download failures and local weight files into clear outcomes."""
    weights = model_params.get("encoder_weights")
    local = weights not in (None, "imagenet")
    if model_params["encoder"] not in smp_encoders.encoders:
        raise ConfigError(f"params.yaml: model.encoder = {model_params['encoder']!r}: not an encoder of "
                          f"segmentation-models-pytorch {smp.__version__}; e.g. resnet18, resnet34, resnet50")
    try:
        module = factory(None if local else weights)
    except Exception as error:  # smp raises URLError/HTTPError/OSError variants when offline
        if weights != "imagenet":
            raise
        raise WeightsUnavailableError(
            f"model.encoder_weights: imagenet — the ImageNet weights for {model_params['encoder']} could not be "
            f"downloaded ({type(error).__name__}: {error}). Download them on a connected machine and set "
            "model.encoder_weights to the local .pth path, or set it to null to train from random weights."
        ) from error
    if local:
        _load_local_encoder_weights(encoder_of(module), Path(weights), str(model_params["encoder"]))
    return module


def build_unet(model_params: dict[str, Any]) -> smp.Unet:
    """A U-Net as configured in params.yaml `model` (1 input channel, 1 output logit)."""
    return _with_weights(
        lambda weights: smp.Unet(encoder_name=model_params["encoder"], encoder_weights=weights,
                                 decoder_channels=tuple(model_params["decoder_channels"]),
                                 in_channels=IN_CHANNELS, classes=1),
        model_params, encoder_of=lambda unet: unet.encoder)


def build_encoder(model_params: dict[str, Any]) -> nn.Module:
    """The configured encoder alone; `encoder.out_channels` lists its feature channels (stride 1 ... 32)."""
    return _with_weights(
        lambda weights: get_encoder(model_params["encoder"], in_channels=IN_CHANNELS, depth=5, weights=weights),
        model_params, encoder_of=lambda encoder: encoder)


class UnetBranch(nn.Module):
    """A U-Net decoder with its 1-logit head, reading a list of encoder features (as smp.Unet does)."""

    def __init__(self, encoder_channels: Sequence[int], decoder_channels: Sequence[int]) -> None:
        super().__init__()
        self.decoder = UnetDecoder(encoder_channels=encoder_channels, decoder_channels=decoder_channels,
                                   n_blocks=len(decoder_channels))
        self.head = SegmentationHead(in_channels=decoder_channels[-1], out_channels=1, kernel_size=3)
        smp_init.initialize_decoder(self.decoder)
        smp_init.initialize_head(self.head)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.head(self.decoder(features))
