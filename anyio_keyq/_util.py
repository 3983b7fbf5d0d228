"""Private helpers shared by the modules of :mod:`anyio_keyq`."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextvars import Context

T = TypeVar("T")

_PACKAGE = __name__.rpartition(".")[0] + "."


def final(cls: type[T]) -> type[T]:
    """Mark a class final for type checkers and refuse subclassing at run time.

    Only this package may derive from it (as Lane does from Job).
    """

    def __init_subclass__(cls_: type[Any], /, **kwargs: Any) -> None:
        if not cls_.__module__.startswith(_PACKAGE):
            raise TypeError(f"{cls.__module__}.{cls.__qualname__} does not support subclassing")
        super(cls, cls_).__init_subclass__(**kwargs)

    cls.__init_subclass__ = classmethod(__init_subclass__)  # type: ignore[assignment,method-assign]
    cls.__final__ = True  # type: ignore[attr-defined]
    return cls


def fixup_module_metadata(module_name: str, namespace: dict[str, Any]) -> None:
    """Make every public object of *namespace* report *module_name* as its module."""
    seen: set[int] = set()

    def fix_one(qualname: str, name: str, obj: Any) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        mod: object = getattr(obj, "__module__", None)
        if isinstance(mod, str) and mod.startswith("anyio_keyq."):
            obj.__module__ = module_name
            if hasattr(obj, "__name__") and "." not in obj.__name__:
                obj.__name__ = name
                obj.__qualname__ = qualname
            if isinstance(obj, type):
                for attr_name, attr_value in obj.__dict__.items():
                    fix_one(f"{qualname}.{attr_name}", attr_name, attr_value)

    for objname, obj in namespace.items():
        if not objname.startswith("_"):
            fix_one(objname, objname, obj)


def check_positive_int(name: str, value: object) -> int:
    """Return *value* if it is an int >= 1; raise TypeError/ValueError naming *name*."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return value


def check_bound(name: str, value: object) -> float:
    """Return *value* if it is an int >= 1 or ``math.inf``."""
    if isinstance(value, float) and value == math.inf:
        return value
    return check_positive_int(name, value)


def check_seconds(name: str, value: object, *, allow_zero: bool) -> float:
    """Return *value* as a number of seconds: > 0 (or >= 0 with *allow_zero*)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if math.isnan(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound} seconds, got {value!r}")
    return float(value)


def check_callable(fn: object) -> None:
    """Raise a TypeError with a hint unless *fn* is a callable (not a coroutine)."""
    if callable(fn):
        return
    if isinstance(fn, Coroutine):
        fn.close()  # silence "never awaited"
    if isinstance(fn, Awaitable):
        raise TypeError(
            f"fn must be an async function, got the awaitable {fn!r}: pass the function "
            f"and its arguments, as in run(key, fn, arg), not run(key, fn(arg))"
        )
    raise TypeError(f"fn must be an async function, got {fn!r}")


def describe(fn: Callable[..., object]) -> str:
    """A short name of *fn* for messages and logs."""
    return getattr(fn, "__qualname__", None) or repr(fn)


def check_positive_number(name: str, value: object) -> float:
    """Return *value* as a float if it is a finite number > 0; else raise naming *name*."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not 0 < number < math.inf:  # NaN fails both comparisons
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return number


def same_context(a: Context, b: Context) -> bool:
    """Whether a job made in context *a* may run in context *b*: they hold equal values.

    A context that was not changed in between is equal at once, by identity. Otherwise
    values are compared with ``==``: a value whose ``==`` raises (an array, say) makes
    them differ rather than fail the caller.
    """
    try:
        return a == b
    except Exception:
        return False
