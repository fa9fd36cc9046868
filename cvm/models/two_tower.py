"""The shell every retrieval model shares: its options are its constructor's, two views in, two descriptors out.

A model declares an option once, as a keyword argument of its `__init__` (with a type annotation) and a line
under `Args:` in its class docstring; it keeps the value in an attribute of the same name (`weights` in
`weights_source`, since Keras layers own `weights`). Everything else follows from that declaration:
`get_config` / `from_config` (so `.keras` files reload), `cvm.models.model_options` (the options a method
takes, their defaults, kinds and help), the `TrainConfig` field and the `--flag` of `cvm train`.

```python
@register("my_method")
class MyModel(VGGTwoTower):
    '''...
    Args:
        pool_size: side of the final max-pool.
    '''
    def __init__(self, pool_size: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = int(pool_size)
        ...
```
"""

from __future__ import annotations

import inspect
import re
import typing
from typing import Optional

import keras

from cvm.errors import CvmError
from cvm.models.vgg import VGG16Tower, conv_initializers, load_vgg16_weights

# Constructor arguments that are Keras' own, not model options.
_KERAS_ARGUMENTS = ("name", "dtype", "trainable", "self")


class TwoTowerModel(keras.Model):
    """A retrieval model: `{"ground": images, "aerial": images}` -> `{"ground": [B, D], "aerial": [B, D]}`.

    Subclasses define `encode_ground` and `encode_aerial` (and set `descriptor_dim`); the options of their
    constructors (along the class hierarchy) are the model's options, saved by `get_config`.
    """

    l2_normalized = True

    # --- options --------------------------------------------------------------------------------
    @classmethod
    def option_parameters(cls) -> dict:
        """{option: inspect.Parameter} of the constructors from this class up to TwoTowerModel (the most
        derived class's default wins: SAFA trains every VGG block, the others freeze three)."""
        parameters = {}
        for klass in cls.__mro__:
            if klass is TwoTowerModel or not issubclass(klass, TwoTowerModel):
                break
            if "__init__" not in vars(klass):
                continue
            hints = _type_hints(klass.__init__)
            for name, parameter in inspect.signature(klass.__init__).parameters.items():
                if name in _KERAS_ARGUMENTS or parameter.kind not in (parameter.KEYWORD_ONLY,
                                                                        parameter.POSITIONAL_OR_KEYWORD):
                    continue
                if name not in parameters:
                    parameters[name] = parameter.replace(annotation=hints.get(name, parameter.annotation))
        return parameters

    @classmethod
    def option_defaults(cls) -> dict:
        return {name: p.default for name, p in cls.option_parameters().items()}

    @classmethod
    def option_help(cls) -> dict:
        """{option: its `Args:` text}: from the docstring of the class that declares the option in its
        constructor (SAFA's own freeze_blocks text, VGGTwoTower's keep_prob), else of any class above."""
        chain = [k for k in cls.__mro__ if issubclass(k, TwoTowerModel) and k is not TwoTowerModel]
        documented = [(k, docstring_args(k.__doc__ or "")) for k in chain]
        texts = {}
        for name in cls.option_parameters():
            declaring = [k for k in chain if "__init__" in vars(k)
                         and name in inspect.signature(k.__init__).parameters]
            order = [docs for k, docs in documented if k in declaring[:1]] + [docs for _, docs in documented]
            texts[name] = next((docs[name] for docs in order if name in docs), "")
        return texts

    def get_config(self):
        config = super().get_config()
        for name in self.option_parameters():
            value = self.weights_source if name == "weights" else getattr(self, name)
            config[name] = list(value) if isinstance(value, tuple) else value
        return config

    @classmethod
    def from_config(cls, config):
        # A saved model carries its trained weights: never fetch the initial ones again (that would need
        # the network, or a file that may have moved).
        if "weights" in cls.option_parameters():
            config = {**config, "weights": None}
        return cls(**config)

    # --- the two views --------------------------------------------------------------------------
    def call(self, inputs, training=None):
        return {
            "ground": self.encode_ground(inputs["ground"], training=training),
            "aerial": self.encode_aerial(inputs["aerial"], training=training),
        }


def keep_probability(keep_prob) -> float:
    """The dropout keep probability checked: (0, 1]."""
    if not 0.0 < float(keep_prob) <= 1.0:
        raise CvmError(f"keep_prob must be in (0, 1], got {keep_prob}")
    return float(keep_prob)


def dropout_rate(keep_prob: float) -> float:
    return round(1.0 - keep_prob, 9)  # 1 - 0.8 without the float residue


def checked_size(value, name: str) -> tuple:
    """A (height, width) option checked and made an int tuple."""
    try:
        height, width = (int(v) for v in value)
    except (TypeError, ValueError):
        raise CvmError(f"{name} must be (height, width), got {value!r}") from None
    if height < 1 or width < 1:
        raise CvmError(f"{name} must be positive, got {value!r}")
    return height, width


class VGGTwoTower(TwoTowerModel):
    """A two-tower model on one VGG16 tower per view (scopes VGG_grd / VGG_sat of the TF1 originals).

    Args:
        keep_prob: dropout keep probability after conv4/conv5 (rate = 1 - keep_prob), used only with
            `training=True`.
        weights: None (random init), "imagenet" (Keras' VGG16, downloaded) or the path of a local Keras
            VGG16 notop `.h5`/`.weights.h5` file, copied into both towers.
        backbone_width: channel multiplier of the VGG16 towers (1.0 is VGG16; needs weights=None otherwise).
        freeze_blocks: leading VGG blocks kept frozen.
        init: "original" (the TF1 initialisers) or "he" (He-normal convs, zero biases: from-scratch training).
        share_towers: one VGG16 tower for both views (Sample4Geo's shared backbone; the originals have two).
    """

    # VGG16 blocks of each tower (DSM stops at conv4_3) and whether the aerial tower pads circularly along the
    # width (DSM's polar azimuth): class settings of a method, not options.
    tower_blocks = 5
    aerial_circular = False

    def __init__(self, keep_prob: float = 0.8, weights: Optional[str] = None, backbone_width: float = 1.0,
                 freeze_blocks: int = 3, init: typing.Literal["original", "he"] = "original",
                 share_towers: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.keep_prob = keep_probability(keep_prob)
        if weights is not None and float(backbone_width) != 1.0:
            raise CvmError(f"weights={weights!r} needs backbone_width=1.0 (got {backbone_width}); pass weights=None")
        self.weights_source = None if weights is None else str(weights)
        self.backbone_width = float(backbone_width)
        self.freeze_blocks = int(freeze_blocks)
        conv_initializers(init)  # validates
        self.init = init
        tower = dict(width=self.backbone_width, freeze_blocks=self.freeze_blocks,
                     dropout_rate=dropout_rate(self.keep_prob), init=init)
        # Scope names of the original graphs, so that the TF1 converters can match them.
        self.share_towers = bool(share_towers)
        self.ground_tower = VGG16Tower(name="VGG_grd", blocks=self.tower_blocks, **tower)
        self.aerial_tower = self.ground_tower if self.share_towers else VGG16Tower(
            name="VGG_sat", blocks=self.tower_blocks, circular=self.aerial_circular, **tower)

    @property
    def dropout_rate(self) -> float:
        return dropout_rate(self.keep_prob)

    def load_pretrained_backbones(self) -> None:
        """Copy --weights into both towers (after the model is built)."""
        if self.weights_source is not None:
            load_vgg16_weights([self.ground_tower, self.aerial_tower], self.weights_source)


def _type_hints(function) -> dict:
    try:
        return typing.get_type_hints(function)
    except Exception:  # an annotation that does not resolve: fall back to the defaults' types
        return {}


_ARG_LINE = re.compile(r"^(\s*)([a-z_][a-z0-9_]*(?:\s*,\s*[a-z_][a-z0-9_]*)*)\s*:\s*(.*)$")


def docstring_args(docstring: str) -> dict:
    """{name: text} of a Google-style `Args:` section (continuation lines joined; `a, b: text` gives both)."""
    lines = inspect.cleandoc(docstring).splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Args:")
    except StopIteration:
        return {}
    texts, names, indent = {}, None, None
    for line in lines[start + 1:]:
        if not line.strip():
            if names:
                continue
            break
        depth = len(line) - len(line.lstrip())
        if depth == 0:
            break  # the section ended (Example:, a paragraph)
        match = _ARG_LINE.match(line)
        if match and (indent is None or depth == indent):
            indent = depth
            names = [n.strip() for n in match.group(2).split(",")]
            for name in names:
                texts[name] = match.group(3).strip()
        elif names and depth > indent:
            for name in names:
                texts[name] = f"{texts[name]} {line.strip()}".strip()
        else:
            names = None  # `**kwargs: ...` or another line at the entries' depth ends the entry
    return texts
