"""Method name -> model builder, so every retrieval method is reachable through `--method`.

A builder is a function taking keyword options and returning a `keras.Model` that maps
`{"ground": [B, Hg, Wg, 3], "aerial": [B, Ha, Wa, 3]}` to `{"ground": [B, D], "aerial": [B, D]}`.
Builders register themselves with `@register("name")` when their module is imported
(`cvm.models` imports them all).
"""

from __future__ import annotations

import inspect
from typing import Callable

from cvm.errors import CvmError

_BUILDERS: dict[str, Callable] = {}


def register(name: str):
    """Decorator registering `builder(**options) -> keras.Model` under `name`."""

    def decorator(builder: Callable) -> Callable:
        if name in _BUILDERS and _BUILDERS[name] is not builder:
            raise ValueError(f"model method {name!r} is registered twice")
        _BUILDERS[name] = builder
        return builder

    return decorator


def available_methods() -> list[str]:
    """Sorted names accepted by `build_model`."""
    return sorted(_BUILDERS)


def builder_options(method: str) -> dict:
    """The options `method` accepts, with their defaults."""
    builder = _lookup(method)
    return {
        name: parameter.default
        for name, parameter in inspect.signature(builder).parameters.items()
        if parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD)
    }


def build_model(method: str, **options):
    """Builds the retrieval model registered as `method` with the given options.

    The model comes back built (its variables exist), so that trainers can create optimizer slots
    and restore checkpoints before the first batch. Raises CvmError for an unknown method (listing
    the valid ones) or an option the method does not take (naming it and listing the valid options).
    """
    builder = _lookup(method)
    accepted = builder_options(method)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise CvmError(
            f"unknown option(s) {', '.join(unknown)} for method {method!r}; "
            f"valid options: {', '.join(sorted(accepted))}"
        )
    model = builder(**options)
    if getattr(model, "built", True) is False:
        raise TypeError(f"the builder of {method!r} must return a built model (call self.build() in __init__)")
    return model


def _lookup(method: str) -> Callable:
    if method not in _BUILDERS:
        raise CvmError(
            f"unknown method {method!r}; valid methods: {', '.join(available_methods()) or '(none registered)'}"
        )
    return _BUILDERS[method]
