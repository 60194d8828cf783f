"""The mechanisms of the Self-Correcting, Macro-Micro and DCR baselines, and a tiny real run of each."""
import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch

from benchmark.config import RunSpec
from benchmark.evaluation.evaluate import evaluate_run
from benchmark.nn.losses import mask_loss, structure_loss
from benchmark.training.sampling import BatchSampler, TrainingSet
from benchmark.training.train import build_method, train_run
from methods.base import Batch, TrainContext
from methods.dcr import DCR
from methods.macro_micro import MacroMicro
from methods.self_correcting import SelfCorrecting, alpha_at
from tests.conftest import tiny_params

MODEL = tiny_params()["model"]
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread():
    """The machine's cores are shared: one thread each keeps these tiny runs fast."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def disc_data(n=40, n_strong=8, size=32, seed=0, corrupt_every=2):
    """Bright discs on noise; every `corrupt_every`-th weak image gets its box moved off the mass."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = np.zeros((n, size, size), np.uint8)
    masks, boxes = np.zeros_like(images), np.zeros_like(images)
    corrupt = np.zeros(n, bool)
    corrupt[n_strong::corrupt_every] = True
    for i in range(n):
        radius = rng.uniform(4, 7)
        cy, cx = rng.uniform(radius + 1, size - radius - 1, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
        image = rng.normal(70, 25, (size, size))
        image[disc] += 110
        images[i], masks[i] = np.clip(image, 0, 255), disc
        rows, cols = np.flatnonzero(disc.any(1)), np.flatnonzero(disc.any(0))
        y0, x0, h, w = rows[0], cols[0], rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        if corrupt[i]:  # the opposite corner: no overlap with the disc
            y0 = size - h if cy < size / 2 else 0
            x0 = size - w if cx < size / 2 else 0
        boxes[i, y0:y0 + h, x0:x0 + w] = 1
    is_strong = np.zeros(n, bool)
    is_strong[:n_strong] = True
    return TrainingSet(images, masks, boxes, is_strong, CPU), corrupt


def context_for(training_set, epochs=1, steps_per_epoch=4, batch_size=8, lr=1e-3):
    make = lambda strong, weak, seed: BatchSampler(training_set, batch_size, 0.5, strong, weak, seed)  # noqa: E731
    return TrainContext(training_set=training_set, make_sampler=make, train_params={"lr": lr, "poly_power": 0.9},
                        device=CPU, epochs=epochs, steps_per_epoch=steps_per_epoch, seed=0)


def train_steps(method, context, steps, lr=3e-3):
    """A minimal copy of the trainer loop (hooks included) over `steps` mixed batches."""
    method.on_train_start(context)
    optimizer = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=lr)
    sampler = context.make_sampler(True, True, 0)
    method.train()
    for step in range(steps):
        terms = method.training_step(context.training_set.batch(*sampler.next()))
        assert all(torch.isfinite(v) for v in terms.values())
        optimizer.zero_grad(set_to_none=True)
        sum(terms.values()).backward()
        optimizer.step()
        method.after_optimizer_step(step)
        if (step + 1) % context.steps_per_epoch == 0:
            method.on_epoch_end(step // context.steps_per_epoch, context.epochs)


def small_batch(size=32, n=4, strong=(True, False, True, False)):
    torch.manual_seed(1)
    masks = torch.zeros(n, 1, size, size)
    masks[:, :, 10:20, 12:22] = 1
    boxes = torch.zeros_like(masks)
    boxes[:, :, 8:22, 10:24] = 1
    is_strong = torch.tensor(strong)
    return Batch(images=torch.randn(n, 1, size, size), masks=masks * is_strong[:, None, None, None], boxes=boxes,
                 is_strong=is_strong, indices=torch.arange(n))


# --- DCR ------------------------------------------------------------------------------------------
def test_dcr_down_weights_weak_images_whose_boxes_miss_the_mass():
    torch.manual_seed(0)
    training_set, corrupt = disc_data()
    method = DCR(MODEL, {"tau": 8, "beta": 1.0, "similarity": "cosine", "lr_scaled": False})
    # five updates: after four (32 steps) the gap was 0.30 on one CPU and 0.2986 on another, too close to call
    train_steps(method, context_for(training_set, epochs=3, steps_per_epoch=20), steps=40, lr=5e-3)
    assert method.dii_updates == 5, "tau=8 over 40 steps: five indicator updates"
    weak = ~training_set.is_strong.numpy()
    gamma = method.gamma.numpy()
    assert np.all(gamma[~weak] == 1.0)
    clean, corrupted = gamma[weak & ~corrupt], gamma[weak & corrupt]
    assert corrupted.mean() < clean.mean() - 0.3, (clean, corrupted)
    assert np.mean(corrupted < clean.min()) >= 0.9
    similarity = method.update_indicators().numpy()  # cosine: bounded, clean boxes agree with the masks
    assert np.all(np.abs(similarity) <= 1 + 1e-5)
    assert similarity[~corrupt[weak]].mean() > similarity[corrupt[weak]].mean()


def test_dcr_per_sample_gradients_match_autograd():
    from methods.dcr import _Tail

    method = DCR(MODEL, {})
    method.eval()
    batch = small_batch()
    tail = _Tail(method.student.decoder.blocks[-1], method.student.segmentation_head)
    per_sample = method._per_sample_grads(tail, batch.images, batch.boxes)
    for k in (0, 3):
        method.zero_grad()
        loss = sum(mask_loss(method.student(batch.images[k:k + 1]), batch.boxes[k:k + 1]).values())
        loss.backward()
        expected = torch.cat([p.grad.flatten() for p in tail.parameters()])
        assert torch.allclose(per_sample[k], expected, atol=1e-5, rtol=1e-4)


def test_dcr_indicators_weight_weak_losses_and_stay_out_of_the_state_dict():
    training_set, _ = disc_data(n=12, n_strong=4)
    method = DCR(MODEL, {})
    fresh_keys = set(DCR(MODEL, {}).state_dict())
    method.on_train_start(context_for(training_set))
    assert method.gamma.shape == (12,) and set(method.state_dict()) == fresh_keys
    assert not any("gamma" in key for key in fresh_keys)
    method.train()
    batch = training_set.batch(torch.arange(4, 8), torch.zeros(4, 2, dtype=torch.bool))  # weak images only
    method.gamma[4:8] = 0.0
    terms = method.training_step(batch)
    assert terms["weak_structure"].item() == 0.0 and terms["strong_structure"].item() == 0.0
    gamma = torch.tensor([1.0, 0.5, 0.25, 0.0])
    method.gamma[4:8] = gamma
    weak_term = method.training_step(batch)["weak_structure"]
    with torch.no_grad():
        logits = method.student(batch.images)  # train-mode batch-norm: the same output as in the step
        per_image = torch.stack([structure_loss(logits[k:k + 1], batch.boxes[k:k + 1]) for k in range(4)])
    assert weak_term.item() == pytest.approx(float((gamma * per_image).sum() / 4), rel=1e-4)
    rebuilt = DCR(MODEL, {})
    rebuilt.load_state_dict(method.state_dict())  # what evaluation does: no on_train_start
    rebuilt.eval()
    with torch.no_grad():
        assert rebuilt.predict(torch.randn(2, 1, 32, 32)).shape == (2, 1, 32, 32)


# --- Self-Correcting --------------------------------------------------------------------------
def test_self_correcting_fused_target_is_the_linear_self_correction_inside_the_box():
    method = SelfCorrecting(MODEL, {"restrict_to_box": True})
    method.alpha = 3.0
    torch.manual_seed(0)
    z_p, z_a = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    box = torch.zeros(2, 1, 8, 8)
    box[:, :, 2:6, 1:5] = 1
    target = method.correction_target(z_p, z_a, box)
    inside = box.bool()
    assert torch.allclose(target[inside], torch.sigmoid((z_p + 3.0 * z_a) / 4.0)[inside])
    assert torch.all(target[~inside] == 0)
    unrestricted = SelfCorrecting(MODEL, {"restrict_to_box": False})
    unrestricted.alpha = 0.5
    assert torch.allclose(unrestricted.correction_target(z_p, z_a, None), torch.sigmoid((z_p + 0.5 * z_a) / 1.5))


def test_self_correcting_alpha_decays_as_configured():
    span = SelfCorrecting(MODEL, {})
    span.set_epoch(0, 12)
    alphas = [span.alpha]
    for epoch in range(11):
        span.on_epoch_end(epoch, 12)
        alphas.append(span.alpha)
    assert alphas[0] == pytest.approx(30.0) and alphas[-1] == pytest.approx(0.5)
    ratios = [b / a for a, b in zip(alphas, alphas[1:])]
    assert all(r == pytest.approx((0.5 / 30.0) ** (1 / 11)) for r in ratios), "geometric over the run"
    per_epoch = SelfCorrecting(MODEL, {"alpha_schedule": "per_epoch"})
    for epoch in range(100):
        per_epoch.on_epoch_end(epoch, 100)
        assert per_epoch.alpha == pytest.approx(max(0.5, 30.0 * 0.95 ** (epoch + 1)))
    assert alpha_at(10, 12, 30.0, 0.5, 0.95, "per_epoch") == pytest.approx(30 * 0.95 ** 10)
    with pytest.raises(ValueError, match="alpha_schedule"):
        SelfCorrecting(MODEL, {"alpha_schedule": "cosine"})


def test_self_correcting_ancillary_is_trained_then_frozen_and_the_weak_loss_uses_the_fused_target():
    training_set, _ = disc_data(n=12, n_strong=4)
    method = SelfCorrecting(MODEL, {"ancillary_step_fraction": 0.5})
    before = {k: v.clone() for k, v in method.ancillary.state_dict().items()}
    primary_before = {k: v.clone() for k, v in method.primary.state_dict().items()}
    method.on_train_start(context_for(training_set, epochs=2, steps_per_epoch=2))
    assert method.ancillary_steps == 2
    after = method.ancillary.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "the ancillary trained"
    assert all(torch.equal(primary_before[k], v) for k, v in method.primary.state_dict().items())
    assert not any(p.requires_grad for p in method.ancillary.parameters())
    method.train()
    assert method.primary.training and not method.ancillary.training, "train() keeps the frozen ancillary in eval"
    batch = training_set.batch(torch.tensor([0, 5, 1, 7]), torch.zeros(4, 2, dtype=torch.bool))
    terms = method.training_step(batch)
    with torch.no_grad():
        z_p = method.primary(batch.images)
        z_a = method.ancillary_logits(batch.images, batch.boxes)
        target = method.correction_target(z_p, z_a, batch.boxes) * (~batch.is_strong)[:, None, None, None]
        expected = structure_loss(z_p, target, (~batch.is_strong).float())
    assert terms["weak_structure"].item() == pytest.approx(expected.item(), rel=1e-4)
    strong_only = method.training_step(training_set.batch(torch.tensor([0, 1]), torch.zeros(2, 2, dtype=torch.bool)))
    assert strong_only["weak_structure"].item() == 0.0


# --- Macro-Micro ------------------------------------------------------------------------------
@pytest.mark.parametrize("layers", [["encoder.layer4"], ["decoder.blocks.0", "segmentation_head"]])
def test_macro_micro_ema_moves_only_the_configured_layers(layers):
    method = MacroMicro(MODEL, {"ema_layers": layers, "ema_momentum": 0.9, "ema_uncertainty": "none"})
    with torch.no_grad():
        for p in method.macro.parameters():
            p.add_(torch.randn_like(p))
    micro_before = {k: v.clone() for k, v in method.micro.state_dict().items()}
    macro_before = {k: v.clone() for k, v in method.macro.state_dict().items()}
    method.after_optimizer_step(0)
    micro_after, macro_after = method.micro.state_dict(), method.macro.state_dict()
    moved = 0
    for key, before in micro_before.items():
        assert torch.equal(macro_after[key], macro_before[key]), f"macro {key} must not change"
        configured = any(key == p or key.startswith(p + ".") for p in layers)
        if configured and before.is_floating_point():
            expected = before + 0.1 * (macro_before[key] - before)
            assert torch.allclose(micro_after[key], expected, atol=1e-6), key
            moved += int(not torch.equal(micro_after[key], before))
        else:
            assert torch.equal(micro_after[key], before), f"micro {key} is not configured and must not change"
    assert moved > 0
    with pytest.raises(ValueError, match="ema_layers"):
        MacroMicro(MODEL, {"ema_layers": ["encoder.layer9"]})


def test_macro_micro_uncertainty_scales_the_ema_and_the_kl_guides_only_the_macro_model():
    method = MacroMicro(MODEL, {})
    with torch.no_grad():  # the two models start identical (KL 0); training makes them differ
        for p in method.macro.decoder.parameters():
            p.add_(0.1 * torch.randn_like(p))
    method.train()
    weak_only = small_batch(strong=(False, False, False, False))
    terms = method.training_step(weak_only)
    assert terms["micro_structure"].item() == 0.0 and terms["kl"].item() > 0
    assert 0.0 <= method.macro_uncertainty <= 1.0
    assert method.ema_rate() == pytest.approx(0.01 * math.exp(-method.macro_uncertainty))
    terms["kl"].backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in method.micro.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.macro.parameters())
    one_strong = small_batch(strong=(True, False, False, False))  # a 1-image subset at 32 px (1x1 deepest map)
    for options in ({}, {"macro_on_strong_boxes": True, "loss": "bce_dice"}):
        terms = MacroMicro(MODEL, options).train().training_step(one_strong)
        micro_term = terms["micro_bce" if options else "micro_structure"]
        assert all(torch.isfinite(v) for v in terms.values()) and micro_term > 0


# --- tiny real runs through the trainer and the evaluation -------------------------------------
RUNS = {
    "self_correcting": {},
    "macro_micro": {"box_target": "ellipse"},
    "dcr": {"box_target": "grabcut", "tau": 2},  # 4 steps: one indicator update (none after the last step)
}


@pytest.mark.parametrize("method", sorted(RUNS))
def test_tiny_real_run_trains_saves_and_evaluates(method, tiny_prepared, tmp_path):
    params, prepared = tiny_prepared
    params = copy.deepcopy(params)
    name = f"{method}_tiny"
    params["runs"] = {name: {"method": method, "row": method, "strong_fraction": 0.25,
                             "options": RUNS[method]}}
    spec = RunSpec(name=name, method=method, strong_fraction=0.25, seeds=(0,), row=method, options=RUNS[method])
    info = train_run(spec, params, prepared, tmp_path, show_progress=False)
    assert info["n_weak_used"] > 0 and info["n_strong_used"] > 0
    log = pd.read_csv(tmp_path / name / "train_log.csv")
    assert len(log) == 1 and np.isfinite(log.drop(columns=["epoch"]).to_numpy(float)).all()
    state = torch.load(tmp_path / name / "models" / "seed_0.pt", weights_only=True)
    fresh = build_method(spec, params["model"])
    assert set(state) == set(fresh.state_dict()), "a fresh instance has the same state dict"
    metrics = evaluate_run(name, params, prepared, tmp_path)
    assert {"cbis", "inbreast"} <= set(metrics)
    assert all(math.isfinite(metrics[d]["smeasure"]) for d in ("cbis", "inbreast"))
    assert all(0 <= metrics[d]["dice"] <= 100 for d in ("cbis", "inbreast"))


def test_dcr_updates_every_tau_steps_but_not_after_the_last_one(monkeypatch):
    training_set, _ = disc_data(n=12, n_strong=4)
    method = DCR(MODEL, {})
    method.on_train_start(context_for(training_set, epochs=3, steps_per_epoch=4))
    calls = []
    monkeypatch.setattr(method, "update_indicators", lambda: calls.append(method.step))
    for step in range(12):
        method.after_optimizer_step(step)
    assert calls == [4, 8], "tau: epoch -> after steps 4 and 8; the update after the final step 12 is skipped"
