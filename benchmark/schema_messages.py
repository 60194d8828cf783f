"""pydantic's validation errors as the messages a params.yaml user reads: one line each, naming the key,
the value and what is allowed.

What is allowed comes from the schema itself (benchmark/config.py): each value type carries a
description ("an integer >= 1"), found here by walking the schema along the error's location.
"""
import json
import re
import types
from typing import Annotated, Any, Iterator, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

CROSS_CHECK = "cross_check"  # the error type of a rule between keys (its message names the keys itself)


def show(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _layers(annotation: Any) -> Iterator[Any]:
    """The annotation and each type inside it, through Annotated[...] and Optional[...], outermost first (a
    union of several types is the last layer)."""
    while True:
        yield annotation
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            options = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(options) != 1:
                return
            annotation = options[0]
        else:
            return


def _unwrap(annotation: Any) -> Any:
    """The type inside Annotated[...] / Optional[...]."""
    *_, innermost = _layers(annotation)
    return innermost


def _description(annotation: Any) -> str | None:
    """The first description in an annotation's Annotated metadata, looking through Optional."""
    for layer in _layers(annotation):
        if get_origin(layer) is Annotated:
            found = next((m.description for m in get_args(layer)[1:] if isinstance(m, FieldInfo) and m.description),
                         None)
            if found:
                return found
    return None


def _describe(model: type[BaseModel], loc: tuple) -> tuple[str | None, int, type[BaseModel] | None]:
    """What the key at `loc` allows: (description, how many loc parts name the described key, its model
    class when the key is a section). A "[key]" part (a mapping's key was refused) describes the key type."""
    annotation, description, depth = model, None, 0
    for position, part in enumerate(loc):
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            info = annotation.model_fields.get(part) if isinstance(part, str) else None
            if info is None:
                return description, depth, None
            annotation, depth = info.annotation, position + 1
            description = info.description or _description(info.annotation)
        elif get_origin(annotation) is dict:
            key_type, annotation = get_args(annotation)
            if position + 1 < len(loc) and loc[position + 1] == "[key]":
                return _description(key_type), position + 1, None
            description, depth = None, position + 1
        elif get_origin(annotation) is list:
            annotation = get_args(annotation)[0]
        else:
            break
    annotation = _unwrap(annotation)
    section = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return description, depth, section


def _dotted(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else ("." if text else "") + str(part)
    return text


def error_line(error: dict, source: str, model: type[BaseModel], prefix: tuple) -> str:
    loc = tuple(part for part in error["loc"] if part != "[key]")
    key = _dotted(prefix + loc)
    kind, value = error["type"], error.get("input")
    if kind == CROSS_CHECK:
        return f"{source}: {key + '.' if key else ''}{error['ctx']['message']}"
    if kind == "extra_forbidden":
        parent = _describe(model, loc[:-1])[2] or model
        where = _dotted(prefix + loc[:-1]) or "the top level"
        return (f"{source}: {key}: unknown key; {where} takes: {', '.join(parent.model_fields)} "
                "(a new key is declared in benchmark/config.py)")
    if "[key]" in error["loc"]:
        return f"{source}: {key}: the name {show(value)} is not allowed; must be {_describe(model, error['loc'])[0]}"
    description, depth, section = _describe(model, loc)
    if section is not None:
        required = f"a section with the keys {', '.join(section.model_fields)}"
        if kind == "missing":
            return f"{source}: {key}: missing; it must be {required}"
        return f"{source}: {key} = {show(value)}: must be {required}"
    allowed = f"must be {description}" if description else error["msg"].replace("Input should be", "must be")
    owner = _dotted(prefix + loc[:depth])
    if owner != key and description:
        allowed = f"{owner} {allowed}"
    if kind == "missing":
        return f"{source}: {key}: missing; it {allowed}"
    line = f"{source}: {key} = {show(value)}: {allowed}"
    if kind == "value_error" and description:
        line += f" ({error['msg'].removeprefix('Value error, ')})"
    elif isinstance(value, str) and description and description.startswith(("a number", "an integer")):
        line += " (quoted, so YAML reads it as text)" if re.fullmatch(r"[-+0-9.eE_]+", value) else ""
    return line
