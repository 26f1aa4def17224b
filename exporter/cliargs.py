"""Command-line plumbing shared by both CLIs: a subcommand's options may come before or after its name."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser's subcommands by name (empty when it has none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _option_names(parser: argparse.ArgumentParser) -> dict[str, bool]:
    """Every option string of the parser -> whether it takes a value."""
    return {name: action.nargs != 0 for action in parser._actions for name in action.option_strings}


def _split_after(words: Sequence[str], own: dict[str, bool], sub: dict[str, bool]) -> tuple[list[str], list[str]]:
    """Tokens after the subcommand, split into its own and the top parser's options (`status --log-level x`)."""
    rest: list[str] = []
    top_level: list[str] = []
    index = 0
    while index < len(words):
        word = words[index]
        if word == "--":
            rest.extend(words[index:])
            break
        name = word.split("=", 1)[0]
        target = top_level if name in own and name not in sub else rest
        target.append(word)
        if word.startswith("-") and "=" not in word and index + 1 < len(words) and {**own, **sub}.get(name):
            target.append(words[index + 1])
            index += 1
        index += 1
    return rest, top_level


def hoist_options(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """argv reordered so each option lands on its parser, whichever side of the subcommand it was written."""
    commands = _subcommands(parser)
    own = _option_names(parser)
    takes_value: dict[str, bool] = {}
    for sub in commands.values():
        takes_value.update(_option_names(sub))
    kept: list[str] = []
    moved: list[str] = []
    index = 0
    while index < len(argv):
        word = argv[index]
        if word in commands:
            after, top_level = _split_after(argv[index + 1 :], own, _option_names(commands[word]))
            return [*kept, *top_level, word, *moved, *after]
        if word == "--" or not word.startswith("-"):
            break  # a positional before any subcommand: leave it to argparse to report
        name = word.split("=", 1)[0]
        target = kept if name in own else moved
        target.append(word)
        needs_value = own.get(name, takes_value.get(name, False))
        if needs_value and "=" not in word and index + 1 < len(argv):
            target.append(argv[index + 1])
            index += 1
        index += 1
    return list(argv)
