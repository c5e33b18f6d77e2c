"""One way to validate a config value object, and one way to say what is wrong with it.

Every config group (search space, hardware profile, data, trainer, study, export, ray) is
a pydantic dataclass whose fields state their choices (`Literal[...]`) and bounds
(`Annotated[int, Field(ge=1)]`) once; rules between fields are validators on the class
that owns them. `checked` makes the class's constructor raise the package's own error
type (`ProfileError`, `DataError`, ...) with one line naming each bad key with its group,
the value and what is allowed, e.g. `trainer.lr=-1.0: must be > 0`. The field types stay
the single statement of what is allowed: messages read the choices and bounds back from
them (`problems`), and `choices` gives a `Literal`'s values for sampling and messages.

The classes are still standard dataclasses: `dataclasses.asdict`, `fields` and `replace`
work on them (`replace` validates again).
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import annotated_types
from pydantic import ConfigDict, ValidationError
from pydantic.fields import FieldInfo

# Unknown keys are refused; a number given for a string field (study.name=2024) is taken
# as its text, as YAML and Hydra overrides write it.
CONFIG = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

T = TypeVar("T")
Kind = Literal["choice", "range", "type", "check", "unknown", "missing", "count", "rule"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input: `key` (group-qualified, `study.objectives[0].metric`),
    the `value` given, and `rule`, what is allowed (`must be >= 1`, `allowed 'a', 'b'`).
    `span` is the interval of a two-sided bound (`[0, 1)`); for `kind="unknown"`, `rule`
    lists the allowed keys and `value` the unknown ones. A class's own validator (a rule
    between fields, `kind="rule"`) writes the whole line itself, naming its keys; a
    field's validator (`kind="check"`) says what is allowed."""

    key: str
    value: Any
    rule: str
    kind: Kind
    span: str | None = None

    def line(self) -> str:
        if self.kind == "rule":
            return self.rule
        if self.kind == "missing":
            return f"{self.key} is required (set it with {self.key}=...)"
        if self.kind == "unknown":
            where = f"{self.key}: " if self.key else ""
            return f"{where}unknown keys {self.value}; allowed {self.rule}"
        if self.kind == "count":
            return f"{self.key} {self.rule}"
        return f"{self.key}={self.value!r}: {self.rule}"


def checked(
    error: type[Exception],
    *,
    where: str | Callable[[Mapping[str, Any]], str] = "",
    intro: str = "",
) -> Callable[[type[T]], type[T]]:
    """Class decorator for a pydantic dataclass: its constructor raises `error` with one
    line (`intro` + `one_line`) instead of pydantic's `ValidationError`. `where` is the
    key prefix of the class's fields (`"trainer"`), or a function of the constructor's
    keyword arguments (`hardware.<name>`)."""

    def decorate(cls: type[T]) -> type[T]:
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            try:
                init(self, *args, **kwargs)
            except ValidationError as exc:
                prefix = where(kwargs) if callable(where) else where
                raise error(intro + one_line(exc, cls, prefix)) from None

        setattr(cls, "__init__", __init__)  # noqa: B010 - mypy refuses assigning a method
        return cls

    return decorate


def one_line(exc: ValidationError, root: Any, where: str = "") -> str:
    """Every problem in `exc` (raised validating `root`, a class or type annotation), one
    line joined by '; '."""
    lines = dict.fromkeys(p.line() for p in problems(exc, root, where))
    return "; ".join(lines)


def problems(exc: ValidationError, root: Any, where: str = "") -> list[Problem]:
    """The errors of `exc` as `Problem`s whose keys start with `where`; unknown keys under
    one parent are gathered into one problem."""
    out: list[Problem] = []
    unknown: dict[tuple[Any, ...], list[str]] = {}
    errors = exc.errors()
    for err in errors:
        loc = tuple(err["loc"])
        if err["type"] == "too_short" and any(
            len(e["loc"]) > len(loc) and tuple(e["loc"][: len(loc)]) == loc for e in errors
        ):
            continue  # its entries are wrong: those problems say why
        if err["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
            unknown.setdefault(loc[:-1], []).append(str(loc[-1]))
            continue
        out.append(_problem(err, root, where, loc))
    for parent, names in unknown.items():
        target = _resolve(root, parent)
        fields = getattr(target.annotation, "__pydantic_fields__", None) if target else None
        allowed = str(sorted(fields)) if fields else "none"
        out.append(Problem(_key(where, parent), sorted(names), allowed, "unknown"))
    return out


def choices(annotation: Any) -> tuple[Any, ...]:
    """The values a `Literal` annotation allows (through `Annotated` and `| None`)."""
    target = _unwrap(_Target(annotation, [], None))
    if get_origin(target.annotation) is not Literal:
        raise TypeError(f"{annotation!r} is not a Literal")
    return get_args(target.annotation)


def field_infos(cls: Any) -> dict[str, FieldInfo]:
    """A pydantic dataclass's fields with their resolved annotations and constraints
    (`dataclasses.fields` gives the annotations as written, strings here)."""
    infos: dict[str, FieldInfo] | None = getattr(cls, "__pydantic_fields__", None)
    if infos is None:
        raise TypeError(f"{cls!r} is not a pydantic dataclass")
    return infos


def allowed_text(values: tuple[Any, ...]) -> str:
    """`'a', 'b', 'c'`: how messages list the allowed values."""
    return ", ".join(repr(v) for v in values)


@dataclass
class _Target:
    annotation: Any
    metadata: list[Any]
    description: str | None


def _problem(err: Any, root: Any, where: str, loc: tuple[Any, ...]) -> Problem:
    key, kind, ctx = _key(where, loc), err["type"], err.get("ctx") or {}
    value = err["input"]
    target = _resolve(root, loc)
    if kind in ("value_error", "assertion_error"):
        message = str(ctx.get("error", err["msg"]))
        if target is None or hasattr(target.annotation, "__pydantic_fields__"):
            return Problem(key, value, message, "rule")  # a class's validator: a whole line
        return Problem(key, value, message, "check")  # a field's validator: what is allowed
    if kind == "missing":
        return Problem(key, None, "is required", "missing")
    if kind == "literal_error":
        if target and get_origin(target.annotation) is Literal:
            return Problem(
                key, value, f"allowed {allowed_text(get_args(target.annotation))}", "choice"
            )
        return Problem(key, value, f"allowed {ctx.get('expected')}", "choice")
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bounds = _bounds(target.metadata if target else [], ctx)
        if isinstance(value, int) and not isinstance(value, bool):
            if any(isinstance(b, float) for b in ctx.values()):
                value = float(value)  # as the float field reads it: trainer.lr=-1.0
        return _range(key, value, bounds)
    if kind in ("too_short", "too_long"):
        n = ctx.get("actual_length")
        entries = "entry" if n == 1 else "entries"
        need = f">= {ctx['min_length']}" if kind == "too_short" else f"<= {ctx['max_length']}"
        return Problem(key, value, f"has {n} {entries}; needs {need}", "count")
    if kind == "string_pattern_mismatch":
        described = target.description if target else None
        return Problem(key, value, described or f"must match {ctx.get('pattern')}", "type")
    for prefix, rule in _TYPE_RULES:
        if kind.startswith(prefix):
            return Problem(key, value, rule, "type")
    message = str(err["msg"])
    return Problem(key, value, message[:1].lower() + message[1:], "type")


_TYPE_RULES = (
    ("int_", "must be an integer"),
    ("float_", "must be a number"),
    ("bool_", "must be true or false"),
    ("string_", "must be a string"),
    ("list_", "must be a list"),
    ("tuple_", "must be a list"),
    ("dict_", "must be a mapping"),
    ("dataclass_", "must be a mapping"),
    ("model_", "must be a mapping"),
)


def _bounds(metadata: list[Any], ctx: Mapping[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for m in metadata:
        for name in ("ge", "gt", "le", "lt"):
            if isinstance(m, getattr(annotated_types, name.capitalize())):
                found[name] = getattr(m, name)
    return found or dict(ctx)


def _range(key: str, value: Any, bounds: Mapping[str, Any]) -> Problem:
    low = [(op, bounds[op]) for op in ("ge", "gt") if op in bounds]
    high = [(op, bounds[op]) for op in ("le", "lt") if op in bounds]
    if low and high:
        (lo_op, lo), (hi_op, hi) = low[0], high[0]
        span = f"{'[' if lo_op == 'ge' else '('}{lo:g}, {hi:g}{']' if hi_op == 'le' else ')'}"
        return Problem(key, value, f"must be in {span}", "range", span)
    op, bound = (low or high)[0]
    symbol = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}[op]
    return Problem(key, value, f"must be {symbol} {bound:g}", "range")


def _key(where: str, loc: tuple[Any, ...]) -> str:
    key = where
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
        else:
            key += f".{part}" if key else str(part)
    return key


def _resolve(root: Any, loc: tuple[Any, ...]) -> _Target | None:
    """The annotation (and its constraints) that validated the input at `loc`."""
    target = _unwrap(_Target(root, [], None))
    for part in loc:
        fields: dict[str, FieldInfo] | None = getattr(
            target.annotation, "__pydantic_fields__", None
        )
        origin = get_origin(target.annotation)
        if isinstance(part, str) and fields is not None and part in fields:
            info = fields[part]
            target = _Target(info.annotation, list(info.metadata), info.description)
        elif isinstance(part, int) and origin in (list, tuple):
            args = get_args(target.annotation)
            if origin is list or (len(args) == 2 and args[1] is Ellipsis):
                element = args[0]
            elif part < len(args):
                element = args[part]
            else:
                return None
            target = _Target(element, [], None)
        else:
            return None
        target = _unwrap(target)
    return target


def _unwrap(target: _Target) -> _Target:
    """Strip `Annotated[...]` (keeping its constraints) and `| None`."""
    annotation, metadata, description = target.annotation, list(target.metadata), target.description
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation, *extra = get_args(annotation)
            for m in extra:
                if isinstance(m, FieldInfo):
                    metadata += m.metadata
                    description = m.description or description
                else:
                    metadata.append(m)
        elif origin in (Union, types.UnionType):
            rest = [a for a in get_args(annotation) if a is not type(None)]
            if len(rest) != 1:
                break
            annotation = rest[0]
        else:
            break
    return _Target(annotation, metadata, description)
