"""Every option of every command has help text that shows its default once and lists its choices."""
from __future__ import annotations

import argparse
import importlib

import pytest


class _Captured(Exception):
    def __init__(self, parser):
        self.parser = parser


def _parser_of(module: str, entry: str):
    """The ArgumentParser a command builds (captured at its parse_args call, before any work)."""
    mod = importlib.import_module(module)

    def capture(self, *a, **k):
        raise _Captured(self)

    mp = pytest.MonkeyPatch()
    mp.setattr(argparse.ArgumentParser, "parse_args", capture)
    try:
        getattr(mod, entry)([])
    except _Captured as c:
        return c.parser
    finally:
        mp.undo()
    raise AssertionError(f"{module}.{entry} built no parser")


def _pipeline_parser(name: str):
    from pipelines.command import build_parser

    return build_parser(importlib.import_module(f"pipelines.{name}").SPEC)[0]


PARSERS = {
    "featurestore.build": lambda: _parser_of("featurestore.build", "parse_args"),
    "featurestore.verify": lambda: _parser_of("featurestore.verify", "parse_args"),
    "featurestore.export": lambda: _parser_of("featurestore.export", "parse_args"),
    "featurestore.ingest": lambda: _parser_of("featurestore.ingest", "parse_args"),
    "heads.fit": lambda: _parser_of("heads.fit", "parse_args"),
    "heads.score": lambda: _parser_of("heads.score", "main"),
    "heads.migrate": lambda: _parser_of("heads.migrate", "parse_args"),
    "pipelines.clustering": lambda: _parser_of("pipelines.clustering", "parse_args"),
    "pipelines.singer": lambda: _pipeline_parser("singer"),
    "pipelines.technique": lambda: _pipeline_parser("technique"),
    "pipelines.transcription": lambda: _pipeline_parser("transcription"),
    "benchmarks.extraction": lambda: _parser_of("benchmarks.extraction", "parse_args"),
    "benchmarks.heads_fit": lambda: _parser_of("benchmarks.heads_fit", "main"),
    "benchmarks.memory": lambda: _parser_of("benchmarks.memory", "parse_args"),
    "benchmarks.speed": lambda: _parser_of("benchmarks.speed", "parse_args"),
    "benchmarks.storage": lambda: _parser_of("benchmarks.storage", "parse_args"),
}


def _all_parsers(parser, name):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _all_parsers(sub, f"{name} {sub_name}")


def _problems(parser) -> list[str]:
    out = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        opt = "/".join(action.option_strings) or action.dest
        entry = parser._get_formatter()._format_action(action)
        if not (action.help or "").strip():
            out.append(f"{opt}: no help text")
            continue
        if entry.lower().count("default") > 1:
            out.append(f"{opt}: default printed more than once: {entry!r}")
        flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        if not flag and action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            shown = action.default if not isinstance(action.default, list) else action.default[0]
            if str(shown) not in " ".join(entry.split()):
                out.append(f"{opt}: default {action.default!r} not shown: {entry!r}")
        for choice in action.choices or []:
            if str(choice) not in entry:
                out.append(f"{opt}: choice {choice!r} not listed")
    return out


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_every_option_has_help_with_default_and_choices(command):
    problems = []
    for name, parser in _all_parsers(PARSERS[command](), command):
        problems += [f"{name}: {p}" for p in _problems(parser)]
    assert not problems, "\n".join(problems)


def test_the_checker_catches_a_silent_option():
    from featurestore.cli import HelpFormatter

    p = argparse.ArgumentParser(formatter_class=HelpFormatter)
    p.add_argument("--lr")
    p.add_argument("--epochs", type=int, default=3, help="epochs (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed")
    problems = _problems(p)
    assert any(s.startswith("--lr: no help") for s in problems)
    assert not any(s.startswith("--epochs") or s.startswith("--seed") for s in problems)
    assert "(default: 0)" in p.format_help() and "(default: 3)" not in p.format_help()
