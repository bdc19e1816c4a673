"""Typed dataclass configs: command-line flags, YAML files and saved resolved configs.

Every command takes one dataclass config. Its fields become flags (``--vocab-size``);
``--config file.yaml`` supplies values, and flags given on the command line override
them: dataclass defaults < YAML < flags. A field whose type is itself a dataclass (an
options group shared by several commands, e.g. :class:`lmlab.train.options.OptimOptions`)
contributes its fields as flags of their own names (``--lr``); in YAML they may be given
flat (``lr: 3e-4``) or under the group's name (``optim: {lr: 3e-4}``), and the resolved
config is saved nested. ``--print-config`` prints the resolved config
as YAML and exits; :func:`save_config` writes it beside a command's outputs.

A list option takes comma-separated items (``--stop a,b``); ``\\,`` is a literal comma and
the flag may be repeated (``--stop 'a,b' --stop c`` adds items). A ``key_values`` list such
as ``--model-args`` splits only at commas that begin a new ``KEY=`` item, so a value may hold
commas (``layers=[1,2],name=x``). :func:`explicit_options` tells which options a config's
flags or YAML gave, so a resumed run can inherit only the others.

We use a small argparse layer instead of jsonargparse because it keeps ``lmlab --help``
free of heavy imports (each command module is imported only when that command runs),
spells flags with dashes (``--print-config``), and is all a flat config needs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from lmlab.errors import LmlabError
from lmlab.fileio import write_text

T = TypeVar("T")
# The one precision type: auto = bf16 autocast where the hardware has it, else fp32.
Precision = Literal["auto", "fp32", "bf16", "fp16"]
_MISSING = dataclasses.MISSING
# Set on configs made by build_config: the names (group members flat) of the options it was given.
_EXPLICIT = "_lmlab_explicit"
# A comma that begins a new KEY=VALUE item (a key is a Python-style name, perhaps dotted).
_ITEM_START = re.compile(r"\s*[A-Za-z_][\w.-]*\s*=")


def arg(default: Any = _MISSING, help: str = "", *, positional: bool = False,
        key_values: bool = False) -> Any:
    """Declare a config field with its help text.

    Returns a ``dataclasses.field``. Mutable defaults (lists, dicts) are copied per
    instance. ``positional=True`` makes the field a positional argument on the CLI.
    ``key_values=True`` (a list of KEY=VALUE items) splits a string only at commas that
    begin a new ``KEY=`` item, so values may contain commas.
    """
    meta = {"help": help, "positional": positional, "key_values": key_values}
    if dataclasses.is_dataclass(default) and not isinstance(default, type):
        return dataclasses.field(default_factory=lambda d=default: dataclasses.replace(d), metadata=meta)
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """Return ``(inner type, allows None)`` for ``X | None`` annotations."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def split_items(text: str, key_values: bool = False) -> list[str]:
    """Split a list option's string into items at commas; ``\\,`` is a literal comma.

    With ``key_values`` only a comma followed by ``KEY=`` starts a new item, so
    ``"a=[1,2],b=x,y"`` gives ``["a=[1,2]", "b=x,y"]``. Blank items are dropped.
    """
    items, current, i = [], [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and text.startswith(",", i + 1):
            current.append(",")
            i += 2
            continue
        if c == "," and (not key_values or _ITEM_START.match(text, i + 1)):
            items.append("".join(current))
            current = []
        else:
            current.append(c)
        i += 1
    items.append("".join(current))
    return [item.strip() for item in items if item.strip()]


def coerce(value: Any, tp: Any, name: str, *, key_values: bool = False) -> Any:
    """Convert ``value`` (a CLI string or a YAML scalar/list) to the annotated type ``tp``.

    A string for a list type is split by :func:`split_items` (``key_values`` as there).
    Raises LmlabError naming the field when the value does not fit.
    """
    inner, optional = _unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise LmlabError(f"{name} must not be empty; give it a value")
    origin = typing.get_origin(inner)
    try:
        if origin is Literal:
            choices = typing.get_args(inner)
            if value not in choices:
                raise LmlabError(f"{name}={value!r} is not one of {', '.join(map(str, choices))}")
            return value
        if origin in (list, tuple):
            (item_tp, *_) = typing.get_args(inner) or (str,)
            if isinstance(value, str):
                value = split_items(value, key_values)
            return [coerce(v.strip() if isinstance(v, str) else v, item_tp, name) for v in value]
        if inner is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes", "on"):
                return True
            if str(value).lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError(value)
        if inner is int:
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str):
                f = float(value)  # accepts 1e6
                if not f.is_integer():
                    raise ValueError(value)
                return int(f)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(value)
            return value
        if inner is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if inner is str:
            return str(value)
        if inner is Path:
            return Path(value)
    except (TypeError, ValueError):
        raise LmlabError(f"{name}={value!r} is not a valid {getattr(inner, '__name__', inner)}") from None
    return value


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not _MISSING:
        return f.default
    if f.default_factory is not _MISSING:
        return f.default_factory()
    return None


def _is_group(tp: Any) -> bool:
    """True for a field type that is an options group (a dataclass)."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


class _ListAction(argparse.Action):
    """Store a list option: split each occurrence into items and add them to those of earlier ones."""

    def __init__(self, *args: Any, key_values: bool = False, **kwargs: Any):
        self.key_values = key_values
        super().__init__(*args, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        items = list(getattr(namespace, self.dest, None) or [])
        setattr(namespace, self.dest, items + split_items(str(values), self.key_values))


def add_config_arguments(parser: argparse.ArgumentParser, cfg_cls: type, *, with_config: bool = True,
                         defaults: Any = None) -> None:
    """Add one flag per dataclass field of ``cfg_cls`` (an options group's fields flat, with the
    defaults of the group the command embeds) plus ``--config``/``--print-config``."""
    hints = typing.get_type_hints(cfg_cls)
    for f in dataclasses.fields(cfg_cls):
        tp = hints[f.name]
        inner, _ = _unwrap_optional(tp)
        help_text = f.metadata.get("help", "")
        default = getattr(defaults, f.name) if defaults is not None else _default(f)
        if _is_group(inner):
            add_config_arguments(parser, inner, with_config=False, defaults=default)
            continue
        if default is not None and default != "" and "%(default)" not in help_text:
            shown = ",".join(map(str, default)) if isinstance(default, list) else default
            help_text = f"{help_text} (default: {shown})".strip()
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text}
        if typing.get_origin(inner) is Literal:
            kwargs["choices"] = list(typing.get_args(inner))
        if f.metadata.get("positional"):
            parser.add_argument(f.name, nargs="?", metavar=f.name.upper(), **kwargs)
        elif inner is bool:
            parser.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(inner) in (list, tuple):
            parser.add_argument(_flag(f.name), dest=f.name, metavar=f.name.upper(), action=_ListAction,
                                key_values=f.metadata.get("key_values", False), **kwargs)
        else:
            metavar = f.name.upper() if "choices" not in kwargs else None
            parser.add_argument(_flag(f.name), dest=f.name, metavar=metavar, **kwargs)
    if not with_config:
        return
    parser.add_argument("--config", metavar="FILE.yaml", default=None,
                        help="read option values from a YAML file; flags given here override it")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as YAML and exit")


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping from ``path``; raise LmlabError if missing or not a mapping."""
    p = Path(path)
    if not p.is_file():
        raise LmlabError(f"config file {p} does not exist; check the path given to --config")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise LmlabError(f"config file {p} is not valid YAML ({e}); fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LmlabError(f"config file {p} must hold a mapping of option: value")
    return data


def build_config(cfg_cls: type[T], values: dict[str, Any]) -> T:
    """Create ``cfg_cls`` from defaults updated by ``values`` (keys with - or _).

    Unknown keys raise LmlabError listing the valid ones; values are type-checked.
    """
    hints = typing.get_type_hints(cfg_cls)
    fields = {f.name: f for f in dataclasses.fields(cfg_cls)}
    inner = {name: _unwrap_optional(hints[name])[0] for name in fields}
    groups = {name: tp for name, tp in inner.items() if _is_group(tp)}
    member_of = {sub.name: g for g, g_cls in groups.items() for sub in dataclasses.fields(g_cls)}
    kwargs: dict[str, Any] = {}
    group_values: dict[str, dict[str, Any]] = {g: {} for g in groups}
    explicit: set[str] = set()
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name in groups:
            if not isinstance(value, dict):
                raise LmlabError(f"option {key!r} is a group of options; give it a mapping, e.g. "
                                 f"{key}: {{{next(iter(member_of))}: ...}}")
            group_values[name].update({str(k).replace("-", "_"): v for k, v in value.items()})
        elif name in fields:
            kwargs[name] = coerce(value, hints[name], name.replace("_", "-"),
                                  key_values=fields[name].metadata.get("key_values", False))
            explicit.add(name)
        elif name in member_of:
            group_values[member_of[name]][name] = value
        else:
            valid = ", ".join(sorted(n.replace("_", "-") for n in [*fields, *member_of] if n not in groups))
            raise LmlabError(f"unknown option {key!r}; valid options are: {valid}")
    for g, given in group_values.items():
        if given:
            base = to_dict(_default(fields[g]))
            kwargs[g] = build_config(groups[g], {**base, **given})
            explicit.update(given)
    cfg = cfg_cls(**kwargs)
    object.__setattr__(cfg, _EXPLICIT, frozenset(explicit))
    return cfg


def explicit_options(cfg: Any) -> frozenset[str] | None:
    """Return the names of the options the flags or YAML of ``cfg`` gave (group members by their own
    names), even those given their default value; None for a config not made by :func:`build_config`
    (e.g. constructed in code), whose explicit options are unknown."""
    return getattr(cfg, _EXPLICIT, None)


def parse_config(cfg_cls: type[T], ns: argparse.Namespace) -> T:
    """Resolve a config from parsed args: defaults < ``--config`` YAML < flags.

    The options given by the YAML file or the flags are recorded: see :func:`explicit_options`.
    """
    values: dict[str, Any] = {}
    if getattr(ns, "config", None):
        values.update({str(k).replace("-", "_"): v for k, v in load_yaml(ns.config).items()})
    values.update({k: v for k, v in vars(ns).items() if k not in ("config", "print_config")})
    return build_config(cfg_cls, values)


class DictConfig:
    """Mixin for dataclass configs: ``to_dict()`` and ``from_dict(values)``, the one pair lmlab uses.

    ``from_dict`` refuses unknown keys with an LmlabError that lists the valid ones, so a
    typo in a saved config or a ``--model-args`` item is named, not silently dropped.
    """

    def to_dict(self) -> dict[str, Any]:
        """Return the config as a JSON-friendly dict (all fields, nested dataclasses as dicts)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], values: dict[str, Any]) -> T:
        """Build the config from ``values``; unknown keys raise LmlabError listing the valid ones."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - names)
        if unknown:
            raise LmlabError(f"unknown model config keys {', '.join(unknown)} for {cls.__name__}; "
                             f"valid keys: {', '.join(sorted(names))}")
        return cls(**values)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Return a YAML-friendly dict of a dataclass config (Paths become strings)."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            v = to_dict(v)
        elif isinstance(v, Path):
            v = str(v)
        out[f.name] = v
    return out


def to_yaml(cfg: Any) -> str:
    """Return the config as YAML text (field order kept)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    """Atomically write the resolved config as YAML to ``path``."""
    write_text(path, to_yaml(cfg))
