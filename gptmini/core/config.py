"""The error class of a user's bad setting, and the range types of config fields.

Each range rule lives in its field's type (jsonargparse's restricted number types): the CLI parser
checks it while parsing (so ``--print_config`` refuses a bad value too), and :func:`check_fields`
applies the same type when a config is built in Python. Rules that tie several fields together
stay in the dataclass's ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from typing import Any

import yaml
from jsonargparse import get_loader
from jsonargparse.typing import (
    ClosedUnitInterval,
    NonNegativeFloat,
    NonNegativeInt,
    OpenUnitInterval,
    PositiveFloat,
    PositiveInt,
    restricted_number_type,
)

__all__ = [
    "ClosedUnitInterval",
    "ConfigError",
    "NonNegativeFloat",
    "NonNegativeInt",
    "OpenUnitInterval",
    "PositiveFloat",
    "PositiveInt",
    "UnitIntervalRightOpen",
    "VocabSize",
    "check_args",
    "check_fields",
    "check_value",
    "find_duplicate_key",
    "load_yaml_unique",
]

UnitIntervalRightOpen = restricted_number_type(
    "UnitIntervalRightOpen", float, [(">=", 0.0), ("<", 1.0)], docstring="float restricted to be ≥0 and <1"
)
# Token ids are stored as uint16 (gptmini.core.tokens), and a vocabulary needs two ids at least.
VocabSize = restricted_number_type(
    "VocabSize", int, [(">=", 2), ("<=", 65536)], docstring="int restricted to be ≥2 and ≤65536"
)


class ConfigError(ValueError):
    """A user's setting or input file that cannot work. The message names the setting and the fix;
    the CLI prints it as one ``error:`` line (``GPTMINI_TRACEBACK=1`` shows the traceback)."""


def _is_restricted(hint: Any) -> bool:
    """A jsonargparse restricted number type (PositiveInt, restricted_number_type(...))."""
    return isinstance(hint, type) and issubclass(hint, (int, float)) and hint.__module__ == "jsonargparse.typing"


def describe(hint: Any) -> str:
    """'an integer >0', 'a number ≥0 and <1', ... from the type's docstring, jsonargparse's own
    description of it ("float restricted to be ≥0 and <1"): the types expose their bounds no other
    public way."""
    kind = "an integer" if issubclass(hint, int) else "a number"
    return f"{kind} {(hint.__doc__ or '').rpartition('restricted to be ')[2]}".rstrip()


def check_value(key: str, hint: Any, value: Any) -> Any:
    """``value`` checked against the range types in ``hint``, as plain int/float (checkpoints hold
    plain values); a :class:`ConfigError` naming ``key`` if out of range. Other hints pass through."""
    if _is_restricted(hint):
        try:
            hint(value)
            if isinstance(value, str):
                raise ValueError(value)
            return (int if issubclass(hint, int) else float)(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be {describe(hint)}, got {value!r}.") from None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and value is not None:
        inner = [a for a in args if a is not type(None)]
        return check_value(key, inner[0], value) if len(inner) == 1 else value
    if origin is tuple and args and Ellipsis not in args:
        if not isinstance(value, (tuple, list)) or len(value) != len(args):
            raise ConfigError(f"{key} must be a list of {len(args)} values, got {value!r}.")
        return tuple(check_value(f"{key}[{i}]", a, v) for i, (a, v) in enumerate(zip(args, value)))
    return value


def check_fields(obj: Any, prefix: str) -> None:
    """Apply every field's range type to its value (call from ``__post_init__``)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        setattr(obj, f.name, check_value(f"{prefix}.{f.name}", hints[f.name], getattr(obj, f.name)))


def check_args(fn: Any, prefix: str, values: dict[str, Any]) -> dict[str, Any]:
    """The arguments of ``fn`` in ``values`` (e.g. ``locals()`` in ``__init__``) checked against
    their range types, as plain values."""
    hints = typing.get_type_hints(fn)
    return {k: check_value(f"{prefix}.{k}", hints[k], v) for k, v in values.items() if k in hints}


def find_duplicate_key(text: str) -> tuple[str, int, int] | None:
    """The first mapping key given twice in YAML ``text``, as (dotted key, first line, second line),
    or None. YAML itself keeps the last value silently, which hides a mistake in a config."""

    def walk(node: yaml.Node, prefix: str) -> tuple[str, int, int] | None:
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key, value in node.value:
                name = str(key.value)
                if name == "<<":  # a merge key: its mapping is checked where it is defined
                    continue
                line = key.start_mark.line + 1
                if name in seen:
                    return f"{prefix}{name}", seen[name], line
                seen[name] = line
                if found := walk(value, f"{prefix}{name}."):
                    return found
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                if found := walk(item, f"{prefix[:-1]}[{i}]." if prefix else f"[{i}]."):
                    return found
        return None

    try:  # libyaml's composer where PyYAML has it (as jsonargparse's loader): ~20x the pure-Python one
        root = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        return None  # not YAML: the loader below reports it as jsonargparse always has
    return walk(root, "") if root is not None else None


def load_yaml_unique(stream: str, path: str = "") -> Any:
    """jsonargparse's YAML loader, refusing a key given twice (registered for the CLI's parsers with
    jsonargparse's public ``set_loader``: neither Lightning nor PyYAML has a duplicate-key option)."""
    # ":" first: jsonargparse loads every command-line value through here, and a scalar has no keys.
    if ":" in stream and (found := find_duplicate_key(stream)):
        key, first, second = found
        where = f"{os.path.abspath(path)}: " if path else ""  # jsonargparse reads it from its folder
        raise ConfigError(
            f"{where}'{key}' is given twice (lines {first} and {second}); YAML would keep the last silently: "
            "remove one."
        )
    return get_loader("yaml")(stream)
