"""The paper profile is exactly the paper's protocol, and missing ImageNet weights give the documented error."""
from __future__ import annotations

from pathlib import Path

import pytest
import segmentation_models_pytorch.encoders as smp_encoders
import torch
import yaml

from benchmark.config import all_runs, load_params
from benchmark.nn.networks import WeightsUnavailableError, build_unet
from benchmark.training.runtime import cpu_has_native_bf16
from benchmark.training.train import Numerics, make_optimizer, poly_lr
from methods.ours import Ours

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "profiles" / "paper.yaml"
QUICK = REPO / "profiles" / "quick.yaml"


def keys(tree: dict, prefix: str = "") -> set[str]:
    found = set()
    for key, value in tree.items():
        found.add(prefix + key)
        if isinstance(value, dict) and key != "runs":
            found |= keys(value, f"{prefix}{key}.")
    return found


def test_paper_profile_is_the_papers_protocol():
    params = load_params(PAPER)
    # Sec. 3.1: ResNet-34 U-Net from ImageNet, 352x352, Adam 1e-4, poly 0.9 over 50 epochs, batch 8, flips
    assert params["data"]["source"] == "real" and params["data"]["image_size"] == 352
    assert params["data"]["test_fraction"] == 0.2 and params["data"]["split"] == "random"
    assert params["model"] == {**params["model"], "architecture": "unet", "encoder": "resnet34",
                               "encoder_weights": "imagenet", "decoder_channels": [256, 128, 64, 32, 16]}
    train = params["train"]
    assert (train["epochs"], train["batch_size"], train["optimizer"], train["lr"], train["poly_power"]) == \
        (50, 8, "adam", 1e-4, 0.9)
    assert train["precision"] == "auto"
    assert train["hflip"] is True and train["vflip"] is True
    assert poly_lr(train["lr"], 25, train["epochs"], train["poly_power"]) == pytest.approx(1e-4 * 0.5 ** 0.9)
    assert isinstance(make_optimizer(train["optimizer"], [torch.nn.Parameter(torch.zeros(1))], train["lr"]),
                      torch.optim.Adam)
    assert params["seeds"] == [0, 1, 2] and all(spec.seeds == (0, 1, 2) for spec in all_runs(params))
    # smp's own default decoder is the paper's U-Net
    assert params["model"]["decoder_channels"] == [256, 128, 64, 32, 16]
    # bf16 on a GPU that has it, float32 on a CPU
    assert Numerics.from_params(train, torch.device("cpu")).precision == ("bf16" if cpu_has_native_bf16() else "fp32")


def test_paper_profile_differs_from_the_default_only_in_protocol_values():
    default, paper = load_params(REPO / "params.yaml"), load_params(PAPER)
    assert keys(default) == keys(paper), "both profiles have the same keys"
    assert default["runs"] == paper["runs"], "the same 15 runs of Tables 1-2"
    assert default["report"] == paper["report"] and default["evaluate"] == paper["evaluate"]


def test_quick_profile_is_the_default_with_one_seed_at_96_px():
    default, quick = load_params(REPO / "params.yaml"), load_params(QUICK)
    assert default["seeds"] == [0, 1, 2] and quick["seeds"] == [0]
    assert default["data"]["image_size"] == 192 and quick["data"]["image_size"] == 96
    same_data = {**quick["data"], "image_size": default["data"]["image_size"]}
    # at 96 px Ours' literal reading (the default's: the prompt on the stride-32 f_r) is degenerate, so every
    # Ours run of the quick profile, and only those, adds the reading the 96 px study chose
    ours = {name for name, run in default["runs"].items() if run["method"] == "ours"}
    assert len(ours) == 7 and Ours.default_options["prompt_levels"] == "fd"
    for name in ours:
        assert quick["runs"][name]["options"].pop("prompt_levels") == "all", name
        if not quick["runs"][name]["options"]:
            del quick["runs"][name]["options"]
    assert {**quick, "seeds": default["seeds"], "data": same_data} == default, "nothing else differs"
    assert "cp profiles/quick.yaml params.yaml && dvc repro" in QUICK.read_text()
    assert "profiles/quick.yaml" in (REPO / "README.md").read_text(), "documented"


def test_missing_imagenet_weights_give_the_documented_error(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files (offline)")

    monkeypatch.setattr(smp_encoders, "hf_hub_download", offline)
    model = {"encoder": "resnet34", "encoder_weights": "imagenet", "decoder_channels": [16, 16, 8, 8, 8]}
    with pytest.raises(WeightsUnavailableError, match=r"imagenet .* could not be downloaded .* set "
                                                      r"model.encoder_weights to the local .pth path"):
        build_unet(model)


def test_a_local_weight_file_replaces_the_download(tmp_path):
    reference = build_unet({"encoder": "resnet34", "encoder_weights": None, "decoder_channels": [16, 16, 8, 8, 8]})
    path = tmp_path / "resnet34.pth"
    torch.save({f"{key}": value for key, value in reference.encoder.state_dict().items()}, path)
    model = build_unet({"encoder": "resnet34", "encoder_weights": str(path), "decoder_channels": [16, 16, 8, 8, 8]})
    assert torch.equal(model.encoder.conv1.weight, reference.encoder.conv1.weight)
    missing = {"encoder": "resnet34", "encoder_weights": str(tmp_path / "absent.pth"),
               "decoder_channels": [16, 16, 8, 8, 8]}
    with pytest.raises(WeightsUnavailableError, match="absent.pth, which does not exist"):
        build_unet(missing)


def test_profiles_are_valid_yaml_with_comments_kept():
    text = PAPER.read_text()
    assert "cp profiles/paper.yaml params.yaml && dvc repro" in text
    assert yaml.safe_load(text)["model"]["encoder"] == "resnet34"
