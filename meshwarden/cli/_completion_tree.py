"""The argparse tree reduced to what a shell completes: commands, their flags and flag values."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

_FILE_WORDS = ("FILE", "DIR", "PATH")


@dataclass(frozen=True)
class Flag:
    names: tuple[str, ...]
    help: str
    takes_value: bool
    choices: tuple[str, ...] = ()
    files: bool = False


@dataclass
class Command:
    """One node of the tree: `path` is `""` for `meshwarden` itself, else e.g. `token create`."""

    path: str
    flags: list[Flag] = field(default_factory=list)
    subcommands: list[tuple[str, str]] = field(default_factory=list)  # (name, help)
    files: bool = False  # positional arguments are paths


def command_tree(parser: argparse.ArgumentParser) -> list[Command]:
    """Every command under `parser` (itself first), with what a shell can complete for it."""
    commands: list[Command] = []
    _walk(parser, "", commands)
    return commands


def _walk(parser: argparse.ArgumentParser, path: str, out: list[Command]) -> None:
    command = Command(path)
    out.append(command)
    children: list[tuple[str, argparse.ArgumentParser]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._get_subactions()}
            for name, sub in action.choices.items():
                command.subcommands.append((name, helps.get(name, "")))
                children.append((name, sub))
        elif action.option_strings:
            if action.help != argparse.SUPPRESS:  # hidden (deprecated) flags are not offered
                command.flags.append(_flag(action))
        elif _is_path(action):
            command.files = True
    for name, sub in children:
        _walk(sub, f"{path} {name}".strip(), out)


def _flag(action: argparse.Action) -> Flag:
    takes_value = action.nargs != 0
    choices = tuple(str(c) for c in action.choices) if action.choices else ()
    return Flag(
        tuple(action.option_strings),
        _plain_help(action),
        takes_value,
        choices,
        takes_value and _is_path(action),
    )


def _is_path(action: argparse.Action) -> bool:
    metavar = action.metavar if isinstance(action.metavar, str) else ""
    return action.type is Path or metavar.upper() in _FILE_WORDS


def _plain_help(action: argparse.Action) -> str:
    text = (action.help or "").replace("%(default)s", str(action.default)).replace("%%", "%")
    first = " ".join(text.split()).split("; ")[0].split(" (")[0]
    return first if len(first) <= 70 else first[:67] + "..."
