"""params.yaml schema: defaults, overrides, and malformed files failing before any side effect."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from components.config import Params, load_params, validate_params
from components.errors import ParamsError
from tests.conftest import REPO, Project


def _leaf_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    paths = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths += _leaf_paths(annotation, f"{prefix}{name}.")
        else:
            paths.append(f"{prefix}{name}")
    return paths


def _lookup(raw: dict[str, Any], dotted: str) -> Any:
    node: Any = raw
    for key in dotted.split("."):
        node = node[key]
    return node


def test_repository_params_are_the_schema_defaults() -> None:
    """params.yaml is valid and holds exactly the schema's defaults (the README documents them)."""
    assert load_params(REPO / "params.yaml") == Params()


def test_every_schema_key_is_written_in_params_yaml() -> None:
    """DVC can only track keys present in the file, so every leaf key must be spelled out."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for dotted in _leaf_paths(Params):
        _lookup(raw, dotted)  # KeyError names the missing key


def test_public_keys_keep_their_names() -> None:
    """The keys other tools and users rely on exist with these exact names."""
    leaves = set(_leaf_paths(Params))
    for key in (
        "data.source",
        "data.path",
        "data.download",
        "preprocess.seed",
        "preprocess.val_fraction",
        "preprocess.test_fraction",
        "train.architectures",
        "train.max_epochs",
        "train.batch_size",
    ):
        assert key in leaves
    assert set(Params.model_fields) == {
        "data",
        "preprocess",
        "train",
        "models",
        "evaluate",
        "register",
        "compress",
        "sweep",
        "explain",
        "mlflow",
        "schedule",
    }


def test_overrides_use_dotted_keys_and_are_validated(tmp_path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  max_epochs: 5\n")
    params = load_params(path, overrides={"train.max_epochs": 2, "data.source": "npz"})
    assert params.train.max_epochs == 2
    assert params.data.source == "npz"
    with pytest.raises(ParamsError, match=r"train\.max_epochs"):
        load_params(path, overrides={"train.max_epochs": 0})
    with pytest.raises(ParamsError, match=r"train\.bogus: unknown key"):
        load_params(path, overrides={"train.bogus": 1})


def test_empty_file_means_all_defaults(tmp_path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("# nothing set\n")
    assert load_params(path) == Params()


def test_every_error_is_reported_at_once(tmp_path) -> None:
    """Two broken keys in different sections are both named in one message."""
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  max_epochs: -1\ndata:\n  source: cifar\n")
    with pytest.raises(ParamsError) as info:
        load_params(path)
    assert "train.max_epochs" in str(info.value)
    assert "data.source" in str(info.value)


# (params.yaml text, substrings the error must contain)
MALFORMED: dict[str, tuple[str, list[str]]] = {
    "unknown_top_level_section": (
        "trian:\n  max_epochs: 3\n",
        ["trian: unknown key", "train", "preprocess"],
    ),
    "unknown_nested_key": (
        "data:\n  sauce: digits\n",
        ["data.sauce: unknown key", "source", "path"],
    ),
    "unknown_source": (
        "data:\n  source: cifar10\n",
        ["data.source", "'digits'", "'imagefolder'", "cifar10"],
    ),
    "string_for_int": (
        "train:\n  max_epochs: '5'\n",
        ["train.max_epochs", "integer"],
    ),
    "float_for_int": (
        "train:\n  batch_size: 12.5\n",
        ["train.batch_size", "integer"],
    ),
    "negative_batch_size": (
        "train:\n  batch_size: -8\n",
        ["train.batch_size", "greater than or equal to 1", "-8"],
    ),
    "zero_epochs": (
        "train:\n  max_epochs: 0\n",
        ["train.max_epochs", "greater than or equal to 1"],
    ),
    "fractions_sum_to_one": (
        "preprocess:\n  val_fraction: 0.5\n  test_fraction: 0.5\n",
        ["preprocess", "val_fraction + test_fraction must be < 1"],
    ),
    "fraction_above_one": (
        "preprocess:\n  val_fraction: 1.5\n",
        ["preprocess.val_fraction", "less than 1"],
    ),
    "negative_seed": (
        "preprocess:\n  seed: -1\n",
        ["preprocess.seed", "greater than or equal to 0"],
    ),
    "seed_beyond_32_bits": (
        "train:\n  seed: 1099511627776\n",
        ["train.seed", "less than or equal to 4294967295"],
    ),
    "infinite_learning_rate": (  # would train to NaN weights without an error
        "train:\n  learning_rate: .inf\n",
        ["train.learning_rate", "finite number"],
    ),
    "unknown_architecture": (
        "train:\n  architectures: [mlp, resnet]\n",
        ["train.architectures.1", "'cnn'", "'transformer'", "resnet"],
    ),
    "empty_architectures": (
        "train:\n  architectures: []\n",
        ["train.architectures", "at least 1"],
    ),
    "repeated_architecture": (
        "train:\n  architectures: [cnn, cnn]\n",
        ["train", "architectures must not repeat", "cnn"],
    ),
    "section_not_a_mapping": (
        "data: digits\n",
        ["data: must be a mapping", "source"],
    ),
    "model_size_not_positive": (
        "models:\n  cnn:\n    dense_size: 0\n",
        ["models.cnn.dense_size", "greater than or equal to 1"],
    ),
    "heads_do_not_divide_width": (
        "models:\n  transformer:\n    d_model: 30\n",
        ["models.transformer", "divisible by num_heads"],
    ),
    "bool_as_string": (
        "data:\n  download: 'yes please'\n",
        ["data.download", "boolean"],
    ),
    "yaml_syntax_error": (
        "train:\n  max_epochs: [1, 2\n",
        ["params.yaml", "YAML syntax error", "line"],
    ),
    "duplicate_key": (
        "train:\n  max_epochs: 3\n  max_epochs: 4\n",
        ["YAML syntax error", "max_epochs", "twice"],
    ),
    "cron_not_a_schedule": (
        "schedule:\n  cron: 'every night'\n",
        ["schedule.cron", "not a valid cron expression"],
    ),
    "cron_prefect_refuses": (  # cronsim took it; `flows.deploy` then failed with "Invalid cron string"
        "schedule:\n  cron: '0 3 * * 5L'\n",
        ["schedule.cron", "not a valid cron expression for Prefect", "5L"],
    ),
    "unknown_time_zone": (
        "schedule:\n  timezone: Mars/Olympus\n",
        ["schedule.timezone", "unknown time zone"],
    ),
    "top_level_list": (
        "- data\n- train\n",
        ["top level must be a mapping"],
    ),
}


# One case of each kind also through a stage process (every ParamsError takes the same path to exit
# 2 there; a process per case would cost a second of CPU each).
THROUGH_THE_CLI = {
    "unknown_nested_key", "string_for_int", "fractions_sum_to_one", "yaml_syntax_error", "duplicate_key",
    "section_not_a_mapping", "top_level_list",
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_params_fail_with_the_key_and_write_nothing(project: Project, case: str) -> None:
    text, expected = MALFORMED[case]
    project.params_file.write_text(textwrap.dedent(text))
    with pytest.raises(ParamsError) as info:
        load_params(project.params_file)
    for fragment in expected:
        assert fragment in str(info.value), f"{fragment!r} missing from: {info.value}"

    if case in THROUGH_THE_CLI:
        result = project.run("ingest")
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert expected[0] in result.stderr.replace("\n", " ") or expected[0] in result.stderr
        assert not (project.root / "data").exists(), "a stage wrote output despite bad params"


@pytest.mark.parametrize("stage", ["ingest", "preprocess"])
def test_every_stage_validates_the_whole_file(project: Project, stage: str) -> None:
    """A bad key in a section the stage does not read still stops it before any output."""
    project.params_file.write_text("evaluate:\n  batch_size: 0\n")
    result = project.run(stage)
    assert result.returncode == 2
    assert "evaluate.batch_size" in result.stderr
    assert not (project.root / "data").exists()


def test_missing_params_file_is_named(project: Project) -> None:
    result = project.run("ingest", "--params", "nope.yaml")
    assert result.returncode == 2
    assert "nope.yaml: params file not found" in result.stderr


def test_set_options_are_key_equals_yaml_value_and_a_bare_key_is_refused() -> None:
    """``flows.pipeline --set``: a pair without ``=`` would otherwise set a nullable key to null."""
    from components.config import key_overrides

    assert key_overrides(
        ["train.max_epochs=3", "register.model_name=null", "train.architectures=[mlp, cnn]"]
    ) == {
        "train.max_epochs": 3,
        "register.model_name": None,
        "train.architectures": ["mlp", "cnn"],
    }
    for bad, rule in [
        ("register.model_name", "expected KEY=VALUE"),
        ("=3", "expected KEY=VALUE"),
        ("train.architectures=[mlp", "the value is not valid YAML \\(expected ',' or ']'"),
    ]:
        with pytest.raises(ParamsError, match=rf"--set '{re.escape(bad)}': {rule}"):
            key_overrides([bad])


def test_exponent_floats_read_as_numbers_in_params_and_set_and_a_bad_override_is_named(
    tmp_path: Path,
) -> None:
    """PyYAML reads ``1e-3`` (no dot) as a string; DVC and YAML 1.2 read a float, and so do we."""
    from components.config import key_overrides

    params_file = tmp_path / "params.yaml"
    params_file.write_text("train:\n  learning_rate: 5e-4\n  weight_decay: 1E-5\n")
    params = load_params(params_file)
    assert (params.train.learning_rate, params.train.weight_decay) == (5e-4, 1e-5)

    overridden = load_params(params_file, key_overrides(["train.learning_rate=2e-3"]))
    assert overridden.train.learning_rate == 2e-3
    assert key_overrides(["data.name='1e3'", "train.seed=1_0", "register.model_name=x1e3"]) == {
        "data.name": "1e3",  # quoted: still a string
        "train.seed": 10,
        "register.model_name": "x1e3",
    }
    with pytest.raises(ParamsError, match=r"params.yaml \(overridden: train.learning_rate\): invalid"):
        load_params(params_file, key_overrides(["train.learning_rate=fast"]))


def test_schedule_cron_is_checked_by_prefects_rule() -> None:
    """What params accept is what ``prefect.schedules.Cron`` accepts: ``@daily`` (which cronsim
    refused) passes, ``0 3 * * 5L`` (which cronsim took and Prefect refuses) does not."""
    from prefect.schedules import Cron

    assert validate_params({"schedule": {"cron": "@daily"}}).schedule.cron == "@daily"
    with pytest.raises(ParamsError, match=r"schedule\.cron"):
        validate_params({"schedule": {"cron": "0 3 * * 5L"}})
    samples = [
        "0 3 * * *", "@daily", "@hourly", "@weekly", "0 3 * * 5L", "0 3 L * *", "0 3 * * 5#2",
        "0 0 * * mon-fri", "*/15 * * * *", "* * * * * *", "H 3 * * *", "R 3 * * *", "0 3 * * L5",
        "0 24 * * *", "@reboot", "0 3 * * * 2024", "every night", "",
    ]  # fmt: skip
    for cron in samples:
        try:
            Cron(cron)
            prefect_accepts = True
        except ValueError:
            prefect_accepts = False
        try:
            validate_params({"schedule": {"cron": cron}})
            we_accept = True
        except ParamsError:
            we_accept = False
        assert we_accept == prefect_accepts, cron
