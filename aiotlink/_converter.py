"""The one cattrs converter: wire names (camelCase) and value formats live here.

Models stay plain snake_case attrs classes; the hooks below rename every field and
convert ``datetime`` (ISO 8601, ``Z`` accepted and sent), ``UUID`` and the status enum.
Structuring is strict about types (no silent ``str(123)``) and lenient about extra
fields, so a newer API that adds fields does not break older clients.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar, cast
from uuid import UUID

import attrs
import msgspec
from cattrs import Converter
from cattrs.errors import BaseValidationError
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.preconf.json import make_converter as make_json_converter
from cattrs.v import transform_error

from ._arguments import UUID_PATTERN
from ._models import ExecutionType, InitialiseRequest, Origin, WorkflowExecution, WorkflowStatus

T = TypeVar("T")


def to_camel_case(name: str) -> str:
    """``workflow_definition_id`` -> ``workflowDefinitionId``."""
    head, *rest = name.split("_")
    return head + "".join(word.capitalize() for word in rest)


def format_datetime(value: datetime) -> str:
    """An aware datetime as ISO 8601 in UTC with milliseconds and ``Z``."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _expect(kind: type[T], value: object) -> T:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def _structure_str(value: object, _: type) -> str:
    return _expect(str, value)


def _structure_object(value: object, _: type) -> dict[str, Any]:
    # JSON objects are kept as decoded (no copy): they are the user's free-form data.
    return _expect(dict, value)


def _structure_number(value: object, _: type) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return value


def _structure_datetime(value: object, _: type) -> datetime:
    parsed = datetime.fromisoformat(_expect(str, value))
    # The reference promises ISO 8601 without saying the zone; UTC is its convention.
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _structure_uuid(value: object, _: type) -> UUID:
    text = _expect(str, value)
    try:
        # msgspec parses the canonical form in C, three times faster than UUID(text).
        return msgspec.convert(text, UUID)
    except msgspec.ValidationError:
        pass
    return UUID(text)  # braces, "urn:uuid:" and the like; or the standard library's error


_KNOWN_STATUSES = {status.value: status for status in WorkflowStatus}


def _structure_status(value: object, _: type) -> WorkflowStatus:
    # A dict lookup for the eleven known values; the enum's own (slower) call otherwise.
    known = _KNOWN_STATUSES.get(value) if isinstance(value, str) else None
    return known if known is not None else WorkflowStatus(_expect(str, value))


_KNOWN_EXECUTION_TYPES = {kind.value: kind for kind in ExecutionType}


def _structure_execution_type(value: object, _: type) -> ExecutionType:
    known = _KNOWN_EXECUTION_TYPES.get(value) if isinstance(value, str) else None
    return known if known is not None else ExecutionType(_expect(str, value))


def _structure_origin(value: object, _: type) -> Origin:
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise ValueError("an origin is an object with a type")
    details = dict(value)
    return Origin(details.pop("type"), details)


def _camel_case_overrides(cls: type) -> dict[str, Any]:
    return {field.name: override(rename=to_camel_case(field.name)) for field in attrs.fields(cls)}


def _make_converter() -> Converter:
    # cattrs' JSON preset, with our own hooks over its defaults where we are stricter.
    converter = make_json_converter(detailed_validation=True, forbid_extra_keys=False)
    converter.register_structure_hook(str, _structure_str)
    # Generic aliases and unions are matched by predicate: singledispatch takes classes.
    converter.register_structure_hook_func(lambda t: t == dict[str, Any], _structure_object)
    converter.register_structure_hook_func(lambda t: t == int | float, _structure_number)
    converter.register_structure_hook(datetime, _structure_datetime)
    converter.register_structure_hook(UUID, _structure_uuid)
    converter.register_structure_hook(WorkflowStatus, _structure_status)
    converter.register_structure_hook(ExecutionType, _structure_execution_type)
    converter.register_structure_hook(Origin, _structure_origin)
    converter.register_structure_hook(
        WorkflowExecution,
        make_dict_structure_fn(
            WorkflowExecution, converter, **_camel_case_overrides(WorkflowExecution)
        ),
    )
    converter.register_unstructure_hook(datetime, format_datetime)
    converter.register_unstructure_hook(UUID, str)
    # Parameters are the user's JSON object, checked as JSON before we get here.
    converter.register_unstructure_hook_func(lambda t: t == Mapping[str, Any], lambda v: v)
    converter.register_unstructure_hook(
        InitialiseRequest,
        make_dict_unstructure_fn(
            InitialiseRequest,
            converter,
            _cattrs_omit_if_default=True,
            **_camel_case_overrides(InitialiseRequest),
        ),
    )
    return converter


_converter = _make_converter()


class DecodeError(Exception):
    """A JSON value that does not fit a model; ``problems`` name the field paths."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


# Field types that JSON decoding already gives as they are: the class check is the
# whole conversion, done inline by the fast structure function below.
_PLAIN_CLASSES: dict[object, tuple[type, ...]] = {
    str: (str,),
    dict[str, Any]: (dict,),
    int | float: (int, float),  # not bool: its class is bool, which JSON true gives
}


def _make_fast_structure_fn(cls: type[Any], converter: Converter) -> Callable[[Any], Any]:
    """Generate a dict-to-``cls`` function for the common case, as cattrs does its own.

    One step per field: read its camelCase key, check plain values by class, pass the
    rest through the converter's hooks. About twice as fast as the detailed cattrs
    function (benchmarks/RESULTS.md), it says nothing about what is wrong: on any
    error the caller runs the detailed converter, which names the field.
    """
    attrs.resolve_types(cls)
    namespace: dict[str, Any] = {"cls": cls}
    lines = ["def structure(o):"]
    arguments = []
    for index, field in enumerate(attrs.fields(cls)):
        if not field.init or field.kw_only:
            # Else every call would fail, and every decode fall back to the slow path.
            raise TypeError(f"{cls.__name__}.{field.name}: the fast path passes fields by position")
        key = to_camel_case(field.name)
        value = f"v{index}"
        if field.default is attrs.NOTHING:
            lines.append(f"    {value} = o[{key!r}]")
        else:
            lines.append(f"    {value} = o.get({key!r})")
        members = set(typing.get_args(field.type)) or {field.type}
        optional = type(None) in members and field.default is None
        (inner,) = members - {type(None)} if optional else (field.type,)
        plain = _PLAIN_CLASSES.get(inner)
        if plain is not None:
            namespace[f"c{index}"] = plain
            test = f"{value}.__class__ not in c{index}"
            if optional:
                test = f"{value} is not None and {test}"
            lines.append(f"    if {test}: raise TypeError({key!r})")
        else:
            namespace[f"h{index}"] = converter.get_structure_hook(inner)
            namespace[f"t{index}"] = inner
            call = f"h{index}({value}, t{index})"
            if optional:
                call = f"None if {value} is None else {call}"
            lines.append(f"    {value} = {call}")
        arguments.append(value)
    # Positional arguments, in field order: a keyword call costs 0.2 µs more here.
    lines.append(f"    return cls({', '.join(arguments)})")
    exec(compile("\n".join(lines), f"<aiotlink structure {cls.__name__}>", "exec"), namespace)
    return cast(Callable[[Any], Any], namespace["structure"])


_FIELD_PATH = re.compile(r"@ \$\.(\w+)")


def _wire_paths(problems: list[str]) -> list[str]:
    # cattrs names attributes; the user looks at the JSON body, so name its fields.
    return [_FIELD_PATH.sub(lambda m: "@ $." + to_camel_case(m[1]), line) for line in problems]


def _structurer(cls: type[T]) -> Callable[[Any], T]:
    """A decoder for ``cls``: the fast function, and the detailed one to explain errors."""
    fast = _make_fast_structure_fn(cls, _converter)
    detailed = _converter.get_structure_hook(cls)

    def decode(value: Any) -> T:
        if value.__class__ is dict:
            try:
                return cast(T, fast(value))
            except Exception:
                pass  # the detailed pass below tells what is wrong
        if not isinstance(value, dict):
            raise DecodeError([f"expected a JSON object, got {type(value).__name__} @ $"])
        try:
            return cast(T, detailed(value, cls))
        except BaseValidationError as exc:
            raise DecodeError(_wire_paths(transform_error(exc))) from None

    return decode


_decode_execution_fields: Callable[[Any], WorkflowExecution] = _structurer(WorkflowExecution)


def decode_execution(value: Any) -> WorkflowExecution:
    """An execution from its JSON object; ``DecodeError`` also when its id is no UUID.

    The id goes into URL paths (a find, a poll, a result) and onto a person's screen:
    ``"../../x"`` from a hostile server must stop here, as a malformed answer, not
    later as a caller's ``ValueError``.
    """
    execution = _decode_execution_fields(value)
    if UUID_PATTERN.fullmatch(execution.id) is None:
        raise DecodeError(["the execution id is not a UUID @ $.id"])
    return execution


def encode_initialise_request(request: InitialiseRequest) -> Mapping[str, Any]:
    """The JSON object for ``POST /workflows``: camelCase, unset optionals left out."""
    return cast(Mapping[str, Any], _converter.unstructure(request))
