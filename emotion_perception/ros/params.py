"""Declaring node parameters from one table: name, default, description, validation.

Every parameter is declared with a ``ParameterDescriptor(description=...)``; defaults live in
``config/*.yaml`` as well (the table's defaults apply when a key is missing). Values are
validated when set (``add_on_set_parameters_callback``): an invalid value is refused with the
reason and the old value stays. Changes take effect at the next ``configure`` transition.

``read_only`` parameters (those that choose code or weights to load: a backend class, a model
path, an adapter, ``trust_remote_code``, a remote URL or key variable) take their value from the
parameter file, the launch file or the command line when the node starts; a run-time
``set_parameters`` is refused (rclpy's read-only check, plus a warning naming the reason). On an
untrusted network use SROS2 as well: without it anyone on the domain can call the parameter and
lifecycle services.

A key in a parameter file (or ``-p``) that the node does not declare is reported by
:func:`unknown_parameter_overrides` with the closest declared name, so a typo is not silently
ignored.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable, Sequence

from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.exceptions import ParameterUninitializedException
from rclpy.parameter import Parameter

from .rclpy_compat import RclpyInternalsChanged, parameter_overrides

#: Appended to the description of read-only parameters (what `ros2 param describe` shows).
READ_ONLY_NOTE = ('read-only: it selects code or weights to load; set it in the parameter file, '
                  'the launch file or on the command line and restart the node')
#: Parameters rclpy declares lazily (QoS overrides, declared when the publisher is created).
_LAZY_PREFIXES = ('qos_overrides.',)

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
    list_of: type | None = None    # element type when default is an empty list
    read_only: bool = False        # only settable at start-up (file, launch, command line)


def in_range(lo: float, hi: float) -> Callable[[Any], str | None]:
    return lambda v: None if lo <= v <= hi else f'must be in [{lo}, {hi}], got {v}'


def one_of(*choices: Any) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f'must be one of {list(choices)}, got {v!r}'


def declare_params(node, specs: Sequence[ParamSpec]) -> None:
    """Declare all ``specs`` on ``node`` and install the on-set validation callback."""
    for spec in specs:
        description = spec.description
        if spec.read_only:
            description += f' [{READ_ONLY_NOTE}]'
        desc = ParameterDescriptor(description=description, dynamic_typing=False,
                                   read_only=spec.read_only)
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


def read_only_names(specs: Sequence[ParamSpec]) -> set[str]:
    """Names of the ``read_only`` parameters of ``specs``."""
    return {s.name for s in specs if s.read_only}


def unknown_parameter_overrides(node) -> dict[str, str | None]:
    """Keys given to ``node`` (parameter files, ``-p``, ``parameter_overrides``) that it has not
    declared, each with the closest declared name (``None`` when nothing is close).

    Call after all parameters are declared. rclpy keeps such overrides without a word, so a
    typo such as ``reuse.max_age`` (for ``reuse.max_age_s``) would be ignored silently.
    """
    try:
        overrides = parameter_overrides(node)
    except RclpyInternalsChanged as exc:  # a check, not a reason to stop the node
        node.get_logger().warning(f'cannot check the parameter file for undeclared keys: {exc}')
        return {}
    declared = sorted(node.list_parameters([], 0).names)  # depth 0: recursive (all names)
    out: dict[str, str | None] = {}
    for name in sorted(overrides):
        if node.has_parameter(name) or name.startswith(_LAZY_PREFIXES):
            continue
        close = difflib.get_close_matches(name, declared, n=1, cutoff=0.6)
        out[name] = close[0] if close else None
    return out
