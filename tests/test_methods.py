"""Registry-driven smoke test: every registered method, present and future, gets the same checks."""
import pytest
import torch

from methods import SegmentationMethod, available_methods, get_method
from methods.base import Batch
from tests.conftest import tiny_params

METHODS = available_methods()
MODEL = tiny_params()["model"]


def mixed_batch(size=32, n=4):
    torch.manual_seed(0)
    masks = torch.zeros(n, 1, size, size)
    masks[:, :, 10:20, 12:22] = 1
    boxes = torch.zeros_like(masks)
    boxes[:, :, 8:22, 10:24] = 1
    is_strong = torch.tensor([True, False] * (n // 2))
    return Batch(images=torch.randn(n, 1, size, size), masks=masks * is_strong[:, None, None, None], boxes=boxes,
                 is_strong=is_strong, indices=torch.arange(n))


def test_registry_is_populated():
    assert "strong_only" in METHODS
    with pytest.raises(KeyError, match="no methods/nope.py"):
        get_method("nope")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_contract(name):
    cls = METHODS[name]
    assert issubclass(cls, SegmentationMethod) and cls.display_name, f"{name} needs a display_name"
    assert cls.__doc__ or __import__(cls.__module__).__doc__
    method = cls(MODEL, {})
    method.train()
    terms = method.training_step(mixed_batch())
    assert terms and all(value.ndim == 0 and torch.isfinite(value) for value in terms.values())
    sum(terms.values()).backward()
    grads = [p.grad for p in method.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads), "the losses must reach the parameters"
    method.eval()
    with torch.no_grad():
        logits = method.predict(torch.randn(2, 1, 32, 32))
    assert logits.shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match="unknown option"):
        cls(MODEL, {"definitely_not_an_option": 1})
    assert set(cls.option_choices) <= set(cls.default_options), "every restricted option has a default"
    for key in cls.option_choices:
        with pytest.raises(ValueError, match=f"option {key} = .*: must be one of"):
            cls(MODEL, {key: "not-a-choice"})


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_trains_under_bf16_autocast(name):
    """The trainer's bf16 path: the network runs in bf16, every loss term comes back in float32."""
    method = METHODS[name](MODEL, {})
    method.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = method.training_step(mixed_batch())
    assert all(value.dtype == torch.float32 and torch.isfinite(value) for value in terms.values()), \
        {key: value.dtype for key, value in terms.items()}
    sum(terms.values()).backward()
