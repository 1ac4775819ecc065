"""Generate argparse flags from the config dataclasses, and parse them back.

Every leaf field becomes ``--field-name`` (nested sections are flattened; names are unique by
construction, checked here). Booleans get ``--x/--no-x``; tuples take several values;
``Optional`` fields accept ``none``; ``Literal`` fields list their choices.
"""

from __future__ import annotations

import argparse
import sys
import typing
from typing import Any, Literal, Union, get_args, get_origin

from smfp.config import apply_options, leaf_fields


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a mistake as one line on stderr and exits 2, and takes only whole option names
    (argparse's prefix matching let ``smfp bench bandit --alpha 0.3`` silently set --alpha-lr)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def one_line(text: str) -> str:
    """``text`` with newlines and other control characters escaped (they may come from user input)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def _unwrap_optional(tp) -> tuple[Any, bool]:
    if get_origin(tp) is Union:
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _scalar_parser(tp, optional: bool, name: str):
    base = {int: int, float: float, str: str}.get(tp, str)

    def parse(text: str):
        if optional and text.lower() == "none":
            return None
        try:
            value = base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} expects {base.__name__}, got {text!r}") from None
        if base is float and value != value:  # NaN is never a valid setting
            raise argparse.ArgumentTypeError(f"{name} expects a number, got {text!r}")
        return value

    parse.__name__ = base.__name__
    return parse


def add_dataclass_args(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    seen: set[str] = set()
    defaults = cls()
    groups: dict[str, argparse._ArgumentGroup] = {}
    for path, f, tp in leaf_fields(cls):
        if f.name in skip:
            continue
        if f.name in seen:
            raise RuntimeError(f"config field name {f.name!r} is not unique; the CLI needs unique names")
        seen.add(f.name)
        default = defaults
        for part in path:
            default = getattr(default, part)
        section = path[0] if len(path) > 1 else "run"
        group = groups.setdefault(section, parser.add_argument_group(f"{section} options"))
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("doc", "")
        inner, optional = _unwrap_optional(tp)
        kw: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS)
        if inner is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, help=f"{help_text} (default: {default})",
                               **kw)
            continue
        if get_origin(inner) is Literal:
            choices = list(get_args(inner))
            group.add_argument(flag, choices=choices, help=f"{help_text} (default: {default})", **kw)
            continue
        if get_origin(inner) is tuple:
            elem = get_args(inner)[0]
            group.add_argument(flag, nargs="+", type=_scalar_parser(elem, False, flag), metavar="N",
                               help=f"{help_text} (default: {' '.join(map(str, default))})", **kw)
            continue
        metavar = {int: "N", float: "X", str: "TEXT"}.get(inner, "VALUE")
        group.add_argument(flag, type=_scalar_parser(inner, optional, flag), metavar=metavar,
                           help=f"{help_text} (default: {default})", **kw)


def build_dataclass(cls, values: dict, base=None):
    """An instance of ``cls`` with the leaf fields named in ``values`` replaced (``smfp.config.apply_options``: the
    fields set are recorded in ``TrainConfig.given``)."""
    return apply_options(base if base is not None else cls(), values)


def fail(message: str, code: int = 2) -> typing.NoReturn:
    print(f"smfp: error: {one_line(message)}", file=sys.stderr)
    raise SystemExit(code)
