"""Options declared once: a run's settings are the fields of a frozen dataclass (a *spec*), and the
same declaration gives the command-line options, the YAML config files and the Python keywords.

    @dataclass(frozen=True)
    class FitSpec:
        head: str = option("linear", "head to train", choices=HEADS)
        lr: str | None = option(None, "learning rate or a comma-separated grid")
        device: str = option("cpu", "torch device", identity=False)

    p = argparse.ArgumentParser(...)
    add_options(p, FitSpec)                 # --head, --lr, --device (dashes for underscores)
    add_config_options(p)                   # --config FILE, --print-config
    args = parse_with_config(p, argv)       # a config file's values are defaults, flags override them
    spec = from_namespace(FitSpec, args)    # the spec validates itself when it is made
    if args.print_config: print(to_yaml(spec))

A field's metadata (:func:`option`) holds its help text, its flag, its choices and two switches:
``cli`` (False: a Python keyword and a config key only) and ``identity`` (False: a setting that does not
change the result, such as the device or progress bars; left out when two runs are compared, see
:func:`identity`). The flag of ``class_weight`` is ``--class-weight``; a config file may spell its keys
either way.

Why not jsonargparse: it derives ``--class_weight`` (underscores) and, nested, ``--spec.class_weight``
from the same dataclasses, so every dashed option of every command would have changed name, and its
help and error texts would have replaced the project's. This module is ~150 lines over argparse and
PyYAML (already a dependency), and keeps every command line as it was.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from pathlib import Path

#: metadata keys of a field declared with :func:`option`
_META = "singfront_option"


class SpecError(ValueError):
    """A setting of a spec is refused. ``setting``: the field's name (``lr``), which the command line
    shows as its flag (``--lr``)."""

    def __init__(self, setting: str, message: str):
        super().__init__(f"{setting}: {message}")
        self.setting, self.reason = setting, message

    def as_flag(self) -> str:
        """The message with the setting spelled as its command-line flag."""
        return f"{flag_of(self.setting)}: {self.reason}"


def int_setting(name: str, value, minimum: int | None = None) -> int:
    """``value`` of setting ``name`` as an int (``3``, ``"3"``, ``3.0``); anything else (``"ten"``, ``2.5``,
    ``True``, a list) or one below ``minimum`` raises :class:`SpecError` naming the setting."""
    want = "an integer" + (f" >= {minimum}" if minimum is not None else "")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise SpecError(name, f"{value!r}: expected {want}")
    try:
        out = int(value) if not isinstance(value, float) else int(value) if value == int(value) else None
    except (ValueError, OverflowError):
        out = None
    if out is None or (minimum is not None and out < minimum):
        raise SpecError(name, f"{value!r}: expected {want}")
    return out


def float_setting(name: str, value) -> float:
    """``value`` of setting ``name`` as a float (``0.15``, ``"0.15"``, ``1``); anything else raises
    :class:`SpecError` naming the setting."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise SpecError(name, f"{value!r}: expected a number")
    try:
        return float(value)
    except ValueError:
        raise SpecError(name, f"{value!r}: expected a number") from None


def flag_of(name: str) -> str:
    """``class_weight`` -> ``--class-weight``."""
    return "--" + name.replace("_", "-")


def option(default, help: str = "", *, flag: str | None = None, choices=None, metavar: str | None = None,
           cli: bool = True, identity: bool = True, commands: tuple | None = None, type=None,
           nargs=None, const=None):
    """A spec field with its command-line form (see the module docstring). ``commands``: the
    sub-commands that show it (None: every one); ``type``: the command line's converter, where the
    annotation's base type is not enough; ``nargs``/``const``: as argparse's (an option with an optional
    value)."""
    meta = {"help": help, "flag": flag, "choices": tuple(choices) if choices is not None else None,
            "metavar": metavar, "cli": cli, "identity": identity,
            "commands": tuple(commands) if commands is not None else None, "type": type, "nargs": nargs,
            "const": const}
    if isinstance(default, (list, dict, set)):
        raise TypeError("option defaults must be immutable (use a tuple)")
    return dataclasses.field(default=default, metadata={_META: meta})


def field_meta(f: dataclasses.Field) -> dict:
    """A field's command-line declaration (:func:`option`'s keywords): help, flag, choices, ..."""
    return f.metadata.get(_META) or {"help": "", "flag": None, "choices": None, "metavar": None, "cli": True,
                                     "identity": True, "commands": None, "type": None, "nargs": None, "const": None}


def _base_type(hint):
    """``int | None`` -> int; ``bool`` -> bool; ``str`` -> str."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else str
    if origin in (tuple, list):
        return str
    return hint if hint in (int, float, str, bool) else str


def fields_of(cls) -> list[tuple[dataclasses.Field, type]]:
    hints = typing.get_type_hints(cls)
    return [(f, _base_type(hints[f.name])) for f in dataclasses.fields(cls)]


def add_options(parser: argparse.ArgumentParser, cls, *, skip=(), defaults: dict | None = None,
                help: dict | None = None, command: str | None = None) -> None:
    """Add one command-line option per field of ``cls`` (not those in ``skip``, nor ``cli=False`` ones,
    nor those whose ``commands`` leave out ``command``). ``defaults``/``help``: per-field replacements for
    this command (a task's own default head)."""
    defaults, help = defaults or {}, help or {}
    for f, kind in fields_of(cls):
        m = field_meta(f)
        if f.name in skip or not m["cli"]:
            continue
        if command is not None and m["commands"] is not None and command not in m["commands"]:
            continue
        default = defaults.get(f.name, f.default)
        text = help.get(f.name, m["help"])
        flag = m["flag"] or flag_of(f.name)
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action="store_true", default=bool(default), help=text)
            continue
        kw = dict(dest=f.name, type=m["type"] or kind, default=default, help=text)
        if m["choices"] is not None:
            kw["choices"] = m["choices"]
        if m["metavar"]:
            kw["metavar"] = m["metavar"]
        if m["nargs"] is not None:
            kw.update(nargs=m["nargs"], const=m["const"])
        parser.add_argument(flag, **kw)


def field_names(cls, command: str | None = None) -> set[str]:
    """The names of ``cls``'s fields (those a sub-command ``command`` shows, when given)."""
    return {f.name for f in dataclasses.fields(cls)
            if command is None or field_meta(f)["commands"] is None or command in field_meta(f)["commands"]}


def from_namespace(cls, ns: argparse.Namespace, **overrides):
    """The spec of parsed arguments: every field of ``cls`` found in ``ns`` (then ``overrides``)."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(ns).items() if k in names}
    values.update(overrides)
    return cls(**values)


def _ordered_fields(spec) -> list[dataclasses.Field]:
    """The spec's fields, its own class's first (declaration order), then those it inherits (a FitSpec's
    backbone and head before the split settings it shares with fine-tuning)."""
    own = set(type(spec).__dict__.get("__annotations__", {}))
    fields = dataclasses.fields(spec)
    return [f for f in fields if f.name in own] + [f for f in fields if f.name not in own]


def to_dict(spec, *, identity_only: bool = False) -> dict:
    """A spec's fields as plain values (tuples as lists): its own fields first, then inherited ones."""
    out = {}
    for f in _ordered_fields(spec):
        if identity_only and not field_meta(f)["identity"]:
            continue
        v = getattr(spec, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def identity(spec) -> dict:
    """The fields that make the result (``identity=True``): two runs with equal identities are the same run."""
    return to_dict(spec, identity_only=True)


def to_yaml(spec, header: str | None = None, extra: dict | None = None) -> str:
    """The spec as a YAML config (``--config`` of it gives the same spec); ``extra``: settings of the
    command that are not the spec's (the store a run reads), written first."""
    import yaml

    body = yaml.safe_dump({**(extra or {}), **to_dict(spec)}, sort_keys=False, default_flow_style=False)
    return (f"# {header}\n" if header else "") + body


def read_config(path, names=None) -> dict:
    """A YAML (or JSON) config file -> {field name: value}; keys may use dashes. With ``names`` (the
    settings a command takes), any other key is refused (ValueError naming the file and the key)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"--config {path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"--config {path}: is a folder, not a YAML file (a run folder's is config.yaml)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--config {path}: not readable ({e.strerror if isinstance(e, OSError) else e.reason})") from None
    except yaml.YAMLError as e:
        raise ValueError(f"--config {path}: not readable YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        raise ValueError(f"--config {path}: holds no settings (an empty file; --print-config writes one)")
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: expected a mapping of settings (key: value), got {type(data).__name__}")
    out = {str(k).replace("-", "_"): v for k, v in data.items()}
    if names is not None:
        names = set(names)
        bad = sorted(set(out) - names)
        if bad:
            raise ValueError(f"--config {path}: unknown setting(s) {', '.join(bad)}; known: {', '.join(sorted(names))}")
    return out


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` (YAML settings; flags given beside it win) and ``--print-config``."""
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="YAML file of settings (keys: the option names, e.g. head: mlp, class-weight: "
                             "balanced); options given on the command line override it. --print-config writes one; "
                             "the run folders of heads.fit and heads.finetune hold theirs (config.yaml)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved settings as YAML (for --config) and exit without running")


def parse_with_config(parser: argparse.ArgumentParser, argv=None, names=None,
                      target: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """Parse ``argv``; with ``--config FILE`` its values become the defaults of ``target`` (the parser,
    or the sub-command's parser that holds the options) first, so options given on the command line
    override the file. ``names``: the settings the file may hold. A bad file exits like a bad option
    (status 2, the file and the key named)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        try:
            values = read_config(known.config, names)
            values = {k: _config_value(target or parser, k, v, known.config) for k, v in values.items()}
        except (ValueError, FileNotFoundError) as e:
            (target or parser).error(str(e))
        (target or parser).set_defaults(**values)
    return parser.parse_args(argv)


def _config_value(parser: argparse.ArgumentParser, name: str, value, path):
    """A config file's ``value`` of setting ``name``, checked as its option would check it on the command
    line (argparse leaves defaults that are not strings unconverted): ``epochs: ten``, ``epochs: 2.5``,
    ``epochs: true``, ``no_progress: "yes"`` or a list for a number are refused naming the file and the
    setting (ValueError); numbers for a text option become text (``store: 5`` -> ``"5"``). Lists for text
    options (``tasks: [singer]``, ``lr: [1e-3, 1e-2]``) and ``null`` pass on to the spec, which checks them."""
    # argparse has no public way to look an option up by its destination; ``_actions`` is the list that
    # add_argument fills, the same on every Python this project supports
    action = next((a for a in parser._actions if a.dest == name), None)
    if action is None or value is None:
        return value
    where = f"--config {path}: {name}"
    if action.nargs == 0:  # a switch (store_true)
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {value!r}")
        return value
    kind = action.type
    if kind in (int, float):
        if isinstance(value, str):
            try:
                value = kind(value)
            except ValueError:
                raise ValueError(f"{where}: expected {'an integer' if kind is int else 'a number'}, "
                                 f"got {value!r}") from None
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or (
                kind is int and value != int(value)):
            raise ValueError(f"{where}: expected {'an integer' if kind is int else 'a number'}, got {value!r}")
        value = kind(value)
    elif kind in (None, str):
        if isinstance(value, (bool, int, float)):
            value = str(value)
        elif isinstance(value, dict):
            raise ValueError(f"{where}: expected a value or a list, got a mapping")
    elif isinstance(value, str):  # the option's own converter (a seed list, a layer range, ...)
        try:
            value = kind(value)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
            raise ValueError(f"{where}: {e}") from None
    if action.choices is not None and not isinstance(value, list) and value not in action.choices:
        raise ValueError(f"{where}: {value!r}: choose one of {', '.join(map(str, action.choices))}")
    return value


def write_config(spec, path, header: str | None = None, extra: dict | None = None) -> Path:
    """Write a spec's YAML config (a run folder's ``config.yaml``)."""
    path = Path(path)
    path.write_text(to_yaml(spec, header, extra), encoding="utf-8")
    return path
