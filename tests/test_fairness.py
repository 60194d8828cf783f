"""Mechanism tests of the fair-comparison fixes (issue 13): each reading acts as documented at 96 and 352 px.

- the structure loss's window scales with the image size, so the boundary emphasis of Eq. 1 survives 96 px;
- Ours' spatial prompt reaches Dec_s on every level where a mass covers at least one feature cell;
- Self-Correcting's strong and weak terms use the same loss family;
- Macro-Micro's two models start from identical weights;
- DCR's indicator update is the source's step, checked against a hand-computed example.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from benchmark.nn.losses import box_mean, mask_loss, scaled_window, structure_window, window_for
from benchmark.training.sampling import BatchSampler
from methods import get_method
from methods.base import TrainContext
from tests.conftest import REPO, tiny_params
from tests.test_baselines_mechanisms import CPU, disc_data, one_thread  # noqa: F401 (autouse fixture)

DEFAULT_MODEL = yaml.safe_load((REPO / "params.yaml").read_text())["model"]
TINY_MODEL = tiny_params()["model"]


def disc(size: int, radius_fraction: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    radius = radius_fraction * size
    return (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) <= radius ** 2).float()[None, None]


# --- the structure loss's window ----------------------------------------------------------------------
def test_window_is_f3nets_31_px_at_352_scaled_odd_and_at_least_3():
    assert scaled_window(352) == 31 and scaled_window(96) == 9 and scaled_window(32) == 3 and scaled_window(8) == 3
    for size in range(8, 1025, 7):
        window = scaled_window(size)
        assert window % 2 == 1 and window >= 3
        assert abs(window - 31 * size / 352) <= 1.0 + 1e-9 or window == 3
    with structure_window(31):
        assert window_for(96, 96) == 31
    with structure_window("scaled"):
        assert window_for(96, 96) == 9 and window_for(352, 352) == 31
    for bad in (30, 1, True, "31", None):
        with pytest.raises(ValueError, match="structure_window"):
            with structure_window(bad):
                pass


def test_protocol_window_in_params_and_paper_profile():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    paper = yaml.safe_load((REPO / "profiles" / "paper.yaml").read_text())
    assert params["train"]["structure_window"] == "scaled"
    assert paper["train"]["structure_window"] == 31, "the paper profile keeps F3Net's 31 px exactly"


@pytest.mark.parametrize("size", [96, 352])
def test_scaled_window_keeps_the_boundary_emphasis(size):
    """A typical mass (radius 8% of the image): weight 1 + 5|avgpool(y) - y| low at its centre, high at its edge."""
    y = disc(size, 0.08)
    with structure_window("scaled"):
        weight = 1 + 5 * (box_mean(y, window_for(size, size)) - y).abs()
    centre = weight[0, 0, size // 2, size // 2].item()
    edge = weight[0, 0, size // 2, int(size / 2 + 0.08 * size)].item()  # the last mask pixel on the centre row
    assert centre < 1.5 and edge > 2.5, (centre, edge)
    flat = 1 + 5 * (box_mean(y, 31) - y).abs()  # what a fixed 31 px window gives
    if size == 96:
        assert flat[0, 0, size // 2, size // 2].item() > 4.0, "at 96 px a 31 px window is flat across the mass"


# --- Ours: the spatial prompt -------------------------------------------------------------------------
@pytest.mark.parametrize("size, options, prompted", [
    (96, {"prompt_levels": "all"}, [1, 2, 3, 4, 5]),  # the quick profile's reading at 96 px
    (192, {}, [5]),                                   # the default's literal reading: the stride-32 f_r only
    (352, {}, [5]),                                   # ... and the paper profile's
])
def test_ours_prompt_acts_where_the_reading_of_each_size_puts_it(size, options, prompted, monkeypatch):
    """With the reading that runs at each size and a perfect uncertainty map (U = 1 inside the box, 0 outside),
    Dec_s receives f_r x pool(U) on the prompted levels and the unprompted feature everywhere else. How much of
    a stride-32 cell a mass fills at each size: measurements/prompt_grid_2026-12-07.md."""
    torch.manual_seed(0)
    method = get_method("ours")(DEFAULT_MODEL, options).eval()
    box = torch.zeros(1, 1, size, size)
    side = int(0.14 * size)  # a median mass box (~1.8% of the image area)
    top = left = size // 2 - side // 2
    box[..., top:top + side, left:left + side] = 1
    monkeypatch.setattr(method.aux_branch, "forward", lambda features: 40.0 * (1 - 2 * box))  # U = box
    seen = {}
    method.seg_branch.register_forward_pre_hook(lambda module, args: seen.__setitem__("seg", list(args[0])))
    images = torch.randn(1, 1, size, size)
    with torch.no_grad():
        method.predict(images)
        features = method.encoder(images)
        unprompted = list(features)
        for level in method.fd_level_indices:
            unprompted[level] = method.fd[str(level)](features[level])[0]
    assert method.prompt_level_indices == prompted
    for level in range(1, len(features)):
        if level in prompted:
            prompt = F.adaptive_avg_pool2d(box, features[level].shape[-2:])
            assert prompt.max() > 0 and not torch.allclose(seen["seg"][level], unprompted[level])
            assert torch.allclose(seen["seg"][level], unprompted[level] * prompt, atol=1e-5), \
                f"{size} px: the prompt does not act as f_r x pool(U) on level {level}"
        else:
            assert torch.equal(seen["seg"][level], unprompted[level]), f"{size} px: level {level} was prompted"


# --- Self-Correcting: one loss family for both label kinds -------------------------------------------
@pytest.mark.parametrize("loss", ["structure", "bce_dice", "bce"])
def test_self_correcting_strong_and_weak_terms_use_the_same_loss(loss):
    training_set, _ = disc_data(n=12, n_strong=4)
    method = get_method("self_correcting")(TINY_MODEL, {"loss": loss, "ancillary_step_fraction": 0.0})
    method.on_train_start(TrainContext(training_set, lambda *a: None, {"lr": 1e-3, "poly_power": 0.9}, CPU, 1, 4, 0))
    method.train()
    batch = training_set.batch(torch.tensor([0, 5, 1, 7]), torch.zeros(4, 2, dtype=torch.bool))
    terms = method.training_step(batch)
    strong = {name.removeprefix("strong_") for name in terms if name.startswith("strong_")}
    weak = {name.removeprefix("weak_") for name in terms if name.startswith("weak_")}
    assert strong == weak == set(mask_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), loss)), terms.keys()


# --- Macro-Micro: one starting point ------------------------------------------------------------------
def test_macro_and_micro_start_from_identical_weights():
    method = get_method("macro_micro")(TINY_MODEL, {})
    micro, macro = method.micro.state_dict(), method.macro.state_dict()
    assert micro.keys() == macro.keys()
    assert all(torch.equal(micro[key], macro[key]) for key in micro)
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(method.micro.parameters(), method.macro.parameters()))


# --- DCR: the source's indicator step -----------------------------------------------------------------
def test_dcr_update_matches_a_hand_computed_step(monkeypatch):
    training_set, _ = disc_data(n=8, n_strong=4, corrupt_every=1)  # images 4..7 are weak
    lr0, lr_now = 1e-3, 2.5e-4
    context = TrainContext(training_set, lambda s, w, seed: BatchSampler(training_set, 4, 0.5, s, w, seed),
                           {"lr": lr0, "poly_power": 0.9}, CPU, epochs=2, steps_per_epoch=4, seed=0,
                           learning_rate=lambda step: lr0 if step < 4 else lr_now)
    method = get_method("dcr")(TINY_MODEL, {"beta": 0.2})
    method.on_train_start(context)
    method.gamma[4:] = torch.tensor([1.0, 0.9, 0.5, 0.2])
    g_strong = torch.tensor([[1.0, 0.0, 2.0], [3.0, 2.0, 0.0]])  # mean [2, 1, 1]
    g_weak = torch.tensor([[1.0, 1.0, 1.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [-10.0, 0.0, 0.0]])
    calls = iter([g_strong, g_weak])
    monkeypatch.setattr(method, "_per_sample_grads", lambda tail, images, targets: next(calls))
    method.step = 8  # the update after the second epoch's last step: alpha_t = lr_now
    dots = method.update_indicators()
    assert dots.tolist() == [4.0, -2.0, 1.0, -20.0]  # g_S . g_k, raw (similarity: dot)
    step = 0.2 * lr_now / lr0  # beta x alpha_t / alpha_0 = 0.05
    expected = np.clip(np.array([1.0, 0.9, 0.5, 0.2]) + step * np.array([4.0, -2.0, 1.0, -20.0]), 0, 1)
    assert np.allclose(method.gamma[4:].numpy(), expected)
    assert method.gamma[:4].tolist() == [1.0] * 4, "strong images keep weight 1"
    assert expected.tolist() == pytest.approx([1.0, 0.8, 0.55, 0.0])
