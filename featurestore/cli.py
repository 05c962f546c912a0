"""The help formatter every command of the project uses.

argparse's ``ArgumentDefaultsHelpFormatter`` appends ``(default: X)`` to every option, so an option
whose help already explains its default printed it twice, and flags printed ``(default: False)``.
:class:`HelpFormatter` appends the default once, only when it says something: not for flags, not for
``None`` (the help text says what happens when the option is not given), and not when the help text
already names it.
"""
from __future__ import annotations

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown once (see the module docstring)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.default is None or action.default is False or action.default == argparse.SUPPRESS
                or not action.option_strings
                or "default" in text.lower() or "%(default)" in text
                or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))):
            return text
        return text + " (default: %(default)s)"


def parse_spec(parser: argparse.ArgumentParser, cls, argv=None, make=None):
    """Parse ``argv`` into a spec of dataclass ``cls`` (declared with :func:`featurestore.options.option`):
    ``--config FILE`` values first (keys: the fields of ``cls``; any other key exits 2 naming it),
    options given on the command line over them, then ``make(args)`` (default
    :func:`featurestore.options.from_namespace`). A refused setting (:class:`~featurestore.options.SpecError`)
    exits 2 naming its flag, like a bad option; ``--print-config`` prints the spec as YAML and exits 0.
    ``parser`` must have had :func:`featurestore.options.add_config_options`."""
    from featurestore import options

    args = options.parse_with_config(parser, argv, names=options.field_names(cls))
    try:
        spec = make(args) if make is not None else options.from_namespace(cls, args)
    except options.SpecError as e:
        parser.error(e.as_flag())
    if args.print_config:
        print(options.to_yaml(spec), end="")
        parser.exit(0)
    return spec


def add_field(parser, cls, name: str, *, positional: bool = False, **kw) -> argparse.Action:
    """One field of the spec class ``cls`` (declared with :func:`featurestore.options.option`) as an
    argument that :func:`featurestore.options.add_options` does not make: a positional argument
    (``positional=True``, named like the field, its ``metavar`` shown) or an option with an argparse
    ``action``/``nargs`` of its own (``kw``, e.g. ``action="append"``). Help, choices, metavar and the
    default come from the field's declaration, so the setting is still declared once; leave the field
    out of ``add_options`` with ``skip``."""
    from featurestore.options import field_meta, fields_of, flag_of

    f, kind = next((f, kind) for f, kind in fields_of(cls) if f.name == name)
    m = field_meta(f)
    args = dict(help=m["help"], **kw)
    if m.get("nargs") is not None:
        args.setdefault("nargs", m["nargs"])
    if m["metavar"]:
        args["metavar"] = m["metavar"]
    if m["choices"] is not None:
        args["choices"] = m["choices"]
    if kind is not bool and kw.get("action") not in ("store_true", "store_false"):
        args.setdefault("type", m["type"] or kind)
    if positional:
        return parser.add_argument(name, **args)
    return parser.add_argument(m["flag"] or flag_of(name), dest=name, default=f.default, **args)
