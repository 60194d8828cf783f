"""Wiring of methods/ours.py (FD, SPM, losses, ablation switches) and the step-time benchmark."""
import pytest
import torch
import torch.nn.functional as F

import methods.ours as ours_module
from benchmark.nn.losses import perception_loss, structure_loss
from methods import get_method
from methods.base import Batch
from tests.conftest import tiny_params

MODEL = tiny_params()["model"]
Ours = get_method("ours")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread is faster than two on a shared machine (no oversubscription); restored after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make(seed=0, **options):
    torch.manual_seed(seed)
    return Ours(MODEL, options)


def mixed_batch(n=4, size=32, strong=(True, False, True, False)):
    gen = torch.Generator().manual_seed(1)
    is_strong = torch.tensor(strong[:n])
    masks = torch.zeros(n, 1, size, size)
    boxes = torch.zeros(n, 1, size, size)
    for i in range(n):
        top, left = 4 + 3 * i, 6 + 2 * i
        masks[i, :, top + 1:top + 9, left + 2:left + 10] = 1
        boxes[i, :, top + 1:top + 9, left + 2:left + 10] = 1
    return Batch(images=torch.randn(n, 1, size, size, generator=gen), masks=masks * is_strong[:, None, None, None],
                 boxes=boxes, is_strong=is_strong, indices=torch.arange(n))


def spy_inputs(method):
    """Record the feature lists the two decoders receive."""
    seen = {}
    method.seg_branch.register_forward_pre_hook(lambda module, args: seen.__setitem__("seg", list(args[0])))
    method.aux_branch.register_forward_pre_hook(lambda module, args: seen.__setitem__("aux", list(args[0])))
    return seen


def test_class_attributes_and_documented_options():
    assert Ours.display_name == "Ours" and Ours.uses_strong and Ours.uses_weak
    doc = ours_module.__doc__
    assert "2403.09315" in doc and "Xiong" in doc
    for option in Ours.default_options:
        assert f"`{option}`" in doc, f"option {option} is not documented in the module docstring"
    assert Ours.default_options["feature_disentangle"] and Ours.default_options["spatial_prompt"]
    assert Ours.default_options["perception_loss"] and not Ours.default_options["detach_prompt"]
    assert Ours.default_options["fd_levels"] == "deepest"
    assert Ours.default_options["bce_weighting"] == "weighted"


@pytest.mark.parametrize("options", [{"fd_levels": "middle"}, {"prompt_levels": "skips"}, {"prompt_resize": "nearest"},
                                     {"bce_weighting": "plain"}, {"spatial_prompt": "yes"}])
def test_bad_option_values_are_rejected(options):
    with pytest.raises(ValueError, match="option"):
        Ours(MODEL, options)


def test_loss_terms_and_perception_switch():
    batch = mixed_batch()
    full, without_pl = make(), make(perception_loss=False)
    full.eval(), without_pl.eval()  # running statistics: both forward passes are the same function
    with torch.no_grad():
        terms, terms_wo = full.training_step(batch), without_pl.training_step(batch)
    assert set(terms) == {"seg_ppa", "aux_ppa", "aux_percept"}
    assert set(terms_wo) == {"seg_ppa", "aux_ppa"}
    for name in terms_wo:
        assert torch.equal(terms[name], terms_wo[name])
    assert float(terms["aux_percept"]) > 0
    # the terms are Eq. 1-2 on the right outputs and targets
    with torch.no_grad():
        seg, aux = full.forward_both(batch.images)
    strong = batch.is_strong
    assert torch.allclose(terms["seg_ppa"], structure_loss(seg[strong], batch.masks[strong]))
    assert torch.allclose(terms["aux_ppa"], structure_loss(aux, 1 - batch.boxes))
    assert torch.allclose(terms["aux_percept"], perception_loss(aux, 1 - batch.boxes))


def test_seg_loss_uses_strong_images_only():
    method = make()
    method.eval()  # per-image outputs independent of the batch, so a sub-batch gives the same logits
    batch = mixed_batch()
    strong = batch.is_strong
    sub = Batch(images=batch.images[strong], masks=batch.masks[strong], boxes=batch.boxes[strong],
                is_strong=strong[strong], indices=batch.indices[strong])
    with torch.no_grad():
        assert torch.allclose(method.training_step(batch)["seg_ppa"], method.training_step(sub)["seg_ppa"],
                              rtol=1e-5, atol=1e-6)
        # a weak image's mask is never read
        altered = Batch(images=batch.images, masks=batch.masks.clone(), boxes=batch.boxes, is_strong=strong,
                        indices=batch.indices)
        altered.masks[~strong] = 1
        assert torch.equal(method.training_step(batch)["seg_ppa"], method.training_step(altered)["seg_ppa"])


def test_batch_without_strong_images_gives_zero_seg_term():
    method = make()
    method.train()
    terms = method.training_step(mixed_batch(strong=(False, False, False, False)))
    assert float(terms["seg_ppa"].detach()) == 0.0
    assert all(torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in method.parameters() if p.grad is not None)
    assert any(float(p.grad.abs().sum()) > 0 for p in method.aux_branch.parameters() if p.grad is not None)


@pytest.mark.parametrize("feature_disentangle", [True, False])
@pytest.mark.parametrize("spatial_prompt", [True, False])
def test_prompt_is_the_only_path_from_aux_decoder_to_segmentation(spatial_prompt, feature_disentangle):
    method = make(spatial_prompt=spatial_prompt, feature_disentangle=feature_disentangle)
    method.eval()
    images = mixed_batch().images
    with torch.no_grad():
        before = method.predict(images)
        for parameter in method.aux_branch.parameters():
            parameter.add_(torch.randn_like(parameter))
        after = method.predict(images)
    if spatial_prompt:
        assert not torch.allclose(before, after, atol=1e-5), "SPM on: Dec_a must steer Dec_s"
    else:
        assert torch.equal(before, after), "SPM off: Dec_a must not change the segmentation"


def test_without_fd_and_spm_both_decoders_read_the_same_features():
    method = make(feature_disentangle=False, spatial_prompt=False)
    seen = spy_inputs(method)
    method.eval()
    with torch.no_grad():
        method.predict(mixed_batch().images)
    assert len(seen["seg"]) == len(seen["aux"]) == 6
    assert all(torch.equal(s, a) for s, a in zip(seen["seg"], seen["aux"]))
    assert not any(isinstance(m, ours_module.FeatureSplit) for m in method.modules())


def test_without_fd_the_prompt_scales_the_raw_deepest_feature():
    method = make(feature_disentangle=False, prompt_levels="fd")
    seen = spy_inputs(method)
    method.eval()
    with torch.no_grad():
        _, aux_logits = method.forward_both(mixed_batch().images)
    raw = seen["aux"][-1]
    uncertainty = F.adaptive_avg_pool2d(1 - torch.sigmoid(aux_logits), raw.shape[-2:])
    assert torch.allclose(seen["seg"][-1], raw * uncertainty, atol=1e-6)
    assert all(torch.equal(s, a) for s, a in zip(seen["seg"][:-1], seen["aux"][:-1]))  # skips shared


def test_fd_deepest_splits_only_the_stride_32_feature():
    method = make(spatial_prompt=False)
    seen = spy_inputs(method)
    method.eval()
    images = mixed_batch().images
    with torch.no_grad():
        method.predict(images)
        raw = method.encoder(images)
        split = method.fd[str(len(raw) - 1)]
        f_r, f_o = split(raw[-1])
    assert split.to_related.in_channels == split.to_other.in_channels == raw[-1].shape[1] // 2
    assert f_r.shape == f_o.shape == raw[-1].shape
    assert not torch.allclose(seen["seg"][-1], seen["aux"][-1])
    assert torch.allclose(seen["seg"][-1], f_r) and torch.allclose(seen["aux"][-1], f_o)
    for level in range(len(raw) - 1):  # skips shared and untouched
        assert torch.equal(seen["seg"][level], seen["aux"][level])
        assert torch.allclose(seen["seg"][level], raw[level])


def test_fd_all_splits_every_skip_level_but_the_input():
    method = make(spatial_prompt=False, fd_levels="all")
    seen = spy_inputs(method)
    method.eval()
    with torch.no_grad():
        method.predict(mixed_batch().images)
    assert torch.equal(seen["seg"][0], seen["aux"][0])
    for level in range(1, 6):
        assert seen["seg"][level].shape == seen["aux"][level].shape
        assert not torch.allclose(seen["seg"][level], seen["aux"][level]), level


@pytest.mark.parametrize("options, prompted", [
    ({}, [5]),  # the default: the literal reading, FD and the prompt on the deepest f_r only
    ({"prompt_levels": "fd"}, [5]),
    ({"fd_levels": "all", "prompt_levels": "fd"}, [1, 2, 3, 4, 5]),
    ({"prompt_levels": "all"}, [1, 2, 3, 4, 5]),
    ({"fd_levels": "all", "prompt_levels": "deepest"}, [5]),
])
def test_prompt_levels(options, prompted):
    """Compare the seg decoder's inputs with SPM on and off (same weights): only the prompted levels change."""
    images = mixed_batch().images
    inputs = {}
    for spm in (True, False):
        method = make(spatial_prompt=spm, **options)
        seen = spy_inputs(method)
        method.eval()
        with torch.no_grad():
            _, aux_logits = method.forward_both(images)
        inputs[spm] = seen["seg"]
        if spm:
            uncertainty = 1 - torch.sigmoid(aux_logits)
    for level in range(6):
        on, off = inputs[True][level], inputs[False][level]
        if level in prompted:
            assert torch.allclose(on, off * F.adaptive_avg_pool2d(uncertainty, off.shape[-2:]), atol=1e-6), level
        else:
            assert torch.equal(on, off), level


def test_bilinear_prompt_resize_runs_and_differs():
    images = mixed_batch().images
    area, bilinear = make(), make(prompt_resize="bilinear")
    area.eval(), bilinear.eval()
    with torch.no_grad():
        assert not torch.allclose(area.predict(images), bilinear.predict(images))


@pytest.mark.parametrize("detach", [False, True])
def test_detach_prompt_stops_seg_gradients_into_aux_decoder(detach):
    method = make(detach_prompt=detach)
    method.train()
    method.training_step(mixed_batch())["seg_ppa"].backward()

    def grad_norm(module):
        return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)

    assert grad_norm(method.seg_branch) > 0 and grad_norm(method.encoder) > 0
    other_half = method.fd[str(5)].to_other
    if detach:
        assert grad_norm(method.aux_branch) == 0 and grad_norm(other_half) == 0
    else:
        assert grad_norm(method.aux_branch) > 0 and grad_norm(other_half) > 0


def test_predict_is_the_segmentation_decoder():
    method = make()
    method.eval()
    images = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        seg, aux = method.forward_both(images)
        assert torch.equal(method.predict(images), seg)
    assert seg.shape == aux.shape == (2, 1, 64, 64)


def test_a_few_steps_reduce_the_loss():
    method = make()
    method.train()
    batch = mixed_batch()
    optimizer = torch.optim.Adam(method.parameters(), lr=3e-3)
    totals = []
    for _ in range(12):
        total = sum(method.training_step(batch).values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(float(total.detach()))
    assert totals[-1] < totals[0]
