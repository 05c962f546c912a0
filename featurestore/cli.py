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
