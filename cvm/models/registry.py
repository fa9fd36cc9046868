"""Method name -> model class, so every retrieval method is reachable through `--method`.

A model class (a `cvm.models.two_tower.TwoTowerModel`) maps `{"ground": [B, Hg, Wg, 3], "aerial": [B, Ha, Wa,
3]}` to `{"ground": [B, D], "aerial": [B, D]}`; its constructor's keyword arguments are its options (see
two_tower.py). Classes register themselves with `@register("name")` when their module is imported
(`cvm.models` imports them all).
"""

from __future__ import annotations

from cvm.errors import CvmError

_BUILDERS: dict[str, type] = {}
# Methods whose model gets a fixed Keras name (not the numbered default): optimizer slot names embed it, and a
# run resumed in the same process must find the same names in its checkpoint.
_FIXED_NAMES: dict[str, str] = {}


def register(name: str, fixed_name: bool = False):
    """Class decorator registering a TwoTowerModel subclass as method `name`."""

    def decorator(model_class: type) -> type:
        if name in _BUILDERS and _BUILDERS[name] is not model_class:
            raise ValueError(f"model method {name!r} is registered twice")
        if not hasattr(model_class, "option_parameters"):
            raise TypeError(f"{model_class.__name__} must be a cvm.models.two_tower.TwoTowerModel to be registered")
        _BUILDERS[name] = model_class
        if fixed_name:
            _FIXED_NAMES[name] = name
        return model_class

    return decorator


def model_class(method: str) -> type:
    """The class registered as `method` (CvmError listing the valid methods otherwise)."""
    return _lookup(method)


def model_options(method: str) -> dict:
    """{option: inspect.Parameter} of `method`'s model (default, annotation); see two_tower.py."""
    return _lookup(method).option_parameters()


def available_methods() -> list[str]:
    """Sorted names accepted by `build_model`."""
    return sorted(_BUILDERS)


def builder_options(method: str) -> dict:
    """The options `method` accepts, with their defaults."""
    return _lookup(method).option_defaults()


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
    if method in _FIXED_NAMES:
        options = {"name": _FIXED_NAMES[method], **options}
    model = builder(**options)
    if getattr(model, "built", True) is False:
        raise TypeError(f"the model of {method!r} must come back built (call self.build() in __init__)")
    return model


def _lookup(method: str) -> type:
    if method not in _BUILDERS:
        raise CvmError(
            f"unknown method {method!r}; valid methods: {', '.join(available_methods()) or '(none registered)'}"
        )
    return _BUILDERS[method]
