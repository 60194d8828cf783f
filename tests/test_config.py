"""params.yaml errors name the key and what to do."""
import pytest

from benchmark.config import ConfigError, all_runs, load_params, run_spec, validate_params
from tests.conftest import REPO, tiny_params


def test_repository_params_resolve():
    params = load_params(REPO / "params.yaml")
    runs = all_runs(params)
    assert {"strong_only_100", "strong_only_10"} <= {run.name for run in runs}
    assert run_spec(params, "strong_only_10").strong_fraction == 0.1


def test_bad_runs_are_reported_with_their_key(tmp_path):
    params = tiny_params()
    with pytest.raises(ConfigError, match="runs.nope is not configured"):
        run_spec(validate_params(params), "nope")
    params["runs"]["bad"] = {"method": "strong_only", "strong_fraction": 1.5}
    with pytest.raises(ConfigError, match=r"runs.bad.strong_fraction = 1.5: must be a number in \[0, 1\]"):
        validate_params(params)
    params["runs"]["bad"] = {"strong_fraction": 0.5}
    with pytest.raises(ConfigError, match="runs.bad.method: missing"):
        validate_params(params)
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "params.yaml")
