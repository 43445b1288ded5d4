"""edge.schema: strict validation of plain data into frozen dataclasses, every problem named by its key."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest

from edge.schema import Invalid, Rules, Validated, dump, option, parse


def _even(value: int) -> int:
    if value % 2:
        raise ValueError(f"{value} is odd")
    return value


@dataclass(frozen=True, kw_only=True)
class Inner(Validated):
    low: float = option(0.0, doc="Bottom.", ge=0)
    high: float = option(1.0, doc="Top.", le=10)

    def check(self) -> None:
        if self.low > self.high:
            raise ValueError(f"low ({self.low:g}) must not exceed high ({self.high:g})")


@dataclass(frozen=True, kw_only=True)
class Outer(Validated):
    name: str = option(doc="Required.", pattern=r"^[a-z]+$", pattern_hint="lower-case letters")
    count: Annotated[int, _even] = option(2, doc="An even number.", gt=0)
    on: bool = option(False, doc="A switch.")
    mode: Literal[0, 1] = option(1, doc="0 or 1.")
    path: Path | None = option(None, doc="A path.")
    tags: list[str] = option(factory=list, doc="Tags.", min_length=0)
    inner: Inner = option(factory=Inner, doc="A sub-table.")
    blob: dict[str, Any] = option(factory=dict, doc="Anything.")


@dataclass(frozen=True, kw_only=True)
class Open(Validated):
    extra_key = "rest"
    name: str = option("x", doc="A name.")
    rest: dict[str, Any] = option(factory=dict, doc="Every other key.")


def problems(data: dict) -> dict[str, str]:
    with pytest.raises(Invalid) as err:
        parse(Outer, data)
    return {p.key: p.message for p in err.value.problems}


def test_every_problem_is_reported_at_once_by_its_key():
    found = problems({"name": "Bob", "count": "4", "on": 1, "mode": True, "tags": ["a", 3], "inner": {"low": -1, "hgh": 2},
                      "extra": 0})
    assert found == {
        "name": "'Bob' is not allowed: it must be lower-case letters",
        "count": "must be a whole number, not the string '4' (write it without quotes)",
        "on": "must be true or false, not the number 1",
        "mode": "must be 0 or 1, not a boolean",
        "tags.1": "must be a string, not the number 3",
        "inner.low": "must be at least 0, not -1.0",
        "inner.hgh": "unknown key",
        "extra": "unknown key",
    }


def test_a_pattern_must_match_the_whole_string():
    assert problems({"name": "ab\n"}) == {"name": "'ab\\n' is not allowed: it must be lower-case letters"}


def test_rules_in_an_annotation_check_a_lists_items():
    @dataclass(frozen=True, kw_only=True)
    class Levels(Validated):
        names: list[Annotated[str, Rules("", pattern="[a-z]+", pattern_hint="lower-case letters")]] = option(
            factory=list, doc="Names.")

    assert parse(Levels, {"names": ["ab", "cd"]}).names == ["ab", "cd"]
    with pytest.raises(Invalid) as err:
        parse(Levels, {"names": ["ab", "C/d"]})
    assert [str(p) for p in err.value.problems] == ["names.1: 'C/d' is not allowed: it must be lower-case letters"]


def test_a_required_key_left_out_and_a_non_table_are_problems():
    assert problems({}) == {"name": "is required"}
    assert problems({"name": "a", "inner": [1]}) == {"inner": "must be a table of keys, not a list"}


def test_checks_after_the_type_and_across_fields_name_their_place():
    assert problems({"name": "a", "count": 3}) == {"count": "3 is odd"}
    assert problems({"name": "a", "count": 0}) == {"count": "must be more than 0, not 0"}
    assert problems({"name": "a", "inner": {"low": 5, "high": 4}}) == {"inner": "low (5) must not exceed high (4)"}


def test_numbers_are_strict_but_a_whole_number_is_a_number():
    out = parse(Outer, {"name": "a", "inner": {"low": 1, "high": 2}})
    assert type(out.inner.low) is float and out.inner.low == 1.0
    assert problems({"name": "a", "inner": {"high": math.inf}}) == {"inner.high": "must be a finite number, not inf"}
    assert problems({"name": "a", "inner": {"high": True}}) == {"inner.high": "must be a number, not a boolean"}
    assert problems({"name": "a", "inner": {"high": 10**400}}) == {"inner.high": "must be a finite number, not inf"}
    assert problems({"name": "a", "inner": {"high": 10.5}}) == {"inner.high": "must be at most 10, not 10.5"}


def test_paths_come_from_strings_and_an_empty_one_is_refused():
    assert parse(Outer, {"name": "a", "path": "/tmp/x"}).path == Path("/tmp/x")
    assert problems({"name": "a", "path": " "}) == {"path": "must not be empty; leave the key out to use the default"}


def test_construction_checks_too_and_the_result_is_frozen():
    with pytest.raises(Invalid, match="count: must be a whole number"):
        Outer(name="a", count=2.0)  # type: ignore[arg-type]
    out = Outer(name="a")
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.name = "b"  # type: ignore[misc]
    with pytest.raises(Invalid, match=r"low \(5\) must not exceed high \(4\)"):
        Inner(low=5.0, high=4.0)


def test_dump_gives_plain_data_that_parses_back_to_the_same():
    out = parse(Outer, {"name": "a", "path": "p", "tags": ["t"], "inner": {"high": 3}, "blob": {"k": [1]}})
    data = dump(out)
    assert data["path"] == "p" and data["inner"] == {"low": 0.0, "high": 3.0}
    assert parse(Outer, data) == out


def test_a_dataclass_may_keep_its_unknown_keys():
    out = parse(Open, {"name": "y", "port": 22, "user": "pi"})
    assert out.rest == {"port": 22, "user": "pi"}
    assert dump(out) == {"name": "y", "port": 22, "user": "pi"}
