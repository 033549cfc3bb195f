"""Options records: a frozen dataclass whose fields are a command's settings.

A field made with :func:`option` carries its help text, its check (an ``Interval`` or
choices), how the command line spells it and whether it changes the result. The checks run
when the record is made; :meth:`Options.add_arguments` gives one flag per field with the same
checks; :meth:`Options.from_namespace` reads them back; :meth:`Options.result_keys` lists what
a resumed run must share with the run it continues. :class:`~featurebank.ExtractConfig` and
:class:`~featurebank.FinetuneConfig` are such records.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from dataclasses import MISSING, asdict, field, fields
from typing import Any

from ._io import Interval, check_choice

__all__ = ["Options", "option"]


def option(default: Any, help: str, *, check: Interval | None = None,
           choices: tuple[str, ...] | None = None, result: bool = True,
           metavar: str | None = None, flags: tuple[str, ...] = (),
           parse: Callable[[str], Any] | None = None) -> Any:
    """A field with what the CLI and the checks need.

    ``result`` options change what a run computes, so a resumed run must use the values it
    started with; ``flags`` replace the flag made from the name (``--batch-size``); ``parse``
    is the CLI's ``type=`` when the check alone does not say how to read the text.
    """
    return field(default=default, metadata={
        "help": help, "check": check, "choices": choices, "result": result,
        "metavar": metavar, "flags": flags, "parse": parse})


class Options:
    """Base of the options records (frozen dataclasses of :func:`option` fields)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if value is None and f.default is None:
                continue  # None is the default: "resolved where it acts" (e.g. per device)
            if meta["check"] is not None:
                object.__setattr__(self, f.name, meta["check"].check(f.name, value))
            elif meta["choices"] is not None:
                check_choice(f.name, value, meta["choices"])
            elif f.type == "bool" and not isinstance(value, bool):
                check_choice(f.name, value, [True, False])

    @classmethod
    def result_keys(cls) -> tuple[str, ...]:
        """Options a resumed run must share with the run it continues."""
        return tuple(f.name for f in fields(cls) if f.metadata["result"])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def merged(cls, config: Options | None, options: dict[str, Any], function: str):
        """``config`` (default: the defaults) with ``options`` (keyword arguments of
        ``function``) replacing its fields; an unknown keyword is a TypeError naming them."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise TypeError(f"{function}() got unexpected keyword arguments {unknown}; its "
                            f"options are {sorted(names)}.")
        return dataclasses.replace(config or cls(), **options)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One flag per field (``--batch-size``, ``--augment/--no-augment``), values checked
        with the same messages as the Python API; help says the default where there is one."""
        for f in fields(cls):
            meta = f.metadata
            flags = meta["flags"] or (f"--{f.name.replace('_', '-')}",)
            default = f.default if f.default is not MISSING else None
            shown = "" if default is None else f" (default: {default})"
            kwargs: dict[str, Any] = {"default": default, "dest": f.name,
                                      "help": meta["help"] + shown}
            if f.type == "bool":
                kwargs["action"] = argparse.BooleanOptionalAction
            elif meta["choices"]:
                kwargs["choices"] = meta["choices"]
            else:
                kwargs["type"] = meta["parse"] or (meta["check"].parse if meta["check"]
                                                   else str)
                kwargs["metavar"] = meta["metavar"] or ("N" if "int" in f.type else "X")
            action = parser.add_argument(*flags, **kwargs)
            if action.help.count("(default:") > 1:  # Pythons whose BooleanOptionalAction
                action.help = action.help.replace(" (default: %(default)s)", "")  # adds one

    @classmethod
    def from_namespace(cls, args: argparse.Namespace):
        """The record of parsed command-line arguments (those of :meth:`add_arguments`)."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})
