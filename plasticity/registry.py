"""Name → callable registries, the one extension mechanism of plasticrl.

Contains:
    Registry: a typed mapping from names to factories that also resolves ``package.module:attr``.
    resolve_import: import ``package.module:attr`` with a one-line error.
    close_matches: "did you mean" suggestions for error messages.
    StateKeys: the per-parameter state keys an optimizer entry declares (``state_keys=``).

Every extension point (networks, optimizers, regularizers, interventions, agents, schedules) is a
``Registry``. Registration happens by plain import of the defining module; nothing scans entry
points. An unknown name raises ``ValueError`` naming the value and listing the valid choices.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

__all__ = ["Registry", "resolve_import", "close_matches", "options_of", "StateKeys"]

T = TypeVar("T")


def close_matches(name: str, choices: list[str], n: int = 3) -> list[str]:
    """Return up to ``n`` choices that look like ``name`` (case-insensitive)."""
    lowered = {c.lower(): c for c in choices}
    found = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)
    return [lowered[f] for f in found]


def resolve_import(spec: str) -> object:
    """Import ``package.module:attr`` (``attr`` may be dotted) and return the attribute.

    Raises:
        ValueError: ``spec`` has no ``:``, the module cannot be imported, or the attribute is absent.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"invalid import path {spec!r}; expected 'package.module:attr'")
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r} from {spec!r}: {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attr!r} ({spec!r})") from None
    return obj


def options_of(section: type, name: str, keys: tuple[str, ...]) -> type:
    """A frozen dataclass named ``name`` with the fields ``keys`` of the config section ``section``.

    A registry entry's options are a subset of its section's keys (``optimizer.betas`` applies to
    adam, not sgd); building them from the section keeps one default and one docstring per key.

    Example:
        >>> @dataclasses.dataclass(frozen=True)
        ... class Section:
        ...     name: str = "a"
        ...     width: int = 3
        ...     depth: int = 2
        >>> Opts = options_of(Section, "AOptions", ("width",))
        >>> Opts(), [f.name for f in dataclasses.fields(Opts)]
        (AOptions(width=3), ['width'])
    """
    fields = {f.name: f for f in dataclasses.fields(section)}
    missing = [k for k in keys if k not in fields]
    if missing:
        raise ValueError(f"{name}: {missing} are not keys of {section.__name__}")
    spec = []
    for key in keys:
        f = fields[key]
        default = (
            dataclasses.field(default_factory=f.default_factory)
            if f.default_factory is not dataclasses.MISSING
            else dataclasses.field(default=f.default)
        )
        spec.append((key, f.type, default))
    options = dataclasses.make_dataclass(name, spec, frozen=True)
    options.__module__ = section.__module__  # Python 3.11's make_dataclass has no ``module``
    return options


@dataclasses.dataclass(frozen=True)
class StateKeys:
    """The per-parameter state an optimizer keeps, by role: what an optimizer entry declares.

    Code that reads or edits optimizer state (weight surgery, the √v̂ metrics) looks the roles up
    here instead of spelling torch's key names, so a new optimizer is supported by declaring its
    keys once, on its registry entry (``OPTIMIZERS.register(..., state_keys=StateKeys(...))``).

    Example:
        >>> keys = StateKeys(optimizers=(object,), step="step", first_moment="m", second_moment="v")
        >>> sorted(keys.tensors)
        ['m', 'v']
    """

    optimizers: tuple[type, ...]
    """The optimizer classes (exact types) whose ``state[p]`` these keys describe."""
    step: str | None = None
    """Per-tensor step counter (one number per tensor, never sliced); None: none kept."""
    first_moment: str | None = None
    """Running mean of the gradient (Adam's ``m``, centred RMSprop's ``ḡ``); None: none kept."""
    second_moment: str | None = None
    """Running mean of the squared gradient (Adam's ``v``, RMSprop's ``E[g²]``); None: none kept."""
    others: tuple[str, ...] = ()
    """Further state tensors shaped like the parameter (AMSGrad's max of ``v``, momentum buffers)."""
    bias_corrected: bool = False
    """``v̂ = v / (1 − β₂^t)``, with ``β₂ = group["betas"][1]`` and ``t`` the step counter (Adam)."""
    centred: bool = False
    """``v̂ = v − m²`` where the first moment is kept (centred RMSprop keeps it only when centred)."""

    @property
    def tensors(self) -> frozenset[str]:
        """Every key of a state tensor shaped like its parameter (all but the step counter)."""
        moments = (self.first_moment, self.second_moment, *self.others)
        return frozenset(k for k in moments if k is not None)


class Registry(Generic[T]):
    """A named collection of factories of one kind.

    Args:
        kind: what the entries are ("network", "optimizer", ...); used in error messages.

    Example:
        >>> ACTIVATIONS: Registry[type] = Registry("activation")
        >>> @ACTIVATIONS.register("identity")
        ... class Identity: ...
        >>> ACTIVATIONS.get("identity").__name__
        'Identity'
        >>> ACTIVATIONS.get("identiti")
        Traceback (most recent call last):
        ...
        ValueError: unknown activation 'identiti'; did you mean 'identity'? valid: ['identity'] \
or 'package.module:attr'
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._options: dict[str, type] = {}
        self._state_keys: dict[str, StateKeys] = {}

    def register(
        self, name: str, *, options: type | None = None, state_keys: StateKeys | None = None
    ) -> Callable[[T], T]:
        """Decorator that registers ``fn`` under ``name``; a duplicate name is an error.

        Args:
            name: the name configs use.
            options: the entry's options dataclass: the config keys that apply to it (its fields).
                The strict config converter refuses any other key of the section for this entry
                and ``plasticrl config`` shows only these. None: the entry declares no options.
            state_keys: an optimizer entry's per-parameter state keys (:class:`StateKeys`).
        """

        def deco(fn: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = fn
            if options is not None:
                self._options[name] = options
            if state_keys is not None:
                self._state_keys[name] = state_keys
            return fn

        return deco

    def options(self, name: str) -> type | None:
        """The options dataclass ``name`` was registered with (None: none declared, or a path)."""
        return self._options.get(name)

    def state_keys(self, name: str) -> StateKeys | None:
        """The :class:`StateKeys` ``name`` was registered with (None: none declared, or a path)."""
        return self._state_keys.get(name)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for tests that register temporary entries)."""
        del self._entries[name]
        self._options.pop(name, None)
        self._state_keys.pop(name, None)

    def get(self, name: str) -> T:
        """Return the entry for a registered ``name`` or a ``package.module:attr`` path."""
        if name in self._entries:
            return self._entries[name]
        if ":" in name:
            return resolve_import(name)  # type: ignore[return-value]
        self.check(name)
        raise AssertionError("unreachable")  # pragma: no cover

    def check(self, name: str) -> None:
        """Raise ``ValueError`` naming ``name`` and the valid choices unless it resolves."""
        if name in self._entries:
            return
        if ":" in name:
            resolve_import(name)
            return
        hint = close_matches(name, self.names())
        did_you_mean = f"; did you mean {' or '.join(repr(h) for h in hint)}?" if hint else ";"
        raise ValueError(
            f"unknown {self.kind} {name!r}{did_you_mean} valid: {self.names()} or 'package.module:attr'"
        )

    def names(self) -> list[str]:
        """Sorted registered names."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
