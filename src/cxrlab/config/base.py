"""The recipe machinery every task's recipe is built on.

A recipe is a tree of frozen dataclasses read from one YAML file, with ``key=value``
overrides on the command line. :func:`build` turns a nested mapping into a dataclass,
checking every key and value against the field's type: unknown keys and misspelt choices
(``typing.Literal`` fields) fail when the recipe loads, with a "did you mean ..." hint, long
before any data is read or cache built. :class:`Recipe` gives each task's root dataclass
``to_dict``/``save`` and the common ``load``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

import yaml

from cxrlab.errors import ConfigError, MissingFileError
from cxrlab.utils import atomic_write_text

T = TypeVar("T")


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Convert a YAML value to the dataclass field type ``hint``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(where, f"expected a mapping, got {value!r}")
        return build(hint, value, where)
    if hint is Any:
        return value
    if origin is typing.Literal:
        return look_up_option(value, args, where)
    if hint is type(None):
        return None
    # Optional[...] / unions: None passes, otherwise the first type that accepts it.
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except ConfigError as err:
                errors.append(err.problem)
        raise ConfigError(where, "; ".join(errors))
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            value = [value]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(where, f"expected {len(args)} values, got {list(value)!r}")
        return tuple(coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin in (Mapping, dict) or hint in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(where, f"expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(where, f"expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(where, f"expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError as err:
            raise ConfigError(where, f"expected an integer, got {value!r}") from err
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(where, f"expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError) as err:
            raise ConfigError(where, f"expected a number, got {value!r}") from err
    if hint is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(where, f"expected a string, got {value!r}")
        return str(value)
    return value


def build(cls: type, values: Mapping[str, Any], where: str) -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        hints_text = "".join(f"; did you mean {close!r} for {key!r}?" for key in unknown
                             for close in difflib.get_close_matches(key, names, n=1))
        renamed = getattr(cls, "RENAMED_KEYS", {})
        moved = "".join(f"; {key!r} is now {renamed[key]!r}" for key in unknown if key in renamed)
        raise ConfigError(where, f"unknown key(s) {unknown}{moved}{hints_text}; known: {sorted(names)}")
    kwargs = {k: coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in values.items()}
    return cls(**kwargs)


def parse_scalar(text: str) -> Any:
    """Parse an override's right-hand side as YAML (``3``, ``1e-3``, ``[a, b]``, ``null``)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a nested dict; list items by index (``phases.0``).

    Raises:
        ConfigError: An override lacks ``=`` or walks through a non-container.
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, "an override must look like key.path=value")
        dotted, text = item.split("=", 1)
        keys = dotted.strip().split(".")
        node: Any = raw
        for depth, key in enumerate(keys[:-1]):
            if isinstance(node, list):
                try:
                    node = node[int(key)]
                except (ValueError, IndexError) as err:
                    raise ConfigError(item, f"no list item {key!r}") from err
            elif isinstance(node, dict):
                node = node.setdefault(key, {})
            else:
                raise ConfigError(item, f"{'.'.join(keys[:depth])} is not a mapping")
        last = keys[-1]
        if isinstance(node, list):
            try:
                node[int(last)] = parse_scalar(text)
            except (ValueError, IndexError) as err:
                raise ConfigError(item, f"no list item {last!r}") from err
        elif isinstance(node, dict):
            node[last] = parse_scalar(text)
        else:
            raise ConfigError(item, f"{'.'.join(keys[:-1])} is not a mapping")
    return raw


def read_recipe(path: str | Path, build: Callable[[dict[str, Any]], T], what: str = "recipe file") -> T:
    """Read a YAML mapping from ``path`` and ``build`` a recipe from it, naming the file in errors.

    Every recipe kind (training, study, pneumothorax, screening) loads through this.

    Raises:
        MissingFileError: ``path`` does not exist ("<what> not found").
        ConfigError: Bad YAML, not a mapping, or whatever ``build`` rejects (prefixed by the file).
    """

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(path, f"{what} not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(path, f"not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(path, "a recipe must be a YAML mapping")
    try:
        return build(raw)
    except ConfigError as err:
        raise ConfigError(path, f"{err.source}: {err.problem}" if err.source else err.problem) from err


def resolve_options(options: Mapping[str, Any], base: Path, path_keys: Iterable[str]) -> dict[str, Any]:
    """Resolve the path-valued ``options`` (those named in ``path_keys``) against ``base``.

    A relative path that exists from the working directory stays relative to it; otherwise it
    is taken relative to ``base`` (the recipe's folder).
    """
    out = dict(options)
    for key in path_keys:
        value = out.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            candidate = (base / value).resolve()
            # Keep paths relative to the working directory when they exist there.
            out[key] = str(Path(value).resolve()) if Path(value).exists() else str(candidate)
    return out


def look_up_option(value: Any, choices: Iterable[Any], where: str) -> Any:
    """``value`` if it is one of ``choices``, else a :class:`ConfigError` that suggests the nearest.

    The pattern of MONAI's ``look_up_option``: one helper for every recipe choice and registry.
    """
    options = list(choices)
    if value in options:
        return value
    text = str(value)
    for option in options:      # YAML reads ``32`` where a Literal holds ``"32"``
        if str(option) == text:
            return option
    close = difflib.get_close_matches(text, [str(o) for o in options], n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(where, f"{value!r} is not one of {options}{hint}")


class Recipe:
    """Mixin of every task's root recipe dataclass: plain-dict and YAML round trip."""

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (lists for tuples), suitable for YAML/JSON."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))  # type: ignore[call-overload]

    def save(self, path: str | Path) -> Path:
        """Write the resolved recipe as YAML, atomically."""
        return atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))
