"""Reading and checking `params.yaml`: the one place every stage gets its configuration from.

`load_params()` reads the file and checks it against the schema below before a stage touches any
output; stages then pick the section they declared as a DVC params dependency, so DVC knows which
edits invalidate which stage. The schema declares every key once, with its type and range (pydantic,
strict: "abc", true or null is never turned into a number). Adding a key is one line in its
section's class; a key the schema does not know is refused. Every violation is one line naming the
key, the value and what is allowed:

    params.yaml: train.epochs = 0: must be an integer >= 1

Checks that need more than the file (the prepared data, a method's label kinds and options, the
machine's devices, the encoder weights) run at the start of the stage that needs them, before it
touches an output (benchmark.training.train, benchmark.evaluation.evaluate).
"""
import importlib.util
import pkgutil
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from benchmark.cli import ReportedError
from benchmark.schema_messages import CROSS_CHECK, error_line, show

PARAMS_FILE = Path("params.yaml")
SEED_MAX = 2**32 - 1  # numpy's global seeding (np.random.seed) takes 32-bit seeds
ENCODER_STRIDE = 32  # a depth-5 encoder halves the image 5 times: the side must be a multiple of 2**5
RUN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # a folder name under runs/ and a DVC stage key


class ConfigError(ReportedError, ValueError):
    """A value in params.yaml is missing or wrong; one line per problem, naming the key."""


# -- value types: each carries the sentence an error message uses for "what is allowed" -----------------
def _bounds(kind: str, ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None) -> str:
    low = f"[{ge:g}" if ge is not None else f"({gt:g}" if gt is not None else None
    high = f"{le:g}]" if le is not None else f"{lt:g})" if lt is not None else None
    if low and high:
        return f"{kind} in {low}, {high}"
    if low:
        return f"{kind} {'>=' if ge is not None else '>'} {low[1:]}"
    if high:
        return f"{kind} {'<=' if le is not None else '<'} {high[:-1]}"
    return kind


def Integer(ge: int | None = None, le: int | None = None, multiple_of: int | None = None) -> Any:
    text = _bounds("an integer", ge=ge, le=le) + (f" and a multiple of {multiple_of}" if multiple_of else "")
    return Annotated[int, Field(ge=ge, le=le, multiple_of=multiple_of, description=text)]


def Number(ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None) -> Any:
    """A finite real number (an integer is accepted, a boolean or a string is not)."""
    return Annotated[float, Field(ge=ge, gt=gt, le=le, lt=lt, allow_inf_nan=False,
                                  description=_bounds("a number", ge=ge, gt=gt, le=le, lt=lt))]


def OneOf(*values: str) -> Any:
    return Annotated[Literal[values], Field(description="one of " + ", ".join(values))]


def _distinct(values: list) -> list:
    repeated = sorted({value for value in values if values.count(value) > 1})
    if repeated:
        raise ValueError(f"lists {', '.join(map(str, repeated))} more than once")
    return values


def _auto_or_flag(value: Any) -> Any:
    if value == "auto" or isinstance(value, bool):
        return value
    raise PydanticCustomError("not_allowed", "not allowed")  # the message says what is, from the description


def _structure_window(value: Any) -> Any:
    if value == "scaled" or (isinstance(value, int) and not isinstance(value, bool) and value >= 3 and value % 2):
        return value
    raise PydanticCustomError("not_allowed", "not allowed")


def _seed_workers(value: Any) -> Any:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise PydanticCustomError("not_allowed", "not allowed")


def _percentile_pair(value: list[float]) -> list[float]:
    if not value[0] < value[1]:
        raise ValueError("low must be below high")
    return value


Flag = Annotated[bool, Field(description="true or false")]
Text = Annotated[str, Field(min_length=1, description="a non-empty string")]
Probability = Number(ge=0, le=1)
Seed = Integer(ge=0, le=SEED_MAX)
SeedList = Annotated[list[Seed], Field(min_length=1, description=f"a non-empty list of distinct integers in "
                                                                 f"[0, {SEED_MAX}]"), AfterValidator(_distinct)]
Device = Annotated[str, Field(pattern=r"^(auto|cpu|cuda|cuda:\d+)$",
                              description="auto, cpu, cuda or cuda:N (N = 0, 1, ...: a GPU index)")]
AutoOrFlag = Annotated[Union[Literal["auto"], bool], PlainValidator(_auto_or_flag),
                       Field(description="auto, true or false")]
PercentilePair = Annotated[list[Number(ge=0, le=100)], Field(min_length=2, max_length=2),
                           AfterValidator(_percentile_pair)]
StructureWindow = Annotated[Any, PlainValidator(_structure_window), Field(description=(
    "scaled (F3Net's 31 px at 352 px, scaled to the image) or an odd integer >= 3"))]
SeedWorkers = Annotated[Any, PlainValidator(_seed_workers), Field(description="auto or an integer >= 1")]
SbatchOption = Annotated[str, Field(pattern=r"^\s*(#SBATCH\s+)?--[A-Za-z0-9][A-Za-z0-9_-]*(=.*)?$", description=(
    "a long sbatch option, '--name=value' or '--flag'"))]
Percentiles = Annotated[PercentilePair | None, Field(description="null or [low, high] with 0 <= low < high <= 100")]


# Folders of the project that hold results, data, code or records. A folder the pipeline deletes from (the
# checkpoints) may be none of them, lie inside none of them and hold none of them; a study's git-ignored
# scratch, studies/<study>/work/, is the one place inside them it may use.
PROTECTED_FOLDERS = ("runs", "data", "reports", "benchmark", "methods", "tests", "measurements", "profiles", "studies",
                     ".git", ".dvc")


def own_folder_problem(value: str, root: Path | None = None) -> str | None:
    """Why `value` (relative to the project root, the working directory of every stage) cannot be a folder the
    pipeline deletes from; None when it can."""
    root = (root or Path.cwd()).resolve()
    path = (root / Path(value).expanduser()).resolve()
    if path == root or root.is_relative_to(path):
        return "it is the project folder or one above it"
    for name in PROTECTED_FOLDERS:
        if path.is_relative_to(root / name):
            inside = path.relative_to(root / name).parts
            if name == "studies" and len(inside) >= 2 and inside[1] == "work":
                return None
            return f"it lies inside {name}/, which holds the project's {'results' if name == 'runs' else 'files'}"
    return None


def _own_folder(value: str) -> str:
    problem = own_folder_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _strong_share(value: Any) -> Any:
    if value == "natural" or (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1):
        return value
    raise PydanticCustomError("not_allowed", "not allowed")


StrongShare = Annotated[Any, PlainValidator(_strong_share), Field(description=(
    "a number in [0, 1] (that share of every hybrid batch is strong) or natural (the run's own strong fraction)"))]


WEIGHTS_FOLDER = "weights"  # a dependency of the train stage (dvc.yaml): a local encoder weights file lies in it


def _encoder_weights(value: Any) -> str | None:
    if value is None or value == "imagenet":
        return value
    if not isinstance(value, str) or not value:
        raise PydanticCustomError("not_allowed", "not allowed")
    path = Path(value)
    if path.is_absolute() or ".." in path.parts or len(path.parts) < 2 or path.parts[0] != WEIGHTS_FOLDER:
        raise ValueError(f"the train stage depends on {WEIGHTS_FOLDER}/, so a file there re-trains when replaced: "
                         "copy or link it there")
    return value


EncoderWeights = Annotated[Any, PlainValidator(_encoder_weights), Field(description=(
    f"null (random initialisation), imagenet, or {WEIGHTS_FOLDER}/<file>: a local encoder state dict (.pth)"))]


OwnFolder = Annotated[str, Field(min_length=1, description=(
    "a folder of its own (default: checkpoints): not the project folder, nor inside "
    + ", ".join(f"{name}/" for name in PROTECTED_FOLDERS) + " (studies/<study>/work/ excepted)")),
    AfterValidator(_own_folder)]


def method_names() -> list[str]:
    """The method files under methods/ (found without importing the package, which needs torch)."""
    found = importlib.util.find_spec("methods")
    locations = list(found.submodule_search_locations or []) if found else []
    return sorted(info.name for info in pkgutil.iter_modules(locations) if info.name != "base"
                  and not info.name.startswith("_"))


def _known_method(name: str) -> str:
    if name == "base" or name.startswith("_"):
        raise ValueError(f"methods/{name}.py is part of the registry, not a method; available: "
                         f"{', '.join(method_names())}")
    if name not in method_names():
        raise ValueError(f"there is no methods/{name}.py; available: {', '.join(method_names())}")
    return name


def _cross_check(message: str) -> PydanticCustomError:
    """A rule between keys of one section; the message starts with the section-relative key it is about."""
    return PydanticCustomError(CROSS_CHECK, "{message}", {"message": message})


# -- the schema: one class per section, one line per key --------------------------------------------------
class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class RealData(Section):
    cbis_root: Text
    inbreast_root: Text
    cbis_layout: OneOf("auto", "uid", "nbia", "kaggle")
    workers: Integer(ge=0)


class Preprocess(Section):
    breast_crop: Flag
    mask_outside_crop: OneOf("uncropped", "skip")
    flip_to_left: Flag
    clip_percentiles: Percentiles


class Synthetic(Section):
    seed: Seed
    n_cbis: Integer(ge=2)
    extra_cbis_test: Integer(ge=0)
    n_inbreast: Integer(ge=1)
    supersample: Integer(ge=1)
    density_contrast: Number(ge=0)
    density_bias: Number()
    pectoral_probability: Probability
    mass_area_min: Number(gt=0, lt=1)
    mass_area_max: Number(gt=0, lt=1)
    spiculated_probability: Probability
    edge_blur_min: Number(ge=0)
    edge_blur_max: Number(ge=0)
    mass_contrast_median: Number(gt=0)
    film_grain: Number(ge=0)
    photon_count: Number(gt=0)

    @model_validator(mode="after")
    def _ranges(self) -> "Synthetic":
        for low, high in (("mass_area_min", "mass_area_max"), ("edge_blur_min", "edge_blur_max")):
            if getattr(self, low) > getattr(self, high):
                raise _cross_check(f"{high} = {getattr(self, high):g}: must be >= {low} ({getattr(self, low):g})")
        return self


class Data(Section):
    source: OneOf("synthetic", "real")
    image_size: Integer(ge=ENCODER_STRIDE, multiple_of=ENCODER_STRIDE)
    split: OneOf("random", "random_by_patient", "official")
    split_seed: Seed
    test_fraction: Number(gt=0, lt=1)
    box_margin: Integer(ge=0)
    real: RealData
    preprocess: Preprocess
    synthetic: Synthetic

    @model_validator(mode="after")
    def _split(self) -> "Data":
        if self.split == "official" and self.source != "real":
            raise _cross_check("split = official: only the real CBIS-DDSM has an official split; use random")
        if self.source == "synthetic":  # each synthetic image is a breast of its own: both random kinds alike
            total = self.synthetic.n_cbis
            n_test = round(self.test_fraction * total)
            if not 1 <= n_test < total:
                raise _cross_check(f"test_fraction = {self.test_fraction:g}: holds out {n_test} of the {total} "
                                   "CBIS-like images (synthetic.n_cbis); the test and the training split each need "
                                   "at least one image")
        return self


class Model(Section):
    architecture: OneOf("unet")
    encoder: Text
    encoder_weights: EncoderWeights
    decoder_channels: Annotated[list[Integer(ge=1)], Field(min_length=5, max_length=5, description=(
        "a list of 5 integers >= 1 (one per decoder stage of the depth-5 U-Net)"))]


class Train(Section):
    epochs: Integer(ge=1)
    batch_size: Integer(ge=1)
    optimizer: OneOf("adam")
    lr: Number(gt=0)
    poly_power: Number(ge=0)
    hflip: Flag
    vflip: Flag
    steps_per_epoch: OneOf("all_train", "method")
    strong_share: StrongShare
    structure_window: StructureWindow
    divergence_factor: Number(gt=1)
    device: Device
    num_threads: Integer(ge=0)
    seed_workers: SeedWorkers
    precision: OneOf("auto", "fp32", "bf16")
    channels_last: Flag
    compile: Flag
    deterministic: AutoOrFlag
    checkpoint_dir: OwnFolder
    checkpoint_every_s: Number(ge=0)


class Evaluate(Section):
    threshold: Number(gt=0, lt=1)
    batch_size: Integer(ge=1)
    figure_examples: Integer(ge=1)
    figure_seed: Seed
    protocol: OneOf("threshold", "authors")


class Run(Section):
    method: Annotated[str, AfterValidator(_known_method), Field(description="the name of a file methods/<name>.py")]
    strong_fraction: Probability
    row: Text | None = None  # the row name in the paper's tables; default: the method
    seeds: SeedList | None = None  # default: the top-level seeds
    options: dict[str, Any] = Field(default_factory=dict, description=(  # checked by the method (methods/base.py)
        "a mapping of the method's option names to values"))


RunName = Annotated[str, Field(pattern=RUN_NAME_PATTERN, description=(
    "a run name of letters, digits, '_', '.', '-' (it names a folder under runs/)"))]


class Report(Section):
    reference_row: Text
    reference_strong: Number(ge=0, le=100)
    figure_seed: Seed
    bootstrap_resamples: Integer(ge=100)
    scale_study: Annotated[Text | None, Field(description="a study's race.json path, or null")]


class LaunchLocal(Section):
    gpus: Annotated[list[Integer(ge=0)], Field(description="a list of distinct CUDA device ids (e.g. [0, 1]), or [] "
                                                            "for CPU processes"), AfterValidator(_distinct)]
    per_gpu: Integer(ge=1)
    time_limit_min: Integer(ge=1)


class LaunchSlurm(Section):
    partition: Annotated[Text | None, Field(description="a partition name, or null (the cluster's default)")]
    account: Annotated[Text | None, Field(description="an account name, or null (your default account)")]
    gpus_per_job: Integer(ge=0)
    cpus_per_job: Integer(ge=1)
    mem_gb: Annotated[Number(gt=0) | None, Field(description="a number > 0, or null (the partition's default)")]
    time_limit_min: Integer(ge=1)
    max_parallel: Integer(ge=1)
    extra_sbatch: Annotated[list[SbatchOption], Field(description=(
        "a list of long sbatch options, '--name=value' or '--flag' (e.g. '--qos=normal', '--constraint=a100')"))]
    setup: Annotated[list[Text], Field(description="a list of non-empty shell lines")]


class Launch(Section):
    executor: OneOf("local", "slurm")
    logs: Text
    max_requeues: Integer(ge=0)
    poll_seconds: Number(gt=0)
    local: LaunchLocal
    slurm: LaunchSlurm


class Params(Section):
    data: Data
    model: Model
    train: Train
    evaluate: Evaluate
    seeds: SeedList
    runs: Annotated[dict[RunName, Run], Field(description="a mapping of run names to runs (method, strong_fraction, "
                                                          "...)")]
    report: Report
    launch: Launch  # read by benchmark.tools.launch only; no DVC stage depends on it


def _validate(model: type[BaseModel], payload: Any, source: str, prefix: tuple = ()) -> BaseModel:
    try:
        return model.model_validate(payload)
    except ValidationError as error:
        lines = [error_line(item, source, model, prefix) for item in error.errors()]
        raise ConfigError("\n".join(dict.fromkeys(lines))) from None


def validate_params(params: Any, source: str = "params.yaml") -> dict[str, Any]:
    """params.yaml's content checked against the schema, as plain dicts (numbers normalised: 1 -> 1.0 where a
    real number is meant); raises ConfigError with one line per violation."""
    if not isinstance(params, dict):
        raise ConfigError(f"{source}: must be a mapping with the sections {', '.join(Params.model_fields)}; "
                          f"got {type(params).__name__}")
    return _validate(Params, params, source).model_dump(exclude_unset=True)


class DuplicateKeyError(yaml.MarkedYAMLError):
    """A mapping names one key twice: YAML's loaders keep the last silently, DVC refuses the file."""


class _Loader(yaml.SafeLoader):
    """YAML as DVC reads it (YAML 1.2 numbers): 1e-4 and 1.0e6 are floats, not the strings of YAML 1.1; a key
    given twice in one mapping is an error, as it is for DVC, not a silent "the last one wins"."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise DuplicateKeyError(None, None, f"the key {key!r} appears twice in one mapping (first on line "
                                        f"{seen[key].start_mark.line + 1}); keep one", key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


def load_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """Read and validate params.yaml (every stage calls this first)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: not found. Run the stages from the repository root (where dvc.yaml is).")
    try:
        with path.open() as handle:
            params = yaml.load(handle, Loader=_Loader) or {}
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        position = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        raise ConfigError(f"{path}: not valid YAML{position}: {getattr(error, 'problem', None) or error}") from None
    return validate_params(params, str(path))


# -- runs ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSpec:
    """One configured run: a method at a label budget, trained once per seed."""

    name: str
    method: str
    strong_fraction: float
    seeds: tuple[int, ...]
    row: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def strong_percent(self) -> float:
        return round(100.0 * self.strong_fraction, 2)

    def configured(self) -> dict[str, Any]:
        """What training records of its configuration and later stages compare with params.yaml."""
        return {"method": self.method, "strong_fraction": float(self.strong_fraction), "options": dict(self.options),
                "seeds": list(self.seeds)}


def check_run_spec(spec: RunSpec, source: str = "params.yaml") -> None:
    """The run entry's schema, for a RunSpec built in code rather than read from params.yaml."""
    if not re.fullmatch(RUN_NAME_PATTERN, spec.name):
        raise ConfigError(f"{source}: runs.{spec.name}: the name {show(spec.name)} is not allowed; must be "
                          "a run name of letters, digits, '_', '.', '-'")
    _validate(Run, {"method": spec.method, "strong_fraction": spec.strong_fraction, "row": spec.row,
                    "seeds": list(spec.seeds), "options": spec.options}, source, ("runs", spec.name))


def run_spec(params: dict[str, Any], name: str) -> RunSpec:
    """The run `name` of validated params (see validate_params)."""
    runs = params["runs"]
    if name not in runs:
        known = ", ".join(sorted(runs)) or "(none)"
        raise ConfigError(f"params.yaml: runs.{name} is not configured. Configured runs: {known}.")
    entry = runs[name]
    return RunSpec(name=name, method=entry["method"], strong_fraction=float(entry["strong_fraction"]),
                   seeds=tuple(entry.get("seeds") or params["seeds"]), row=entry.get("row") or entry["method"],
                   options=dict(entry.get("options") or {}))


def all_runs(params: dict[str, Any]) -> list[RunSpec]:
    return [run_spec(params, name) for name in params["runs"]]


def check_trained_as(spec: RunSpec, info: dict[str, Any], info_path: Path) -> None:
    """Refuse a run whose params.yaml entry differs from what train_info.json says it was trained with."""
    trained = info.get("configured")
    if not isinstance(trained, dict):
        raise ConfigError(f"{info_path}: has no record of the run's configuration (written by an older train "
                          f"stage); re-train it: dvc repro train@{spec.name}")
    differs = [f"{key} {show(value)} (trained: {show(trained.get(key))})"
               for key, value in spec.configured().items() if trained.get(key) != value]
    if differs:
        raise ConfigError(f"params.yaml: runs.{spec.name} differs from what {info_path} was trained with: "
                          f"{'; '.join(differs)}. Re-train it (dvc repro train@{spec.name}) or restore the entry.")


# -- params.yaml `launch`: how `python -m benchmark launch` hands the training runs to submitit ----------------
@dataclass(frozen=True)
class SlurmSettings:
    """One SLURM job array: one array task per run, at most `max_parallel` running at once."""

    partition: str | None
    account: str | None
    gpus_per_job: int
    cpus_per_job: int
    mem_gb: float | None
    time_limit_min: int
    max_parallel: int
    extra_sbatch: dict[str, Any]  # sbatch long options, "--qos=high" -> {"qos": "high"}, "--exclusive" -> True
    setup: tuple[str, ...]


@dataclass(frozen=True)
class LaunchSettings:
    executor: str
    logs: Path
    max_requeues: int
    poll_seconds: float
    gpus: tuple[int, ...]
    per_gpu: int
    local_time_limit_min: int
    slurm: SlurmSettings


def launch_settings(params: dict[str, Any], path: str | Path = PARAMS_FILE) -> LaunchSettings:
    """The `launch` section (with any command-line overrides already merged into `params`), checked against the
    schema's Launch section."""
    section = params.get("launch")
    if section is None:
        raise ConfigError(f"{path}: missing section 'launch' (copy it from the repository's params.yaml).")
    launch = _validate(Launch, section, str(path), ("launch",))
    local, slurm = launch.local, launch.slurm
    return LaunchSettings(
        executor=launch.executor, logs=Path(launch.logs).expanduser(), max_requeues=launch.max_requeues,
        poll_seconds=float(launch.poll_seconds), gpus=tuple(local.gpus), per_gpu=local.per_gpu,
        local_time_limit_min=local.time_limit_min,
        slurm=SlurmSettings(
            partition=slurm.partition, account=slurm.account, gpus_per_job=slurm.gpus_per_job,
            cpus_per_job=slurm.cpus_per_job, mem_gb=slurm.mem_gb, time_limit_min=slurm.time_limit_min,
            max_parallel=slurm.max_parallel, extra_sbatch=_sbatch_options(slurm.extra_sbatch),
            setup=tuple(line.strip() for line in slurm.setup)),
    )


def _sbatch_options(lines: list[str]) -> dict[str, Any]:
    """'--qos=high' -> {'qos': 'high'}, '--exclusive' -> {'exclusive': True}; a leading '#SBATCH' is allowed."""
    options: dict[str, Any] = {}
    for line in lines:
        name, has_value, value = line.removeprefix("#SBATCH").strip().partition("=")
        options[name[2:]] = value if has_value else True
    return options
