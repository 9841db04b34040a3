"""Name -> component registries, filled by built-ins in code and by third-party packages through
Python entry points. One mechanism for algorithms and metrics (docs/design.md section 3).

A component can carry declarations beside its function (an algorithm's search space, a metric's
direction). They live on the function itself, in the attribute `DECLARATIONS` (a dict), so a
plugin that is registered by an entry point declares them exactly like a built-in: `declare(...)`
as a decorator, or keywords to `Registry.register`."""
from __future__ import annotations

import difflib
import inspect
import warnings
from importlib.metadata import entry_points
from typing import Any, Callable, Iterator


class UnknownComponentError(KeyError):
    """An unknown name; the message lists the registered ones."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return str(self.args[0])


DECLARATIONS = "__mlflow_unlearn__"  # the function attribute that holds a component's declarations


def declare(**declarations: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: attach declarations to a component function without registering it (plugins whose
    entry point does the registering). Later declarations of the same key replace earlier ones."""

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        setattr(fn, DECLARATIONS, {**getattr(fn, DECLARATIONS, {}), **declarations})
        return fn

    return decorator


def declarations(fn: Callable[..., Any]) -> dict[str, Any]:
    """What a component function declared (`declare`), or {}."""
    return dict(getattr(fn, DECLARATIONS, {}) or {})


class Registry:
    """A registry of named callables.

    `group` is the entry-point group that plugins use (for example `mlflow_unlearn.algorithms`).
    Entry points are loaded lazily on the first lookup; a plugin that fails to import gives a
    warning naming it, never a crash, so one broken package cannot take the others down.
    """

    def __init__(self, kind: str, group: str):
        self.kind = kind
        self.group = group
        self._items: dict[str, Callable[..., Any]] = {}
        self._plugins_loaded = False

    def register(self, name: str | None = None, **declared: Any):
        """Decorator: `@ALGORITHMS.register("finetune", search_space={...})`; keywords are the
        component's declarations (see `declare`)."""

        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            if declared:
                declare(**declared)(fn)
            self.add(name or fn.__name__, fn)
            return fn

        return decorator

    def add(self, name: str, fn: Callable[..., Any], *, replace: bool = False) -> None:
        if not callable(fn):
            raise TypeError(f"{self.kind} {name!r} must be callable, got {type(fn).__name__}")
        if name in self._items and not replace and self._items[name] is not fn:
            raise ValueError(f"{self.kind} {name!r} is already registered; pass replace=True to override")
        self._items[name] = fn

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=self.group):
            if ep.name in self._items:
                continue
            try:
                fn = ep.load()
            except Exception as exc:  # a broken plugin must not break the registry
                warnings.warn(
                    f"could not load {self.kind} plugin {ep.name!r} ({ep.value}) from entry-point "
                    f"group {self.group!r}: {type(exc).__name__}: {exc}",
                    RuntimeWarning,
                    stacklevel=2,
                )
                continue
            try:
                self.add(ep.name, fn)
            except (TypeError, ValueError) as exc:
                warnings.warn(f"ignoring {self.kind} plugin {ep.name!r}: {exc}", RuntimeWarning, stacklevel=2)

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._items)

    def registered(self) -> list[str]:
        """Names in registration order (built-ins first, then plugins)."""
        self._load_plugins()
        return list(self._items)

    def get(self, name: str) -> Callable[..., Any]:
        self._load_plugins()
        try:
            return self._items[name]
        except KeyError:
            raise UnknownComponentError(self.unknown_message([name])) from None

    def unknown_message(self, names) -> str:
        """"unknown <kind> 'x' (did you mean 'y'?); registered: ...": the one wording of an unknown
        name, with the closest registered name when one is close (difflib)."""
        known = self.names()
        named = []
        for name in names:
            text = str(name)[:60]
            close = difflib.get_close_matches(text, known, n=1)
            named.append(f"{text!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        return f"unknown {self.kind}{'s' if len(named) > 1 else ''} {', '.join(named)}; registered: {', '.join(known)}"

    def declared(self, name: str) -> dict[str, Any]:
        """The declarations of component `name` (unknown names raise the registry's error)."""
        return declarations(self.get(name))

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def keyword_defaults(fn: Callable[..., Any], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The keyword-only parameters of `fn` with their defaults (hyperparameters by convention)."""
    out = {}
    for p in inspect.signature(fn).parameters.values():
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in skip:
            out[p.name] = p.default
    return out
