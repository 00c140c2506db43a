"""Schema check of a composed config, run by every entry point before anything is built.

Hydra's struct mode rejects `model.num_stage=3` on the command line, but not keys that an
experiment file or a `+key=value` override adds, nor a value of the wrong type
(`model.num_stages=three`, `data.batch_size=1.5`): those were silently ignored or crashed deep
inside a consumer. Here an unknown key or a wrong type stops the run with a ConfigError that
names the key, its nearest valid keys and the expected type.

The schemas are read from the code that consumes each node, so they cannot drift from it:

    model       CPM(**model): its own keyword arguments and the CPMConfig fields
    scheme      build_scheme(**scheme), less what CPMModule passes itself
    optim       OptimKeys below: CPMModule reads this node key by key, with no signature to read
    data        the `_target_` class's __init__ (PoseDataModule; `augment` builds an AugmentConfig)
    trainer     the `_target_` class's __init__ (lightning.Trainer), names only: its types are
                too loose to check; max_epochs is also passed to CPMModule and typed by it
    test_time   InferenceOptions (evaluate, predict)
    top level   the keys the primary config (conf/<name>.yaml) and its default groups define;
                channels_last, compile and compile_mode are typed by CPMModule, which receives them

Other nodes (paths, callbacks, logger) are collections of free names and are not checked.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypedDict

import hydra.utils
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf

from cpm_lightning.data.augment import AugmentConfig
from cpm_lightning.errors import ConfigError
from cpm_lightning.inference import InferenceOptions
from cpm_lightning.models.cpm import CPM, CPMConfig
from cpm_lightning.module import CPMModule
from cpm_lightning.schemes import build_scheme

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")

# Keys hydra.utils.instantiate reads itself from a node with a `_target_`.
INSTANTIATE_KEYS = dict.fromkeys(("_target_", "_recursive_", "_convert_", "_partial_", "_args_"), Any)

# A schema maps each key of a config node to the type annotation of its value, or to the
# schema of a sub-node (a nested dict, a dataclass or a TypedDict).
Schema = dict[str, Any]


class SchedulerKeys(TypedDict, total=False):
    """`optim.scheduler`, as CPMModule.configure_optimizers reads it."""

    name: str
    step_size: int
    gamma: float
    pct_start: float


class OptimKeys(TypedDict, total=False):
    """`optim`, as CPMModule (parameter_groups, configure_optimizers, the steps) reads it."""

    name: str
    lr: float
    momentum: float
    weight_decay: float
    stage1_lr_mult: float
    stage1_bias_lr_mult: float
    bias_lr_mult: float
    loss_reduction: str
    fused: bool
    scheduler: SchedulerKeys | None


def check_config(cfg: DictConfig, config_name: str) -> None:
    """Raise one ConfigError listing every unknown key and wrong type in `cfg`, a composition
    of the primary config `config_name` ("train", "evaluate", "predict" or "export")."""
    problems = list(_problems(cfg, config_schema(cfg, config_name), path=""))
    if problems:
        raise ConfigError("\n".join(problems))


def config_schema(cfg: DictConfig, config_name: str) -> Schema:
    """The schema of a whole composed config; `data` and `trainer` follow their `_target_`."""
    module_arguments = keys_of(CPMModule)
    trainer_names = keys_of(_target_class(cfg, "trainer"), passed_by_caller=("callbacks", "logger"))
    node_schemas = {
        "channels_last": module_arguments["channels_last"],
        "compile": module_arguments["compile"],
        "compile_mode": module_arguments["compile_mode"],
        "model": {**keys_of(CPM), **keys_of(CPMConfig)},
        "scheme": keys_of(build_scheme, passed_by_caller=("num_stages", "max_epochs")),
        "optim": OptimKeys,
        # PoseDataModule takes `augment` as a dict and builds AugmentConfig(**augment) from it.
        "data": {
            **INSTANTIATE_KEYS,
            **keys_of(_target_class(cfg, "data"), passed_by_caller=("stride",)),
            "augment": AugmentConfig | None,
        },
        "trainer": {
            **INSTANTIATE_KEYS,
            **dict.fromkeys(trainer_names, Any),
            "max_epochs": module_arguments["max_epochs"],
        },
        "test_time": InferenceOptions,
    }
    return {key: node_schemas.get(key, Any) for key in top_level_keys(config_name)}


def keys_of(consumer: Any, passed_by_caller: tuple[str, ...] = ()) -> Schema:
    """The keys a consumer accepts, with their annotations: a dataclass's fields, a TypedDict's
    keys, or the keyword arguments of a function or class (its __init__; **kwargs excluded)."""
    if dataclasses.is_dataclass(consumer) or typing.is_typeddict(consumer):
        return typing.get_type_hints(consumer)
    hints = typing.get_type_hints(consumer.__init__ if isinstance(consumer, type) else consumer)
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {
        name: hints.get(name, Any)
        for name, parameter in inspect.signature(consumer).parameters.items()
        if parameter.kind in keyword and name not in passed_by_caller
    }


def top_level_keys(config_name: str) -> set[str]:
    """The keys conf/<config_name>.yaml defines: its own, its default groups' and those of the
    primary configs it extends (evaluate.yaml extends train.yaml)."""
    primary = OmegaConf.load(Path(CONFIG_DIR) / f"{config_name}.yaml")
    keys = set(primary) - {"defaults"}
    for entry in primary.get("defaults", []):
        if isinstance(entry, str):  # "_self_", or a primary config it extends ("train")
            if entry != "_self_":
                keys |= top_level_keys(entry)
        else:  # {group: option}, e.g. {"model": "cpm_small"} or {"hydra/launcher": "slurm"}
            keys |= {group.split("/")[0] for group in entry}
    return keys


def _target_class(cfg: DictConfig, group: str) -> type:
    target = cfg[group]._target_
    try:
        return hydra.utils.get_class(target)
    except ImportError:
        raise ConfigError(f"{group}._target_={target!r} cannot be imported: check the class path.") from None


def _problems(node: DictConfig, schema: Schema, path: str) -> Iterator[str]:
    for key in node:
        dotted = f"{path}.{key}" if path else str(key)
        if key not in schema:
            yield _unknown_key_message(dotted, schema, path)
            continue
        expected = schema[key]
        if expected is Any:
            continue
        value = node[key]  # resolves interpolations, as the consumer will
        if not _matches(value, expected):
            shown = OmegaConf.to_container(value) if isinstance(value, DictConfig | ListConfig) else value
            yield (
                f"Config key '{dotted}'{_origin(dotted)} has the wrong type: expected "
                f"{_describe(expected)}, got {shown!r} ({type(shown).__name__})."
            )
        elif isinstance(value, DictConfig) and (nested := _nested_schema(expected)) is not None:
            yield from _problems(value, nested, dotted)


def _unknown_key_message(dotted: str, schema: Schema, path: str) -> str:
    key = dotted.rsplit(".", 1)[-1]
    matches = difflib.get_close_matches(key, sorted(schema))
    suggestions = [f"{path}.{match}" if path else match for match in matches]
    valid = sorted(k for k in schema if not k.startswith("_"))  # not hydra's own _target_, _args_, ...
    did_you_mean = f" Did you mean {' or '.join(repr(s) for s in suggestions)}?" if suggestions else ""
    where = f"keys of {path}" if path else "top-level keys"
    return f"Unknown config key '{dotted}'{_origin(dotted)}.{did_you_mean} Valid {where}: {', '.join(valid)}."


def _origin(dotted: str) -> str:
    """Where a key was most likely set: a command-line override naming it, else the config files
    chosen for its group and the experiment (known only inside a Hydra run)."""
    if not HydraConfig.initialized():
        return ""
    run = HydraConfig.get()
    for override in run.overrides.task:
        if override.lstrip("+~").split("=", 1)[0] == dotted:
            return f" (set on the command line by '{override}')"
    choices = run.runtime.choices
    groups = (dotted.split(".")[0], "experiment")
    files = [f"conf/{group}/{choices[group]}.yaml" for group in groups if choices.get(group)]
    return f" (from {' or '.join(files)})" if files else ""


def _nested_schema(annotation: Any) -> Schema | None:
    """The schema a sub-node is checked against, if its annotation (or a union member) has one."""
    if isinstance(annotation, dict):
        return annotation
    if dataclasses.is_dataclass(annotation) or typing.is_typeddict(annotation):
        return keys_of(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = (_nested_schema(option) for option in typing.get_args(annotation))
        return next((schema for schema in options if schema is not None), None)
    return None


def _matches(value: Any, annotation: Any) -> bool:
    """Whether a resolved config value fits an annotation. Plain types, unions, lists (tuples
    are given as lists) and mappings are checked; other annotations accept anything."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, option) for option in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is int:  # YAML's true/false are not integers, nor is 1.5 or "3"
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation in (bool, str):
        return isinstance(value, annotation)
    if (origin or annotation) in (list, tuple):
        item = (typing.get_args(annotation) or (Any,))[0]
        return isinstance(value, ListConfig) and all(_matches(v, item) for v in value)
    if (origin or annotation) is dict or _nested_schema(annotation) is not None:
        return isinstance(value, DictConfig)
    return True


def _describe(annotation: Any) -> str:
    """An annotation as a config user reads it: `int`, `a list of str or null`, `a mapping`."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(option) for option in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    if (origin or annotation) in (list, tuple):
        item = (typing.get_args(annotation) or (Any,))[0]
        return "a list" if item is Any else f"a list of {_describe(item)}"
    if (origin or annotation) is dict or _nested_schema(annotation) is not None:
        return "a mapping"
    return getattr(annotation, "__name__", str(annotation))
