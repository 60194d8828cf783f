"""Mechanism tests of the simple baselines: Weak-Only, Vanilla-Hybrid, Strong-Weak."""
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from benchmark.config import RunSpec
from benchmark.data.prepared import box_map, component_boxes
from benchmark.nn.box_targets import BOX_TARGET_LAYER, box_targets
from benchmark.nn.losses import structure_loss
from benchmark.training.sampling import BatchSampler, TrainingSet
from benchmark.training.train import train_run
from methods import get_method
from methods.base import TrainContext
from methods.strong_weak import StrongWeak
from methods.vanilla_hybrid import VanillaHybrid
from methods.weak_only import WeakOnly
from tests.conftest import tiny_params

MODEL = tiny_params()["model"]
SIZE = 32
KINDS = ("filled", "ellipse", "grabcut")


def make_set(n=6, n_strong=2, seed=0) -> TrainingSet:
    """Noisy images with one bright disc each; the mask is the disc, the weak label its filled box."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    images, masks, boxes = [], [], []
    for _ in range(n):
        cy, cx, radius = rng.integers(9, SIZE - 9), rng.integers(9, SIZE - 9), rng.integers(4, 7)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
        images.append(np.clip(60 + 120 * disc + rng.normal(0, 8, disc.shape), 0, 255).astype(np.uint8))
        masks.append(disc.astype(np.uint8))
        boxes.append(box_map(disc.shape, component_boxes(disc)))
    is_strong = np.arange(n) < n_strong
    return TrainingSet(np.stack(images), np.stack(masks), np.stack(boxes), is_strong, torch.device("cpu"))


def context_for(training_set: TrainingSet) -> TrainContext:
    return TrainContext(training_set=training_set,
                        make_sampler=lambda strong, weak, seed: BatchSampler(training_set, 4, 0.5, strong, weak, seed),
                        train_params={}, device=torch.device("cpu"), epochs=1, steps_per_epoch=1, seed=0)


FLIPS = torch.tensor([[False, False], [True, False], [False, True], [True, True], [True, False], [False, True]])


def full_batch(training_set, flips=FLIPS):
    return training_set.batch(torch.arange(len(training_set)), flips[:len(training_set)])


def flip_like(array: np.ndarray, flips: torch.Tensor) -> np.ndarray:
    """Apply per-sample [horizontal, vertical] flips to (N, H, W), as the training set does."""
    out = array.copy()
    for i, (horizontal, vertical) in enumerate(flips.tolist()):
        if horizontal:
            out[i] = out[i][:, ::-1]
        if vertical:
            out[i] = out[i][::-1, :]
    return out


def total(terms):
    return sum(terms.values())


# Weak-Only ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_weak_only_loss_depends_only_on_boxes(kind):
    torch.manual_seed(0)
    training_set = make_set(n_strong=0)
    method = WeakOnly(MODEL, {"box_target": kind})
    method.on_train_start(context_for(training_set))
    method.train()
    batch = full_batch(training_set)
    with torch.no_grad():
        base = method.training_step(batch)
        other_masks = method.training_step(replace(batch, masks=torch.rand_like(batch.masks).round()))
        shifted = batch.boxes.roll(3, -1)
        extra = {BOX_TARGET_LAYER: batch.extra[BOX_TARGET_LAYER].roll(3, -1)} if batch.extra else {}
        other_boxes = method.training_step(replace(batch, boxes=shifted, extra=extra))
    assert set(base) == {"weak_structure"}
    assert torch.equal(total(base), total(other_masks)), "masks must not matter"
    assert not torch.allclose(total(base), total(other_boxes)), "box targets must matter"


# Vanilla-Hybrid -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["filled", "ellipse"])
def test_vanilla_hybrid_uses_masks_for_strong_and_box_targets_for_weak(kind):
    torch.manual_seed(0)
    training_set = make_set(n_strong=3)
    method = VanillaHybrid(MODEL, {"box_target": kind})
    method.on_train_start(context_for(training_set))
    method.train()
    batch = full_batch(training_set)
    strong = batch.is_strong
    target = method.target(batch)
    assert torch.equal(target[strong], batch.masks[strong])
    expected_weak = box_targets(np.zeros((3, SIZE, SIZE), np.uint8), batch.boxes[~strong, 0].numpy().astype(np.uint8),
                                kind)
    assert torch.equal(target[~strong, 0], torch.from_numpy(expected_weak).float())
    assert not torch.equal(target[~strong], batch.boxes[~strong]) or kind == "filled"

    with torch.no_grad():
        terms = method.training_step(batch)
        assert set(terms) == {"strong_structure", "weak_structure"}
        logits = method.net(batch.images)
        # "treated alike": the two terms add up to one loss averaged over the whole batch
        assert float(total(terms)) == pytest.approx(float(structure_loss(logits, target)), rel=1e-5)

        strong_boxes_changed = torch.where(strong[:, None, None, None], batch.boxes.roll(4, -1), batch.boxes)
        unchanged = method.training_step(replace(batch, boxes=strong_boxes_changed))
        assert torch.equal(unchanged["strong_structure"], terms["strong_structure"])  # a strong image's box is unused
        moved = method.training_step(replace(batch, masks=batch.masks.roll(4, -1)))
        assert not torch.allclose(moved["strong_structure"], terms["strong_structure"])
        assert torch.equal(moved["weak_structure"], terms["weak_structure"])
        weak_moved = replace(batch, boxes=batch.boxes.roll(4, -1),
                             extra={k: v.roll(4, -1) for k, v in batch.extra.items()})
        moved = method.training_step(weak_moved)
        assert torch.equal(moved["strong_structure"], terms["strong_structure"])
        assert not torch.allclose(moved["weak_structure"], terms["weak_structure"])


@pytest.mark.parametrize("name", ["vanilla_hybrid", "strong_weak"])
def test_a_batch_without_one_kind_gives_zero_terms(name):
    torch.manual_seed(0)
    method = get_method(name)(MODEL, {})
    method.train()
    for is_strong in (torch.ones(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool)):
        training_set = make_set(n=4, n_strong=int(is_strong.sum()))
        terms = method.training_step(full_batch(training_set))
        missing = "weak" if is_strong.all() else "strong"
        assert all(torch.isfinite(v) for v in terms.values())
        assert all(float(v.detach()) == 0.0 for k, v in terms.items() if k.startswith(missing))
        assert any(float(v.detach()) > 0.0 for k, v in terms.items() if not k.startswith(missing))
        total(terms).backward()
        method.zero_grad(set_to_none=True)


# Strong-Weak --------------------------------------------------------------------------------

def branch_grad(module):
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


@pytest.mark.parametrize("options", [{}, {"neck_layers": 0}, {"branch_inputs": "all"}, {"neck_layers": 2}])
def test_strong_weak_branches_only_learn_from_their_own_kind(options):
    torch.manual_seed(0)
    training_set = make_set(n=4, n_strong=2)
    method = StrongWeak(MODEL, options)
    method.train()
    batch = full_batch(training_set)

    terms = method.training_step(batch)
    assert set(terms) == {"strong_structure", "weak_structure"}
    terms["strong_structure"].backward()
    assert branch_grad(method.weak_branch) == 0.0, "strong images must not reach the weak branch"
    assert branch_grad(method.strong_branch) > 0 and branch_grad(method.encoder) > 0
    method.zero_grad(set_to_none=True)

    terms = method.training_step(batch)
    terms["weak_structure"].backward()
    assert branch_grad(method.strong_branch) == 0.0, "weak images must not reach the strong branch"
    assert branch_grad(method.weak_branch) > 0 and branch_grad(method.encoder) > 0
    if method.options["neck_layers"]:
        assert branch_grad(method.neck) > 0, "the neck is shared"
    method.zero_grad(set_to_none=True)

    # image level: each branch's logits receive gradient only on the images of its own kind
    outputs = {}

    def keep(name):
        def hook(module, inputs, output):
            output.retain_grad()
            outputs[name] = output
        return hook

    handles = [method.strong_branch.register_forward_hook(keep("strong")),
               method.weak_branch.register_forward_hook(keep("weak"))]
    total(method.training_step(batch)).backward()
    for handle in handles:
        handle.remove()
    for name, own in (("strong", batch.is_strong), ("weak", ~batch.is_strong)):
        grad = outputs[name].grad
        if options.get("branch_inputs") == "all":
            assert grad.shape[0] == len(own) and float(grad[~own].abs().sum()) == 0.0, \
                f"the {name} branch must get no gradient from the other kind's images"
            grad = grad[own]
        else:
            assert grad.shape[0] == int(own.sum()), f"the {name} branch forwards its own kind only"
        assert all(float(g.abs().sum()) > 0 for g in grad)


def test_strong_weak_strong_branch_ignores_weak_images_and_labels():
    """With own-kind branch inputs, the strong term does not change when weak images' labels change."""
    torch.manual_seed(0)
    training_set = make_set(n=4, n_strong=2)
    method = StrongWeak(MODEL, {})
    method.train()
    batch = full_batch(training_set)
    with torch.no_grad():
        terms = method.training_step(batch)
        moved = method.training_step(replace(batch, boxes=batch.boxes.roll(5, -1)))
    assert torch.equal(terms["strong_structure"], moved["strong_structure"])
    assert not torch.allclose(terms["weak_structure"], moved["weak_structure"])


def test_strong_weak_predicts_with_the_strong_branch_only():
    torch.manual_seed(0)
    method = StrongWeak(MODEL, {"neck_layers": 1}).eval()
    images = torch.randn(2, 1, SIZE, SIZE)
    with torch.no_grad():
        before = method.predict(images)
        assert torch.equal(before, method.strong_branch(method.features(images)))
        for parameter in method.weak_branch.parameters():
            parameter.add_(torch.randn_like(parameter))
        assert torch.equal(method.predict(images), before), "the weak branch must not affect predictions"
        for parameter in method.strong_branch.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
        assert not torch.allclose(method.predict(images), before)


# Box targets inside batches -----------------------------------------------------------------

def target_in_batch(method, batch):
    if isinstance(method, StrongWeak):
        return method.weak_target(batch)
    return method.target(batch)


@pytest.mark.parametrize("name", ["weak_only", "vanilla_hybrid", "strong_weak"])
@pytest.mark.parametrize("kind", KINDS)
def test_box_target_option_gives_the_expected_target_under_flips(name, kind):
    torch.manual_seed(0)
    training_set = make_set(n=6, n_strong=0 if name == "weak_only" else 2)
    method = get_method(name)(MODEL, {"box_target": kind})
    method.on_train_start(context_for(training_set))
    assert (BOX_TARGET_LAYER in training_set.layers) == (kind != "filled")

    weak = torch.nonzero(~training_set.is_strong).flatten()
    flips = FLIPS[:len(weak)]
    batch = training_set.batch(weak, flips)
    got = target_in_batch(method, batch)[:, 0].numpy()

    images = training_set.images[weak, 0].numpy()
    boxes = training_set.boxes[weak, 0].numpy()
    expected = flip_like(box_targets(images, boxes, kind), flips)  # computed unflipped, then flipped
    assert np.array_equal(got, expected)
    inside = batch.boxes[:, 0].numpy()
    assert np.all(inside[got > 0] == 1), "a box target stays inside its (flipped) box"
    if kind == "filled":
        assert np.array_equal(got, inside)
    else:
        assert got.sum() < inside.sum() and got.sum(axis=(1, 2)).min() > 0
    if kind == "ellipse":  # inscribed ellipses are flip-symmetric: equal to the target of the flipped box
        assert np.array_equal(got, box_targets(np.zeros_like(images), inside.astype(np.uint8), "ellipse"))
    if kind == "grabcut":  # GrabCut follows the bright disc, so it is closer to the mask than the box is
        masks = flip_like(training_set.masks[weak, 0].numpy(), flips)
        assert (got != masks).sum() < (inside != masks).sum()

    # nothing of the layer is in the weights, and a fresh method predicts without on_train_start
    state = method.state_dict()
    assert not any("box_target" in key for key in state)
    fresh = get_method(name)(MODEL, {"box_target": kind})
    fresh.load_state_dict(state)
    method.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh.predict(batch.images), method.predict(batch.images))


@pytest.mark.parametrize("name", ["weak_only", "vanilla_hybrid", "strong_weak"])
def test_non_filled_target_needs_on_train_start_and_options_are_checked(name):
    cls = get_method(name)
    method = cls(MODEL, {"box_target": "ellipse"})
    with pytest.raises(RuntimeError, match="on_train_start"):
        method.training_step(full_batch(make_set(n=4, n_strong=0)))
    for bad in ({"box_target": "polygon"}, {"loss": "focal"}, {"bce_weighting": "both"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            cls(MODEL, bad)
    assert cls.default_options["box_target"] == "filled" and cls.default_options["loss"] == "structure"


def test_strong_weak_options_are_checked():
    for bad in ({"neck_layers": 4}, {"neck_layers": -1}, {"neck_layers": 1.5}, {"branch_inputs": "both"},
                {"weak_weight": -1.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            StrongWeak(MODEL, bad)
    assert StrongWeak.default_options["neck_layers"] == 1, "the fairness study chose the shared neck"
    assert len(StrongWeak(MODEL, {"neck_layers": 3}).neck) == 9


def test_registry_names_and_label_kinds():
    assert (WeakOnly.display_name, WeakOnly.uses_strong, WeakOnly.uses_weak) == ("Weak-Only", False, True)
    assert (VanillaHybrid.display_name, VanillaHybrid.uses_strong, VanillaHybrid.uses_weak) == \
        ("Vanilla-Hybrid", True, True)
    assert (StrongWeak.display_name, StrongWeak.uses_strong, StrongWeak.uses_weak) == ("Strong-Weak", True, True)
    assert get_method("weak_only") is WeakOnly and get_method("strong_weak") is StrongWeak


# Tiny real runs through the trainer --------------------------------------------------------

@pytest.mark.parametrize("method, fraction, options", [
    ("weak_only", 0.0, {}),
    ("vanilla_hybrid", 0.1, {}),
    ("strong_weak", 0.1, {"neck_layers": 1}),
])
def test_tiny_real_run(tiny_prepared, tmp_path, method, fraction, options):
    params, prepared = tiny_prepared
    spec = RunSpec(name="run", method=method, strong_fraction=fraction, seeds=(0,), row=get_method(method).display_name,
                   options=options)
    info = train_run(spec, params, prepared, tmp_path, show_progress=False)
    log = pd.read_csv(tmp_path / "run" / "train_log.csv")
    assert len(log) == 1 and np.isfinite(log.drop(columns=["epoch"]).to_numpy()).all()
    expected = {"weak_structure"} if method == "weak_only" else {"strong_structure", "weak_structure"}
    assert expected <= set(log.columns)
    assert info["n_weak_used"] > 0 and (info["n_strong_used"] > 0) == (method != "weak_only")
    fresh = get_method(method)(params["model"], options)  # evaluation's path: rebuild, load, predict
    fresh.load_state_dict(torch.load(tmp_path / "run" / "models" / "seed_0.pt", weights_only=True))
    with torch.no_grad():
        assert torch.isfinite(fresh.eval().predict(torch.randn(2, 1, SIZE, SIZE))).all()
