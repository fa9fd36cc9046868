"""Cross-view synthesis GANs: the X-Fork / X-Seq / X-Pix2pix family and the CVUSA pano<->aerial fork.

`build_synthesis_networks(method, ...)` returns the generator(s) and discriminator(s) of a method,
built, in the roles the trainer (`cvm.training.gan`) uses. The methods and what their networks look
like (fork, conditional D, depth, the X-Seq pair) are the one table `cvm.synthesis.methods.SYNTHESIS_METHODS`.

CVPR18: Regmi & Borji (https://arxiv.org/abs/1803.03396); ICCV19: Regmi & Shah (https://arxiv.org/abs/1904.11045).

```python
from cvm.models.synthesis import build_synthesis_networks
nets = build_synthesis_networks("xfork_pano2aerial", input_size=(32, 128), target_size=(64, 64), ngf=8, ndf=8)
nets["generators"]["g"].heads  # ('image', 'segmentation')
```
"""

from __future__ import annotations

from cvm.models.synthesis.discriminators import PatchDiscriminator
from cvm.models.synthesis.generators import BN_EPSILON, BN_MOMENTUM, EncoderDecoderGenerator
from cvm.synthesis.methods import SYNTHESIS_METHODS


def _bottleneck(family: str, input_size, target_size):
    """(encoder bottleneck, reshaped bottleneck or None) of a family (SynthesisMethod.family) at the given sizes."""
    h, w = input_size
    if family == "borji":  # down to 1x1 (256 -> 8 layers), no reshape
        return (1, 1), None
    if family == "pano2aerial":  # panorama H x 4H -> 2 x 8 per channel -> 4 x 4 -> square aerial
        if w != 4 * h or target_size[0] != target_size[1]:
            raise ValueError(f"pano2aerial needs an H x 4H panorama and a square target, got {input_size} -> "
                             f"{target_size}")
        return (2, 8), (4, 4)
    if family == "aerial2pano":  # square aerial -> 4 x 4 -> 2 x 8 -> H x 4H panorama
        if h != w or target_size[1] != 4 * target_size[0]:
            raise ValueError(f"aerial2pano needs a square aerial and an H x 4H target, got {input_size} -> "
                             f"{target_size}")
        return (4, 4), (2, 8)
    raise ValueError(f"unknown synthesis family {family!r}")


def build_synthesis_networks(method: str, input_size=(256, 256), target_size=(256, 256), input_channels=3, ngf=64,
                             ndf=64, n_layers=None, dropout=0.5, edge_bias=False, fork_relu=None):
    """The built generators and discriminators of `method` (see the module table).

    Args:
      method: one of SYNTHESIS_METHODS (cvm.synthesis.methods).
      input_size, target_size: (H, W) of the generator input and of the generated image(s).
      input_channels: 3, or 4 with the edge-map channel.
      ngf, ndf: widths of the first generator / discriminator layer (64 in the papers).
      n_layers: discriminator depth; None: the method's (3 or 4).
      dropout: decoder dropout rate (0.5).
      edge_bias: biases on the convs not followed by BN (see EncoderDecoderGenerator); False as Torch.
      fork_relu: None: the original's (True for CVPR18 X-Fork; False for the ICCV19 fork, whose
        `forkG_cvusa` lacks the ReLU before the heads); True/False overrides.

    Returns: {"generators": {role: model}, "discriminators": {role: model}, "spec": dict}.
    """
    if method not in SYNTHESIS_METHODS:
        raise ValueError(f"unknown synthesis method {method!r}; valid: {', '.join(SYNTHESIS_METHODS)}")
    spec = SYNTHESIS_METHODS[method].architecture()
    input_size, target_size = tuple(input_size), tuple(target_size)
    bottleneck, reshape_to = _bottleneck(spec["family"], input_size, target_size)
    if fork_relu is None:
        fork_relu = spec["family"] == "borji"
    n_layers = spec["n_layers"] if n_layers is None else int(n_layers)
    common = dict(ngf=ngf, dropout=dropout, edge_bias=edge_bias)
    heads = ("image", "segmentation") if spec["fork"] else ("image",)
    generators = {}
    role = "g1" if spec["sequential"] else "g"
    generators[role] = EncoderDecoderGenerator(
        input_size=input_size, input_channels=input_channels, target_size=target_size, bottleneck_size=bottleneck,
        reshape_to=reshape_to, heads=heads, fork_relu=fork_relu, name=f"generator_{role}", **common)
    condition = input_channels if spec["conditional"] else 0
    if spec["conditional"] and input_size != target_size:
        raise ValueError(f"a conditional discriminator needs equal input and target sizes, got {input_size} and "
                         f"{target_size}")
    discriminators = {}
    d_role = "d1" if spec["sequential"] else "d"
    discriminators[d_role] = PatchDiscriminator(input_size=target_size, input_channels=condition + 3, ndf=ndf,
                                                n_layers=n_layers, edge_bias=edge_bias, name=f"discriminator_{d_role}")
    if spec["sequential"]:
        # X-Seq: G2 maps the generated image to the segmentation map; D2 judges (fake B, Bs) pairs.
        generators["g2"] = EncoderDecoderGenerator(
            input_size=target_size, input_channels=3, target_size=target_size, bottleneck_size=(1, 1),
            heads=("segmentation",), fork_relu=fork_relu, name="generator_g2", **common)
        discriminators["d2"] = PatchDiscriminator(input_size=target_size, input_channels=6, ndf=ndf,
                                                  n_layers=n_layers, edge_bias=edge_bias, name="discriminator_d2")
    return {"generators": generators, "discriminators": discriminators, "spec": spec}


__all__ = ["BN_EPSILON", "BN_MOMENTUM", "EncoderDecoderGenerator", "PatchDiscriminator", "SYNTHESIS_METHODS",
           "build_synthesis_networks"]
