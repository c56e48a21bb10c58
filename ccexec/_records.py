"""Value classes that are dataclasses to ``dataclasses`` without importing it on ``import ccexec``.

``dataclasses`` pulls in ``inspect``, ``re`` and ``enum``: about 15 ms and 2.7 MiB, more than
all of ccexec. These classes write their ``__init__`` by hand and build their
``__dataclass_fields__`` on first access, so ``dataclasses.is_dataclass``, ``fields``,
``asdict`` and ``replace`` work on them as on AutoGen's classes, at no cost until used.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from dataclasses import Field
    from typing import Any, ClassVar

_NO_DEFAULT = object()


class _LazyDataclassFields:
    """The class's ``__dataclass_fields__``, made by ``dataclasses`` the first time it is asked for."""

    def __get__(self, obj: object, owner: type[Record]) -> dict[str, Field[Any]]:
        cached: dict[str, Field[Any]] | None = owner.__dict__.get("_dataclass_fields_cache")
        if cached is None:
            import dataclasses

            spec = [
                (name, object)
                if owner._defaults.get(name, _NO_DEFAULT) is _NO_DEFAULT
                else (name, object, dataclasses.field(default=owner._defaults[name]))
                for name in owner._fields
            ]
            shadow: Any = dataclasses.make_dataclass(owner.__name__, spec)
            cached = shadow.__dataclass_fields__
            type.__setattr__(owner, "_dataclass_fields_cache", cached)
        return cached


class Record:
    """Fields in ``_fields`` order; ``repr`` and ``==`` as a dataclass's; not hashable."""

    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()
    _defaults: ClassVar[dict[str, object]] = {}
    if TYPE_CHECKING:
        __dataclass_fields__: ClassVar[dict[str, Field[Any]]]
    else:
        __dataclass_fields__ = _LazyDataclassFields()

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def __reduce__(self) -> tuple[Any, ...]:
        # Every __init__ takes the fields positionally, in _fields order.
        return (type(self), self._values())

    def __repr__(self) -> str:
        body = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__name__}({body})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Record)
        return self._values() == other._values()

    __hash__ = None  # type: ignore[assignment]  # mutable, as a dataclass with eq=True


class FrozenRecord(Record):
    """A Record whose fields cannot be reassigned; hashable."""

    __slots__ = ()

    def _set(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r} of frozen {type(self).__name__}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r} of frozen {type(self).__name__}")

    def __hash__(self) -> int:  # type: ignore[override]  # frozen: hashable again, as a frozen dataclass
        return hash(self._values())
