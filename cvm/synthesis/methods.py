"""The synthesis methods: one table of what each network looks like and how its Torch script trains it.

The table is light (no TensorFlow): the configs and the CLI ask `is_synthesis_method` at start-up, the
networks (`cvm.models.synthesis.build_synthesis_networks`) read the architecture fields, the run's
config (`cvm.training.synthesis_config.SynthesisConfig.resolved`) the script's defaults.

| method            | paper   | generators                           | discriminators                     |
|-------------------|---------|--------------------------------------|------------------------------------|
| xfork             | CVPR18  | g: image + segmentation heads        | d: conditional, n_layers 3 (70x70) |
| xseq              | CVPR18  | g1: image; g2: image -> segmentation | d1 on (A, B); d2 on (fake B, Bs)   |
| xpix2pix          | CVPR18  | g: image                             | d: conditional, n_layers 3         |
| xfork_pano2aerial | ICCV19  | g: 2x8 -> 4x4 bottleneck, two heads  | d: unconditional, n_layers 4 (142) |
| xfork_aerial2pano | ICCV19  | g: 4x4 -> 2x8 bottleneck, two heads  | d: unconditional, n_layers 4       |

CVPR18: Regmi & Borji (https://arxiv.org/abs/1803.03396); ICCV19: Regmi & Shah (https://arxiv.org/abs/1904.11045).
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Mapping, Optional

from cvm.errors import CvmError


@dataclasses.dataclass(frozen=True)
class SynthesisMethod:
    """One synthesis method.

    Attributes:
      name: the --method value.
      family: the generator's shape: "borji" (square, down to 1x1, no reshape), "pano2aerial" (H x 4H
        panorama -> 2x8 -> 4x4 -> square aerial) or "aerial2pano" (the reverse).
      fork: the generator has a segmentation head beside the image head.
      conditional: the discriminator sees concat(input, image) (else the image alone).
      n_layers: the discriminator's depth (defineD_n_layers).
      sequential: X-Seq: G1 makes the image, G2 its segmentation map from it, each with its own D.
      script: the Torch training script the defaults are read from (seeds.md §3.1, §4).
      defaults: the script's settings, which SynthesisConfig fields left None take: preset, direction,
        batch_size, epochs, lambda_l1, lambda_seg, and inference_mode (how the method's *test* script
        runs its generator: test_fork.lua, test_seq.lua and test_pix2pix.lua never call netG:evaluate(),
        so BatchNorm uses the test batch's statistics and dropout stays on (False); the ICCV19 test
        scripts call it (True: moving statistics, no dropout)).
    """

    name: str
    family: str
    fork: bool
    conditional: bool
    n_layers: int
    sequential: bool = False
    script: str = ""
    defaults: Mapping = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))

    def architecture(self) -> dict:
        """What `build_synthesis_networks` returns as "spec": family, fork, conditional, n_layers, sequential."""
        return {"family": self.family, "fork": self.fork, "conditional": self.conditional,
                "n_layers": self.n_layers, "sequential": self.sequential}

    @property
    def has_segmentation(self) -> bool:
        """Whether training reads target segmentation maps (a fork's second head, X-Seq's G2)."""
        return self.fork or self.sequential


SYNTHESIS_METHODS = {m.name: m for m in (
    # train_fork.lua: batch 1, niter 35, lambda 100 on the image and on the segmentation L1.
    SynthesisMethod("xfork", "borji", fork=True, conditional=True, n_layers=3, script="train_fork.lua",
                    defaults=dict(preset="borji256", direction="a2g", batch_size=1, epochs=35, lambda_l1=100.0,
                                  lambda_seg=100.0, inference_mode=False)),
    # train_seq.lua: batch 4, niter 35, lambda 100 (G1 image L1, G2 segmentation L1), lambda_grads 0.1.
    SynthesisMethod("xseq", "borji", fork=False, conditional=True, n_layers=3, sequential=True,
                    script="train_seq.lua",
                    defaults=dict(preset="borji256", direction="a2g", batch_size=4, epochs=35, lambda_l1=100.0,
                                  lambda_seg=100.0, inference_mode=False)),
    # train_pix2pix.lua: batch 8, niter 35, lambda 100.
    SynthesisMethod("xpix2pix", "borji", fork=False, conditional=True, n_layers=3, script="train_pix2pix.lua",
                    defaults=dict(preset="borji256", direction="a2g", batch_size=8, epochs=35, lambda_l1=100.0,
                                  lambda_seg=0.0, inference_mode=False)),
    # train_xfork_pano2aerial.lua: batch 4, niter 100, lambda1 100, lambda2 1 (the _with_edgemap script:
    # batch 16, same weights: SynthesisConfig.resolved).
    SynthesisMethod("xfork_pano2aerial", "pano2aerial", fork=True, conditional=False, n_layers=4,
                    script="train_xfork_pano2aerial.lua",
                    defaults=dict(preset="pano2aerial", direction="g2a", batch_size=4, epochs=100, lambda_l1=100.0,
                                  lambda_seg=1.0, inference_mode=True)),
    # train_xfork_aerial2pano.lua: batch 4, niter 30, lambda1 100, lambda2 10.
    SynthesisMethod("xfork_aerial2pano", "aerial2pano", fork=True, conditional=False, n_layers=4,
                    script="train_xfork_aerial2pano.lua",
                    defaults=dict(preset="aerial2pano", direction="a2g", batch_size=4, epochs=30, lambda_l1=100.0,
                                  lambda_seg=10.0, inference_mode=True)),
)}


def is_synthesis_method(method: Optional[str]) -> bool:
    return method in SYNTHESIS_METHODS


def synthesis_method(name: str) -> SynthesisMethod:
    """The table's entry for `name`; a CvmError lists the valid names."""
    try:
        return SYNTHESIS_METHODS[name]
    except (KeyError, TypeError):
        raise CvmError(f"--method {name!r} is not a synthesis method; valid: {', '.join(SYNTHESIS_METHODS)}") from None
