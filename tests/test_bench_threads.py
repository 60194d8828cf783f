"""benchmark.tools.bench_threads: the schedules a run's seeds can take, as the trainer would run them."""
import pytest

from benchmark.tools.bench_threads import main, schedules
from benchmark.training.train import seed_schedule


def test_schedules_are_waves_of_concurrent_seeds():
    assert schedules(3, 2) == {"serial": [1, 1, 1], "2 workers": [2, 1], "3 workers": [3]}
    assert schedules(3, 16) == {"serial": [1, 1, 1], "2 workers": [2, 1], "3 workers": [3]}
    assert schedules(1, 2) == {"serial": [1]}
    assert schedules(4, 1) == {"serial": [1, 1, 1, 1], "2 workers": [2, 2]}, "one core: at most one extra worker"


def test_the_default_schedule_is_among_the_measured_ones():
    import torch

    workers, _ = seed_schedule({"seed_workers": "auto", "num_threads": 2}, 3, torch.device("cpu"))
    assert f"{workers} workers" in schedules(3, 2)


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        main(["--steps", "0"])
