"""Declaring node parameters from one table: name, default, description, validation.

Every parameter is declared with a ``ParameterDescriptor(description=...)``; defaults live in
``config/*.yaml`` as well (the table's defaults apply when a key is missing). Values are
validated when set (``add_on_set_parameters_callback``): an invalid value is refused with the
reason and the old value stays. Changes take effect at the next ``configure`` transition unless
a parameter is marked ``dynamic``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.exceptions import ParameterUninitializedException
from rclpy.parameter import Parameter

#: Parameters whose default is an empty list need an explicit type.
_EMPTY_LIST_TYPES = {int: Parameter.Type.INTEGER_ARRAY, float: Parameter.Type.DOUBLE_ARRAY,
                     str: Parameter.Type.STRING_ARRAY}


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One parameter. ``check(value)`` returns an error message or None."""

    name: str
    default: Any
    description: str
    check: Callable[[Any], str | None] | None = None
    dynamic: bool = False          # applied immediately while active
    list_of: type | None = None    # element type when default is an empty list


def in_range(lo: float, hi: float) -> Callable[[Any], str | None]:
    return lambda v: None if lo <= v <= hi else f'must be in [{lo}, {hi}], got {v}'


def one_of(*choices: Any) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f'must be one of {list(choices)}, got {v!r}'


def declare_params(node, specs: Sequence[ParamSpec]) -> None:
    """Declare all ``specs`` on ``node`` and install the on-set validation callback."""
    for spec in specs:
        desc = ParameterDescriptor(description=spec.description,
                                   dynamic_typing=False)
        default = spec.default
        if isinstance(default, list) and not default:
            default = _EMPTY_LIST_TYPES[spec.list_of or str]
        node.declare_parameter(spec.name, default, desc)
    by_name = {s.name: s for s in specs}

    def on_set(params: list[Parameter]) -> SetParametersResult:
        for p in params:
            spec = by_name.get(p.name)
            if spec is None or spec.check is None or p.value is None:
                continue
            error = spec.check(p.value)
            if error:
                return SetParametersResult(successful=False, reason=f'{p.name} {error}')
        return SetParametersResult(successful=True)

    node.add_on_set_parameters_callback(on_set)


def read_params(node, specs: Sequence[ParamSpec]) -> dict[str, Any]:
    """Current values (validated; an empty typed list reads as [])."""
    out = {}
    for spec in specs:
        try:
            value = node.get_parameter(spec.name).value
        except ParameterUninitializedException:  # typed empty list left unset
            value = None
        if value is None:
            value = [] if isinstance(spec.default, list) else spec.default
        if isinstance(value, (list, tuple)) or type(value).__name__ == 'array':
            value = list(value)
        if spec.check is not None:
            error = spec.check(value)
            if error:
                raise ValueError(f'parameter {spec.name} {error}')
        out[spec.name] = value
    return out
