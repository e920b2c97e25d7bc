"""Click options generated from the config dataclasses (cmt_pipeline/config.py): each option's type, choices,
range, help and default come from its field, declared once there, so --help and docs/cli.md cannot drift from
the TOML files and the checks."""

from __future__ import annotations

import dataclasses
from typing import get_type_hints

import click

PATHS = {"folder": click.Path(file_okay=False), "existing folder": click.Path(exists=True, file_okay=False),
         "any": click.Path()}
BOUNDS = ("min", "max", "min_open", "max_open")


class ShownRange:
    """A number whose range --help shows (as [x>0] after the help; the metavar stays INTEGER or FLOAT) but
    config.py checks when the config is built, so that a value out of range gets the same one-line error from
    the CLI as from a TOML file."""

    def convert(self, value, param, ctx):
        return self.number.convert(value, param, ctx)


class IntRange(ShownRange, click.IntRange):
    number, name = click.INT, click.INT.name


class FloatRange(ShownRange, click.FloatRange):
    number, name = click.FLOAT, click.FLOAT.name


def int_list(ctx, param, value):
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers such as 48,96, got {value!r}") from None


def count_or_list(ctx, param, value):
    """'1,2,3' is a list, '3' a count (--seeds)."""
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()] if "," in value else int(value)
    except ValueError:
        raise click.BadParameter(f"a count or a comma list of integers, got {value!r}") from None


def param_type(meta, hint):
    if meta.get("path"):
        return PATHS[meta["path"]]
    if meta.get("choices"):
        return click.Choice(meta["choices"])
    number = next(t for t in getattr(hint, "__args__", (hint,)) if t is not type(None))  # int | None -> int
    bounds = {k: meta[k] for k in BOUNDS if k in meta}
    return (IntRange if number is int else FloatRange)(**bounds) if bounds else number


def default_text(f: dataclasses.Field, flags: list[str]) -> str:
    """'  [default: X]' for the help; empty for fields without a value of their own (None, ""), whose help says
    in words what stands in for them."""
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if value in (None, ""):
        return ""
    if isinstance(value, bool):
        text = flags[0] if value else flags[1]
    elif isinstance(value, list):
        text = ",".join(map(str, value))
    else:
        text = f"{value:g}" if isinstance(value, float) else str(value)
    return f"  [default: {text}]"


def config_option(f: dataclasses.Field, hint):
    flag = "--" + f.name.replace("_", "-")
    if hint is bool:
        flags = [flag, f.metadata.get("negative", "--no-" + flag[2:])]
        return click.option(f"{flag}/{flags[1]}", default=None, help=f.metadata["help"] + default_text(f, flags))
    if list in getattr(hint, "__args__", ()):  # int | list
        kind = {"callback": count_or_list}
    else:
        kind = {"callback": int_list} if hint is list else {"type": param_type(f.metadata, hint)}
    return click.option(flag, **kind, help=f.metadata["help"] + default_text(f, [flag]))


def config_options(cls):
    """Decorator: one option per field of the config dataclass `cls` (but toml_only ones), in field order. Each
    defaults to None, so only what is typed overrides the --config file, which overrides the dataclass."""
    hints = get_type_hints(cls)

    def add(command):
        for f in reversed(dataclasses.fields(cls)):
            if not f.metadata.get("toml_only"):
                command = config_option(f, hints[f.name])(command)
        return command

    return add
