"""How a backend's own exceptions become the port's StoreErrors: a class decorator that
wraps every public method (generators too, so a listing that fails half-way is still
one clear error), given the backend's exception type and a function that says what
each exception means to the user."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from semcache_cli.errors import StoreError

_CO_GENERATOR = 0x20  # inspect.CO_GENERATOR, without importing inspect on every ask
_ClassT = TypeVar("_ClassT", bound=type)


def translating(error: type[BaseException] | tuple[type[BaseException], ...],
                translate: Callable[[Any, BaseException], StoreError]) -> Callable[[_ClassT], _ClassT]:
    """`translate(store, exc)` is called with the store whose method failed."""

    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        if method.__code__.co_flags & _CO_GENERATOR:
            @functools.wraps(method)
            def stream(self: Any, *args: Any, **kwargs: Any) -> Any:
                try:
                    yield from method(self, *args, **kwargs)
                except error as exc:
                    raise translate(self, exc) from None
            return stream

        @functools.wraps(method)
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except error as exc:
                raise translate(self, exc) from None
        return call

    def decorate(cls: _ClassT) -> _ClassT:
        for name, member in list(vars(cls).items()):
            if not name.startswith("_") and callable(member) and hasattr(member, "__code__"):
                setattr(cls, name, wrap(member))
        return cls

    return decorate
