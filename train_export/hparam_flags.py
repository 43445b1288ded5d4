"""``train``'s hyper-parameter flags, made from :class:`~train_export.hparams.HParams`: one ``--name`` per field,
its help text from the field's entry in the class docstring, its default from the field's default. The
dataclass stays the one place that says what a hyper-parameter means.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re

from train_export.hparams import HParams

#: Spelling of the flags whose value is true, false or a named choice.
_NAMED_CHOICES = {"mixed_precision": "true, false, bfloat16 or float16", "jit_compile": "true, false or auto",
                  "data_parallel": "auto, true or false"}


def field_docs(cls: type = HParams) -> dict[str, str]:
    """Each field's text from the ``Attributes:`` section of ``cls``'s docstring, joined into one line.

    Raises:
        ValueError: a field has no entry (a new hyper-parameter must say what it means).
    """
    doc = inspect.getdoc(cls) or ""
    _, _, section = doc.partition("Attributes:\n")
    docs: dict[str, list[str]] = {}
    current = None
    for line in section.splitlines():
        entry = re.match(r"^    (\w+): (.*)$", line)
        if entry:
            current = entry.group(1)
            docs[current] = [entry.group(2)]
        elif current and line.startswith("        "):
            docs[current].append(line.strip())
        elif line.strip():
            current = None  # the section ended
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in docs]
    if missing:
        raise ValueError(f"{cls.__name__} fields without a docstring entry: {', '.join(missing)}")
    return {name: _plain(" ".join(parts)) for name, parts in docs.items()}


def _plain(text: str) -> str:
    """reStructuredText markup as a terminal shows it: ``:data:`X``` and ````x```` become X and x."""
    return re.sub(r":\w+:`~?([^`]+)`", r"\1", text).replace("``", "")


def show_default(value: object) -> str:
    """A field's default as a person types it on the command line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(map(str, value)) if value else "none"
    if value == "":
        return "none"
    return str(value)


def _default(field: dataclasses.Field) -> object:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def comma_list(text: str) -> list[str]:
    """An argparse ``type`` for comma-separated names (``--labels A,B,...``), blanks dropped."""
    return [p.strip() for p in text.split(",") if p.strip()]


def _true_false_or_name(text: str) -> bool | str:
    return {"true": True, "false": False}.get(text.lower(), text)


def add_hparam_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--name`` flag per :class:`HParams` field, with help and default (flags default to None: keep the
    ``--hparams`` file's value, else the field's default)."""
    group = parser.add_argument_group(
        "hyper-parameters", "Each defaults to the --hparams file's value if given, else the default shown.")
    docs = field_docs(HParams)
    for f in dataclasses.fields(HParams):
        flag = "--" + f.name.replace("_", "-")
        # argparse %-formats help texts: a literal % in the docs must be doubled.
        text = f"{docs[f.name]} (default: {show_default(_default(f))})".replace("%", "%%")
        if f.type == "list[str]":
            group.add_argument(flag, type=comma_list, default=None, metavar="A,B,...", help=text)
        elif f.type == "bool":
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif f.type == "int":
            group.add_argument(flag, type=int, default=None, metavar="N", help=text)
        elif f.type == "float":
            group.add_argument(flag, type=float, default=None, metavar="X", help=text)
        elif f.type == "str | bool":
            group.add_argument(flag, type=_true_false_or_name, default=None, metavar="VALUE",
                               help=f"{_NAMED_CHOICES[f.name]}: {text}")
            group.add_argument("--no-" + flag[2:], dest=f.name, action="store_const", const=False,
                               help=f"the same as {flag} false")
        else:
            group.add_argument(flag, type=str, default=None, metavar="TEXT", help=text)


def hparams_from_args(args: argparse.Namespace) -> HParams:
    """The ``--hparams`` file (or the defaults) with the flags given on the command line over it."""
    base = HParams.load(args.hparams) if args.hparams else HParams()
    return base.override(**{f.name: getattr(args, f.name) for f in dataclasses.fields(HParams)})
