"""Configuration dataclasses that load from YAML and accept ``key=value`` overrides.

Every configuration in stormfold is a (possibly nested) dataclass. This module turns
mappings (from YAML files or ``--set`` options) into such dataclasses with strict
checking: an unknown key or a value of the wrong type is a :class:`UserError` that
names the field.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Mapping, TypeVar

import yaml

from stormfold.errors import UserError, as_path

T = TypeVar("T")

#: Marks a field (``Annotated[..., INF_ALLOWED]``) whose floats may be ±inf: an open end of a
#: box of bounds. Everywhere else a configuration float must be finite.
INF_ALLOWED = "inf allowed"
#: Most torch threads a configuration may ask for (``schedule.threads``, ``classic.threads``):
#: more than any CPU has, far fewer than the value that would exhaust the process limits.
MAX_THREADS = 256
#: A (low, high) box where ``.inf`` / ``-.inf`` means "no bound on that side".
Bounds = Annotated[tuple[float, float], INF_ALLOWED]


class Loader(yaml.SafeLoader):
    """The YAML loader of every stormfold file and ``--set`` value.

    It is PyYAML's SafeLoader (never runs code) with two changes: numbers in scientific
    notation without a dot (``1e-3``, ``2E+5``), which YAML 1.2 reads as floats but PyYAML's
    YAML 1.1 rules as strings, are floats (a quoted ``'1e-3'`` stays a string); and a key
    repeated in one mapping is an error naming the key instead of the last one winning.
    """

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    repeated = key in seen
                except TypeError:  # unhashable key: SafeConstructor reports it
                    continue
                if repeated:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


class Dumper(yaml.SafeDumper):
    """The YAML dumper of every stormfold file: PyYAML's SafeDumper that knows the float rule
    of :class:`Loader`, so a string such as ``'1e3'`` is written quoted and reads back a string."""


#: Scientific notation without a dot (``1e-3``) is a float for both reading and writing.
_SCIENTIFIC_FLOAT = re.compile(r"^(?:[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+"
                               r"|[-+]?\.[0-9_]+[eE][-+]?[0-9]+)$")
for _cls in (Loader, Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _SCIENTIFIC_FLOAT,
                               list("-+0123456789."))


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """`` (line N: problem)`` of a YAML error, as much of it as PyYAML gives."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    parts = [f"line {mark.line + 1}"] if mark is not None else []
    if problem:
        parts.append(str(problem))
    return f" ({': '.join(parts)})" if parts else ""


def read_yaml_text(path: str | Path, what: str = "YAML") -> Any:
    """The YAML document in ``path`` read with :class:`Loader`; a file that cannot be read,
    is not UTF-8 text or not valid YAML is a one-line :class:`UserError` naming it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a {what} file (not UTF-8 text: byte 0x{data[exc.start]:02x} "
                        f"at offset {exc.start})") from None
    try:
        return yaml.load(text, Loader=Loader)
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid {what}{_yaml_problem(exc)}") from None


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str, allow_inf: bool = False) -> Any:
    """Convert ``value`` to the annotated type ``tp`` or raise a UserError naming ``where``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Annotated:
        return _coerce(value, args[0], where, allow_inf or INF_ALLOWED in tp.__metadata__)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where, allow_inf)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(errors[0] if len(errors) == 1 else
                        f"{where}: {value!r} is not any of {', '.join(_type_name(a) for a in args)}")
    if origin is typing.Literal:
        if value not in args:
            raise UserError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise UserError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise UserError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]", allow_inf)
                         for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{where}[{i}]", allow_inf) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or int(value) != value:
            raise UserError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: expected a number, got {value!r}")
        if math.isnan(value) or (math.isinf(value) and not allow_inf):
            raise UserError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and bad types raise UserError."""
    if not isinstance(data, Mapping):
        raise UserError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields), key=str)  # YAML keys may be ints
    if unknown:
        prefix = f"{where}." if where else ""
        raise UserError(f"unknown configuration key '{prefix}{unknown[0]}' "
                        f"(valid keys: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(value, hints[name], key)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def to_dict(obj: Any) -> Any:
    """Dataclass (nested) → plain dict of YAML-safe values."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return obj.item()
    return obj


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Parse ``["a.b=1", "c=[1, 2]"]`` into a nested mapping; values are parsed as YAML."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise UserError(f"--set expects key=value, got {item!r}")
        try:
            value = yaml.load(raw, Loader=Loader) if raw.strip() else ""
        except yaml.constructor.ConstructorError as exc:
            raise UserError(f"--set {key}: {exc.problem}") from None
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {key}: {part!r} is both a value and a section")
        node[parts[-1]] = value
    return out


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive merge of two mappings; ``update`` wins."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file safely; a missing or malformed file is a UserError."""
    path = as_path(path, "configuration file")
    if not path.is_file():
        raise UserError(f"configuration file not found: {path}")
    return read_yaml_text(path)


def dump_yaml(data: Any) -> str:
    """YAML text of ``data`` (dataclasses are converted), keys in definition order."""
    return yaml.dump(to_dict(data), Dumper=Dumper, sort_keys=False, allow_unicode=True)


def dump_yaml_all(documents: list[Any]) -> str:
    """YAML text of several documents (``---`` separated), written like :func:`dump_yaml`."""
    return yaml.dump_all([to_dict(d) for d in documents], Dumper=Dumper, sort_keys=False,
                         default_flow_style=False, allow_unicode=True)
