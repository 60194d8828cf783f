"""Is DCR's instance-indicator step (beta 1.0, raw gradient dot products) still a working DII at 192 px?

    PYTHONPATH=. python measurements/dcr_indicators_2026-12-06.py PREPARED_96 PREPARED_192 [--seed 0]

DCR's `beta: 1.0` was set from dot products measured at 96 px (methods/dcr.py). A dot product of loss gradients
is not scale-free in principle, so this trains run dcr_10 exactly as the pipeline does (train_seed, params.yaml,
fp32, the given prepared data) for its first epoch at each size, records the similarities of the first indicator
update (after epoch 1, where the learning-rate factor is 1) and the indicators it leaves, then stops the run.
"""
from __future__ import annotations

import argparse
import copy
import tempfile

import numpy as np
import torch

import methods.dcr as dcr
from benchmark.config import load_params, run_spec
from benchmark.data.prepared import load_prepared
from benchmark.training.train import train_seed


class FirstUpdateDone(Exception):
    pass


def first_update(params: dict, prepared: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    recorded = {}
    original = dcr.DCR.update_indicators

    def record(self):
        dots = original(self)
        weak = ~self._context.training_set.is_strong.to(self.gamma.device)
        recorded["dots"], recorded["gamma"] = dots.numpy().copy(), self.gamma[weak].numpy().copy()
        raise FirstUpdateDone

    dcr.DCR.update_indicators = record
    try:
        train_seed(run_spec(params, "dcr_10"), seed, params, load_prepared(prepared), {}, show_progress=False)
    except FirstUpdateDone:
        pass
    finally:
        dcr.DCR.update_indicators = original
    return recorded["dots"], recorded["gamma"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("prepared", nargs="+", help="prepared-data folders (each at its own image size)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    base = load_params("params.yaml")
    print("| image size | weak images | dot products: median (5-95%) | positive | gamma after update 1: "
          "median, < 1, < 0.5, = 0 |\n|---|---|---|---|---|")
    for folder in args.prepared:
        data = load_prepared(folder)
        size = int(data.arrays["cbis"]["images"].shape[1])
        params = copy.deepcopy(base)
        params["data"]["image_size"] = size
        params["train"].update(precision="fp32", checkpoint_dir=tempfile.mkdtemp(), num_threads=0)
        dots, gamma = first_update(params, folder, args.seed)
        q05, q50, q95 = np.percentile(dots, [5, 50, 95])
        print(f"| {size} px | {len(dots)} | {q50:.3f} ({q05:.3f} .. {q95:.3f}) | {np.mean(dots > 0):.0%} | "
              f"{np.median(gamma):.3f}, {np.mean(gamma < 1):.0%}, {np.mean(gamma < 0.5):.0%}, "
              f"{np.mean(gamma == 0):.0%} |", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
