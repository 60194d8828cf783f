"""DCR: dynamic instance indicators (per-weak-image loss weights) with dynamic co-regularisation.

Paper: Pan, Bi, Yang, Zhu, Bian, "Label-efficient hybrid-supervised learning for medical image
segmentation", AAAI 2022; a baseline of Xiong et al., ISBI 2024, Table 1 (row "DCR", 10% strong /
90% weak). No code was released; this is our re-implementation.

Follows the source:
- dynamic instance indicator (DII): every weak image k carries gamma_k in [0, 1] (init 1) that multiplies
  its loss; every tau steps (Algorithm 1) the indicators take one upper-level gradient step. With the
  one-step look-ahead theta' = theta - alpha grad, the upper-level gradient is
  dL(X_S, theta')/dgamma_k = -alpha g_S . H^-1 g_k with H^-1 ~ I (Algorithm 1, lines 15-17), and the
  step with the upper-level learning rate beta (line 19) is
  gamma_k <- clip(gamma_k + beta alpha g_S . g_k, 0, 1): the raw gradient dot product, scaled by the
  network's learning rate alpha. g_S is the mean loss gradient on a batch of strong *training* images
  (never test or validation images) and g_k the loss gradient of weak image k. A weak label whose
  gradient agrees with the strong images' is trusted more; one that pulls against them (e.g. a box off
  the mass) is down-weighted. Default: `similarity: dot`, `lr_scaled: true`;
- co-regularisation against the accumulation of errors from distorted weak labels, by a second network
  whose predictions regularise the first on the weak images, with a ramped weight.

Ours (reconstruction; each an option):
- gradients are restricted to the last decoder block and the segmentation head (`dii_scope`), computed
  with torch.func (functional_call + vmap + grad) for every weak image of the training set, with the
  network in eval mode (batch-norm on running statistics, so each image's gradient is its own) and the
  activations entering the last block computed without gradient;
- beta, which the source does not state: the step is written beta x (alpha_t / alpha_0) x g_S . g_k, i.e.
  our `beta` is the source's beta times the initial learning rate alpha_0, so one value means the same
  at any `train.lr`; alpha_t follows the run's schedule (poly decay). Default `beta: 1.0`: at the first
  update gamma moves by the raw dot product. Measured at the default (96 px, lr 1e-3, after one epoch):
  the dot products have median 0.15, 5-95% range -0.26..0.78, so a label that disagrees loses ~0.25 per
  update early and less as alpha decays; a literal upper-level rate of 1 (our beta = alpha_0 = 1e-3)
  would leave every gamma at 1, i.e. no DII at all. (At initialisation every weak gradient agrees: dots
  6.7-12.9, all positive). At 192 px, the default's size since the scale study, the same check gives dot
  products of the same order (median 0.34, 5-95% -0.15..0.83; 11% of the weak labels down-weighted after
  the first update, none zeroed), so beta 1.0 keeps the DII active there without saturating it
  (measurements/dcr_indicators_2026-12-06.md; one seed, first update: a check of the mechanism, not a tuning);
- `similarity` other than the source's `dot`: `cosine` (cos(g_S, g_k), bounded) and `scaled`
  (g_S . g_k / (|g_S| mean_k |g_k|)); `lr_scaled: false` drops the alpha_t / alpha_0 factor. An earlier
  reading used cosine with a fixed beta 0.5 per update, not scaled by the learning rate.
  In the fairness study (studies/fair_comparison/report.md: 3 seeds, 900 fresh held-out images,
  12 epochs, tie margin 1.0 Dice): the source's step with beta 1.0 (default) 40.94 +- 0.89 held-out
  Dice, beta 0.1 41.27 +- 1.26 (+0.34, a tie), the earlier cosine / fixed 0.5 reading 40.91 +- 0.81
  (-0.03): the default stays;
- `tau`: "epoch" (default: once per epoch, at its last step) or a number of optimiser steps;
  g_S from one strong batch of `batch_size` images drawn by its own sampler;
- the loss of weak image k is gamma_k x loss(prediction, box target), summed over the weak images of the
  batch and divided by their count (a down-weighted image really counts less; no renormalisation);
- co-regularisation: a mean teacher, an exponential moving average (`ema_decay` 0.99, with the usual
  warm-up min(decay, 1 - 1/(step+1))) of the student, fed the image plus Gaussian noise (`teacher_noise`
  0.1, in normalised units); consistency = mean squared difference of the two probability maps on the
  weak images, weighted `consistency_weight` x exp(-5 (1 - t/T)^2), T = `consistency_rampup` x the run's
  total steps; `gamma_on_consistency: false` (the consistency does not use the box, so it is not
  down-weighted); the student predicts at test time (`predict_with`);
- `box_target`: the weak images' target from each box, `filled` (default) | `ellipse` | `grabcut`;
- `loss`: mask loss of strong images and box targets (default `structure`, F3Net's loss, as Strong-Only).
Cost: a step is the student's forward/backward plus the teacher's forward on the weak half of the batch
(~1.15x a Strong-Only step); an indicator update is one no-gradient forward over the weak training set
plus the vmapped tail gradients (~20 Strong-Only steps at 96 px for 360 weak images), so `tau: epoch`
adds ~0.4x per step amortised.
The indicators are a non-persistent buffer (sized in on_train_start, absent from the state dict), so a
freshly built model loads the saved weights for evaluation.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from benchmark.nn.box_targets import KINDS as BOX_KINDS
from benchmark.nn.box_targets import box_target_of, register_box_target
from benchmark.nn.losses import EPS, full_precision, mask_loss
from benchmark.nn.networks import build_unet
from methods import register
from methods.base import Batch, SegmentationMethod, TrainContext

SIMILARITIES = ("cosine", "scaled", "dot")
PREDICTORS = ("student", "teacher")


def sigmoid_rampup(step: int, length: float) -> float:
    if length <= 0:
        return 1.0
    phase = 1.0 - min(step, length) / length
    return math.exp(-5.0 * phase * phase)


class _Tail(nn.Module):
    """The last decoder block and the head of an smp U-Net, as one module for torch.func."""

    def __init__(self, block: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.block, self.head = block, head

    def forward(self, x: torch.Tensor, height: int, width: int, skip: torch.Tensor | None) -> torch.Tensor:
        return self.head(self.block(x, height, width, skip_connection=skip))


@register
class DCR(SegmentationMethod):
    display_name = "DCR"
    uses_strong = True
    uses_weak = True
    option_choices = {"box_target": BOX_KINDS, "similarity": SIMILARITIES, "predict_with": PREDICTORS}
    default_options = {
        "loss": "structure",  # mask loss of strong masks and box targets [ours: as Strong-Only]
        "bce_weighting": "weighted",
        "box_target": "filled",  # filled | ellipse | grabcut [ours]
        "tau": "epoch",  # DII update interval: "epoch" or a number of steps [src: tau; value ours]
        "beta": 1.0,  # DII step: the source's upper-level lr x alpha_0 [value ours]
        "similarity": "dot",  # dot [src] | cosine | scaled [ours]
        "lr_scaled": True,  # step x alpha_t / alpha_0, the network's lr schedule [src]
        "gamma_init": 1.0,  # [src]
        "dii_batch_size": 32,  # weak images per vmap call (memory only) [ours]
        "ema_decay": 0.99,  # teacher EMA [ours]
        "teacher_noise": 0.1,  # std of the Gaussian noise on the teacher's input [ours]
        "consistency_weight": 1.0,  # [ours]
        "consistency_rampup": 0.4,  # fraction of the run's total steps [ours]
        "gamma_on_consistency": False,  # [ours]
        "predict_with": "student",  # student | teacher [ours]
    }

    def build(self) -> None:
        o = self.options
        if o["tau"] != "epoch" and not (isinstance(o["tau"], int) and o["tau"] > 0):
            raise ValueError(f"option tau must be 'epoch' or a positive number of steps, got {o['tau']!r}")
        if not isinstance(o["lr_scaled"], bool):
            raise ValueError(f"option lr_scaled must be true or false, got {o['lr_scaled']!r}")
        if not 0.0 <= float(o["gamma_init"]) <= 1.0 or not 0.0 <= float(o["ema_decay"]) <= 1.0:
            raise ValueError("options gamma_init and ema_decay must be in [0, 1]")
        self.student = build_unet(self.model_params)
        self.teacher = copy.deepcopy(self.student)
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        self.teacher.eval()
        # per-image indicators over the training set: sized in on_train_start, never saved
        self.register_buffer("gamma", torch.ones(0), persistent=False)
        self.step = 0
        self.total_steps = 0  # unknown until on_train_start: no ramp-up
        self.tau_steps = 0  # 0: no DII updates (e.g. training_step called outside the trainer)
        self.dii_updates = 0
        self._context: TrainContext | None = None
        self._strong_sampler = None

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # the teacher is an average, never trained: batch-norm on its running statistics
        return self

    # -- hooks ----------------------------------------------------------------------------------
    def on_train_start(self, context: TrainContext) -> None:
        register_box_target(context, self.options["box_target"])
        self.gamma = torch.full((len(context.training_set),), float(self.options["gamma_init"]), device=context.device)
        self.gamma[context.training_set.is_strong.to(context.device)] = 1.0
        tau = self.options["tau"]
        self.tau_steps = context.steps_per_epoch if tau == "epoch" else int(tau)
        self.step, self.total_steps, self.dii_updates = 0, context.total_steps, 0
        self._context = context
        try:
            self._strong_sampler = context.make_sampler(True, False, context.seed + 104729)
        except ValueError:  # no strong image: nothing to measure the weak labels against
            self._strong_sampler = None
        self.teacher.load_state_dict(self.student.state_dict())

    def training_state(self) -> dict:
        sampler = self._strong_sampler.state_dict() if self._strong_sampler is not None else None
        return {"gamma": self.gamma, "step": self.step, "dii_updates": self.dii_updates, "strong_sampler": sampler}

    def load_training_state(self, state: dict) -> None:
        self.gamma = state["gamma"].to(self.gamma.device)
        self.step, self.dii_updates = int(state["step"]), int(state["dii_updates"])
        if state["strong_sampler"] is not None:
            self._strong_sampler.load_state_dict(state["strong_sampler"])

    def after_optimizer_step(self, step: int) -> None:
        self.step = step + 1
        self.ema_update(step)
        last = self.total_steps and self.step >= self.total_steps  # an update after the last step changes nothing
        if self.tau_steps and self._strong_sampler is not None and self.step % self.tau_steps == 0 and not last:
            self.update_indicators()

    @torch.no_grad()
    def ema_update(self, step: int) -> None:
        decay = min(float(self.options["ema_decay"]), 1.0 - 1.0 / (step + 1))
        for teacher, student in zip(self.teacher.parameters(), self.student.parameters()):
            teacher.lerp_(student, 1.0 - decay)
        for teacher, student in zip(self.teacher.buffers(), self.student.buffers()):
            teacher.copy_(student)

    # -- dynamic instance indicators ------------------------------------------------------------
    def _tail_inputs(self, images: torch.Tensor) -> tuple[torch.Tensor, int, int, torch.Tensor | None]:
        """The inputs of the student's last decoder block for `images` (no gradient)."""
        captured = {}

        def hook(module, args, kwargs):
            captured["args"], captured["kwargs"] = args, kwargs

        handle = self.student.decoder.blocks[-1].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            with torch.no_grad():
                self.student(images)
        finally:
            handle.remove()
        args, kwargs = captured["args"], captured["kwargs"]
        x, height, width = args[0], int(args[1]), int(args[2])
        skip = kwargs.get("skip_connection", args[3] if len(args) > 3 else None)
        return x, height, width, skip

    def _per_sample_grads(self, tail: _Tail, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(B, P) loss gradients of each image w.r.t. the tail's parameters (flattened)."""
        params = {name: p.detach() for name, p in tail.named_parameters()}
        buffers = dict(tail.named_buffers())
        x, height, width, skip = self._tail_inputs(images)
        kind, weighting = self.options["loss"], self.options["bce_weighting"]

        def loss_one(p, x_k, skip_k, target_k):
            logits = functional_call(tail, (p, buffers), (x_k[None], height, width,
                                                          None if skip_k is None else skip_k[None]))
            return sum(mask_loss(logits, target_k[None], kind, weighting).values())

        grads = vmap(grad(loss_one), in_dims=(None, 0, None if skip is None else 0, 0))(params, x, skip, targets)
        return torch.cat([g.flatten(1) for g in grads.values()], dim=1)

    def update_indicators(self) -> torch.Tensor:
        """One DII step for every weak training image; returns the similarities s(g_S, g_k)."""
        context = self._context
        training_set = context.training_set
        was_training = self.student.training
        self.student.eval()
        tail = _Tail(self.student.decoder.blocks[-1], self.student.segmentation_head)
        try:
            strong = training_set.batch(*self._strong_sampler.next())
            g_strong = self._per_sample_grads(tail, strong.images, strong.masks).mean(0)
            weak_positions = torch.nonzero(~training_set.is_strong).flatten()
            chunk = max(1, int(self.options["dii_batch_size"]))
            g_weak = []
            for start in range(0, len(weak_positions), chunk):
                positions = weak_positions[start:start + chunk]
                batch = training_set.batch(positions, torch.zeros(len(positions), 2, dtype=torch.bool))
                g_weak.append(self._per_sample_grads(tail, batch.images,
                                                     box_target_of(batch, self.options["box_target"])))
        finally:
            self.student.train(was_training)
        if not g_weak:
            return torch.zeros(0)
        g_weak = torch.cat(g_weak)
        dots = g_weak @ g_strong
        similarity = self.options["similarity"]
        if similarity == "cosine":
            dots = dots / (g_weak.norm(dim=1) * g_strong.norm()).clamp_min(EPS)
        elif similarity == "scaled":
            dots = dots / (g_weak.norm(dim=1).mean() * g_strong.norm()).clamp_min(EPS)
        step_size = float(self.options["beta"]) * (self.lr_ratio() if self.options["lr_scaled"] else 1.0)
        index = weak_positions.to(self.gamma.device)
        self.gamma[index] = (self.gamma[index] + step_size * dots.to(self.gamma.device)).clamp(0, 1)
        self.dii_updates += 1
        return dots

    def lr_ratio(self) -> float:
        """alpha_t / alpha_0: the network's learning rate during the step just taken, relative to the first."""
        context = self._context
        return context.lr_at(max(self.step - 1, 0)) / context.lr_at(0)

    def image_weights(self, batch: Batch) -> torch.Tensor:
        """gamma of each image of the batch (1 for strong images, or before on_train_start)."""
        if len(self.gamma) == 0:
            return torch.ones(len(batch.indices), device=batch.images.device)
        return torch.where(batch.is_strong, torch.ones_like(self.gamma[batch.indices]), self.gamma[batch.indices])

    # -- training / prediction --------------------------------------------------------------------
    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        o = self.options
        strong = batch.is_strong.float()
        weak = 1.0 - strong
        n_weak = weak.sum()
        logits = self.student(batch.images)
        terms = {f"strong_{name}": value for name, value in
                 mask_loss(logits, batch.masks, o["loss"], o["bce_weighting"], weight=strong).items()}
        gamma_weak = self.image_weights(batch) * weak
        # weighted mean over gamma (what the loss helper computes) x sum(gamma)/n_weak = sum(gamma l) / n_weak
        rescale = gamma_weak.sum() / n_weak.clamp_min(1.0)
        terms |= {f"weak_{name}": value * rescale for name, value in
                  mask_loss(logits, box_target_of(batch, o["box_target"]), o["loss"], o["bce_weighting"],
                            weight=gamma_weak).items()}
        terms["consistency"] = logits.new_zeros((), dtype=torch.float32)
        weak_index = torch.nonzero(~batch.is_strong).flatten()
        if len(weak_index):  # the teacher (eval mode) runs on the weak images only
            with torch.no_grad():
                images = batch.images.index_select(0, weak_index)
                noise = float(o["teacher_noise"]) * torch.randn_like(images)
                teacher_prob = torch.sigmoid(full_precision(self.teacher(images + noise)))
            student_prob = torch.sigmoid(full_precision(logits.index_select(0, weak_index)))
            per_image = (student_prob - teacher_prob).pow(2).flatten(1).mean(1)
            if o["gamma_on_consistency"]:
                per_image = per_image * gamma_weak.index_select(0, weak_index)
            ramp = float(o["consistency_weight"]) * sigmoid_rampup(self.step, float(o["consistency_rampup"])
                                                                    * self.total_steps)
            terms["consistency"] = ramp * per_image.mean()
        return terms

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.student(images) if self.options["predict_with"] == "student" else self.teacher(images)
