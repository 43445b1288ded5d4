"""Strict validation of plain data (a TOML file, a JSON manifest) into frozen dataclasses, every problem named.

The configuration, the model bundle's manifest and the fleet inventory are dataclasses whose fields are declared
with :func:`option` (default, description, limits). :func:`parse` builds one from a dict and reports every bad key
at once, each as a :class:`Problem` with its dotted key, in words a user acts on ("must be a whole number, not the
string '1883' (write it without quotes)"); constructing a dataclass directly runs the same checks (through
:class:`Validated`), so a value never gets in unchecked.

Strict, as TOML has real booleans and numbers: a quoted number, "yes" or ``1`` for a boolean is a mistake to
report, not to coerce. The only conversions are a whole number where a number is expected and a string where a
path is. Unknown keys are problems (a typo never falls back to a default silently) unless a dataclass keeps them
(``extra_key``, the inventory's per-host overrides).

Written here rather than taken from a library: pydantic, which did this before, cost the device about 0.2 s of
every start and 15 MB of memory (importing it and building its validators); msgspec stops at the first problem
and names a dataclass, not the key, for checks of its own.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any, TypeVar, Union

T = TypeVar("T")


@dataclass(frozen=True)
class Rules:
    """What :func:`option` records of a field: its description and its limits."""

    doc: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    pattern: str | None = None
    #: What ``pattern`` means, for the message (instead of the regular expression).
    pattern_hint: str | None = None
    min_length: int | None = None


@dataclass(frozen=True)
class Problem:
    """One bad key: where it is (its keys and list indexes, outermost first) and what is wrong with it."""

    loc: tuple[str | int, ...]
    message: str
    #: ``"unknown"`` for a key the dataclass does not have, ``"missing"`` for a required one left out, else ``""``.
    kind: str = ""

    @property
    def key(self) -> str:
        """The dotted key (list indexes as numbers), or ``""`` for the top level."""
        return ".".join(str(p) for p in self.loc)

    def __str__(self) -> str:
        return f"{self.key or '(top level)'}: {self.message}"


class Invalid(ValueError):
    """The data does not validate; :attr:`problems` lists every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(map(str, problems)))
        self.problems = problems


def option(default: Any = MISSING, *, doc: str, factory: Callable[[], Any] | None = None, ge: float | None = None,
           gt: float | None = None, le: float | None = None, pattern: str | None = None,
           pattern_hint: str | None = None, min_length: int | None = None) -> Any:
    """A dataclass field with its description and limits (``ge``/``gt``/``le`` for numbers, ``pattern`` for
    strings, ``min_length`` for strings and lists); no ``default`` and no ``factory``: the key is required."""
    rules = Rules(doc, ge, gt, le, pattern, pattern_hint, min_length)
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"rules": rules})
    return dataclasses.field(default=default, metadata={"rules": rules})


def rules_of(field: dataclasses.Field) -> Rules:
    """The :class:`Rules` of a field declared with :func:`option` (an empty description otherwise)."""
    return field.metadata.get("rules") or Rules("")


#: Resolved annotations per dataclass, worked out once (resolving them is most of a validation's cost).
_HINTS: dict[type, dict[str, Any]] = {}


def hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a dataclass's fields (with ``Annotated`` checks kept)."""
    found = _HINTS.get(cls)
    if found is None:
        found = _HINTS[cls] = typing.get_type_hints(cls, include_extras=True)
    return found


class Validated:
    """Base of a validated dataclass: construction checks every field, then :meth:`check` (across fields).

    ``extra_key`` names a ``dict`` field that keeps the unknown keys :func:`parse` meets, instead of refusing them.
    """

    extra_key: typing.ClassVar[str | None] = None

    def __post_init__(self) -> None:
        problems: list[Problem] = []
        for f in dataclasses.fields(self):  # type: ignore[arg-type]  # subclasses are dataclasses
            try:
                value = _value(hints(type(self))[f.name], getattr(self, f.name), rules_of(f), (f.name,))
            except Invalid as exc:
                problems += exc.problems
                continue
            object.__setattr__(self, f.name, value)  # a converted value (int to float, str to Path) stays
        if problems:
            raise Invalid(problems)
        try:
            self.check()
        except ValueError as exc:
            raise Invalid([Problem((), str(exc))]) from None

    def check(self) -> None:
        """Checks across fields; raise ValueError saying what to change. Nothing by default."""


def parse(cls: type[T], data: Any) -> T:
    """Build the dataclass ``cls`` (a :class:`Validated`) from ``data`` (a dict of plain values).

    Raises:
        Invalid: every problem found, each located by its keys within ``data``.
    """
    if not isinstance(data, Mapping):
        raise Invalid([Problem((), f"must be a table of keys, not {_what(data)}")])
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    extra_key = getattr(cls, "extra_key", None)
    problems: list[Problem] = []
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in data.items():
        f = fields.get(key) if key != extra_key else None
        if f is None:
            if extra_key is not None:
                extra[key] = value
            else:
                problems.append(Problem((key,), "unknown key", "unknown"))
            continue
        try:
            values[key] = _value(hints(cls)[key], value, rules_of(f), (key,))
        except Invalid as exc:
            problems += exc.problems
    for name, f in fields.items():
        if name not in data and name != extra_key and f.default is MISSING and f.default_factory is MISSING:
            problems.append(Problem((name,), "is required", "missing"))
    if problems:
        raise Invalid(problems)
    if extra_key is not None:
        values[extra_key] = extra
    return cls(**values)  # its checks across fields raise Invalid, located within it


def dump(obj: Any) -> Any:
    """A validated dataclass as plain data (paths as strings), which :func:`parse` takes back."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {f.name: dump(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        extra_key = getattr(obj, "extra_key", None)
        if extra_key is not None:
            out.update(out.pop(extra_key))
        return out
    if isinstance(obj, (list, tuple)):
        return [dump(v) for v in obj]
    if isinstance(obj, dict):
        return {k: dump(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _what(value: Any) -> str:
    """How a value reads in a message."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "a table"
    return "null" if value is None else type(value).__name__


def _expected(value: Any, wanted: str) -> Invalid:
    hint = " (write it without quotes)" if isinstance(value, str) and wanted in _UNQUOTED else ""
    return Invalid([Problem((), f"must be {wanted}, not {_what(value)}{hint}")])


#: Types a quoted value is the usual mistake for.
_UNQUOTED = ("true or false", "a whole number", "a number")


def _value(hint: Any, value: Any, rules: Rules, loc: tuple[str | int, ...]) -> Any:
    """``value`` checked against the annotation ``hint`` and ``rules``; Invalid (located at ``loc``) if not."""
    try:
        return _checked(hint, value, rules)
    except Invalid as exc:
        raise Invalid([dataclasses.replace(p, loc=(*loc, *p.loc)) for p in exc.problems]) from None


def _checked(hint: Any, value: Any, rules: Rules) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        # A Rules in the annotation gives the limits where no field carries them (a list's items).
        value = _checked(args[0], value, next((m for m in args[1:] if isinstance(m, Rules)), rules))
        for check in args[1:]:
            if isinstance(check, Rules):
                continue
            try:
                value = check(value)
            except ValueError as exc:
                raise Invalid([Problem((), str(exc))]) from None
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _checked(inner, value, rules)
    if origin is typing.Literal:
        if any(type(value) is type(a) and value == a for a in args):
            return value
        choices = ", ".join(repr(a) for a in args[:-1]) + f" or {args[-1]!r}" if len(args) > 1 else repr(args[0])
        raise Invalid([Problem((), f"must be {choices}, not {_what(value)}")])
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise _expected(value, "a list")
        items, problems = [], []
        for i, item in enumerate(value):
            try:
                items.append(_value(args[0], item, Rules(""), (i,)))
            except Invalid as exc:
                problems += exc.problems
        if problems:
            raise Invalid(problems)
        _length(items, rules)
        return items
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise _expected(value, "a table")
        return dict(value)
    if hint is Any:
        return value
    if isinstance(hint, type) and issubclass(hint, Validated):
        return value if isinstance(value, hint) else parse(hint, value)
    return _scalar(hint, value, rules)


def _scalar(hint: Any, value: Any, rules: Rules) -> Any:
    if hint is bool:
        if not isinstance(value, bool):
            raise _expected(value, "true or false")
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _expected(value, "a whole number")
    elif hint is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise _expected(value, "a number")
        try:
            value = float(value)
        except OverflowError:  # a whole number beyond any float
            value = math.inf
        if not math.isfinite(value):
            raise Invalid([Problem((), f"must be a finite number, not {value!r}")])
    elif hint is str or hint is Path:
        if isinstance(value, Path) and hint is Path:
            return value
        if not isinstance(value, str):
            raise _expected(value, "a string")
        if hint is Path and not value.strip():
            # '' as a path would mean the current folder: never what an empty value meant.
            raise Invalid([Problem((), "must not be empty; leave the key out to use the default")])
        # The whole string: re.search would let "$" match before a final newline ("pi\n" as a device id).
        if rules.pattern is not None and not re.fullmatch(rules.pattern, value):
            what = rules.pattern_hint or f"like {rules.pattern}"
            raise Invalid([Problem((), f"{value[:70]!r} is not allowed: it must be {what}")])
        _length(value, rules)
        return Path(value) if hint is Path else value
    else:
        raise TypeError(f"no validation for the annotation {hint!r}")
    for limit, ok, words in ((rules.ge, lambda a, b: a >= b, "at least"), (rules.gt, lambda a, b: a > b, "more than"),
                             (rules.le, lambda a, b: a <= b, "at most")):
        if limit is not None and not ok(value, limit):
            shown = int(limit) if float(limit).is_integer() else limit  # 16777216, not 1.67772e+07
            raise Invalid([Problem((), f"must be {words} {shown}, not {value!r}")])
    return value


def _length(value: str | list, rules: Rules) -> None:
    if rules.min_length is not None and len(value) < rules.min_length:
        unit = "character" if isinstance(value, str) else "item"
        raise Invalid([Problem((), f"must have at least {rules.min_length} {unit}{'s' * (rules.min_length != 1)}")])
