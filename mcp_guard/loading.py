"""Strict YAML loading shared by guard.yaml and manifests: duplicate keys are errors, only
`true`/`false` are booleans, `${VAR}` is expanded, and every problem becomes a ConfigError
`file:path: reason`. Imports nothing of mcp, sqlite or the network."""

from __future__ import annotations

import difflib
import os
import re
import stat
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from mcp_guard.errors import ConfigError
from mcp_guard.policy.durations import format_duration as format_duration
from mcp_guard.policy.durations import parse_duration as parse_duration
from mcp_guard.secrets import LOGGER

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"


class Frozen(BaseModel):
    """Base of every config model: immutable, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


Duration = Annotated[float, BeforeValidator(parse_duration)]


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans (yes/no/on/off stay strings) and no duplicate keys."""


_StrictLoader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|false)$"), list("tf"))


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def check_file_permissions(path: Path) -> None:
    """World-writable policy files are refused (anyone could grant themselves tools)."""
    mode = path.stat().st_mode
    if mode & stat.S_IWOTH:
        raise ConfigError(str(path), "", "is world-writable; refusing it (chmod o-w)")
    if mode & stat.S_IWGRP:
        LOGGER.warning(f"warning: {path}: is group-writable")


def load_yaml(path: Path) -> Any:
    """Read one YAML (or JSON) file strictly."""
    try:
        check_file_permissions(path)
        text = path.read_text(encoding="utf-8")
    except ConfigError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc}") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}" if mark else ""
        raise ConfigError(str(path), where, str(exc.problem or exc)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), "", str(exc)) from None


def expand_env(
    value: Any, file: str, injected: set[str], path: str = "", missing: dict[str, str] | None = None
) -> Any:
    """Replace `${NAME}` in every string; remember each substituted value in `injected`. A
    variable that is not set is an error, or, given `missing`, is noted there (path -> name) and
    stands in as a placeholder, for a command that does not use the value."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in os.environ:
                if missing is None:
                    raise ConfigError(file, path, f"environment variable {name!r} is not set")
                missing[path] = name
                return f"unset-variable-{name}".ljust(32, "-")
            injected.add(os.environ[name])
            return os.environ[name]

        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: expand_env(v, file, injected, join_path(path, k), missing) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, file, injected, f"{path}[{i}]", missing) for i, v in enumerate(value)]
    return value


def join_path(path: str, key: object) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


M = TypeVar("M", bound=BaseModel)


def build(model: type[M], data: Any, file: str, context: dict[str, Any] | None = None) -> M:
    """Validate data into a model; the first problem becomes `file:path: reason`."""
    if not isinstance(data, dict):
        raise ConfigError(file, "", "must be a mapping at the top level")
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        # A misspelt key also leaves the right one missing: the unknown key says more.
        err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        path = ""
        for part in err["loc"]:
            if part in ("function-after", "function-before", "function-plain", "tagged-union"):
                continue
            if isinstance(part, str) and "[" in part:  # pydantic's union branch labels
                continue
            path = join_path(path, part)
        reason = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            reason = "unknown key" + _did_you_mean(model, err["loc"])
        raise ConfigError(file, path, reason) from None


def _did_you_mean(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """`; did you mean 'allow'?` for a misspelt key, found among the keys of the model it sits in."""
    fields: dict[str, Any] = dict(model.model_fields)
    current: type[BaseModel] | None = model
    for part in loc[:-1]:
        if current is None or not isinstance(part, str) or part not in current.model_fields:
            continue
        current = _model_of(current.model_fields[part].annotation)
    if current is not None:
        fields = {f.alias or name: f for name, f in current.model_fields.items()}
    near = difflib.get_close_matches(str(loc[-1]), list(fields), n=1, cutoff=0.6)
    return f"; did you mean {near[0]!r}?" if near else ""


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds, directly or inside a tuple, dict, list or optional."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None
