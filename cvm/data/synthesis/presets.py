"""What a synthesis experiment's images look like: `SynthesisSpec` (sizes, crop, flip, edge channel,
homography pre-warp) and the papers' presets (seeds.md §3.1, §4).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from cvm.errors import CvmError

# CVIU 2019 (Regmi & Borji, "Cross-view image synthesis using geometry-guided conditional GANs"): the
# four point pairs of the aerial -> street-view homography, as (x, y) pixel coordinates, given by the
# author in kregmi/cross-view-image-synthesis issue #27 (the issue text misses one bracket; the
# intended arrays are these). The issue does not say in which image size the points are measured.
CVIU_HOMOGRAPHY = (((600, 730), (325, 600), (1155, 655), (850, 550)),
                   ((790, 780), (210, 377), (1060, 715), (770, 250)))
# The same as a flag value for `parse_homography` (8 source numbers x1,y1,...,x4,y4 then 8 destination).
CVIU_HOMOGRAPHY_FLAG = "600,730,325,600,1155,655,850,550,790,780,210,377,1060,715,770,250"


@dataclasses.dataclass(frozen=True)
class SynthesisSpec:
    """Sizes and preprocessing of one synthesis experiment (images BGR in [-1, 1], as the Torch originals).

    Attributes:
      input_size: (H, W) of the generator input.
      target_size: (H, W) of the target image and of the target segmentation map.
      load_size: pix2pix: scale every panel to this first ((286, 286)) ...
      crop_size: ... then take the SAME random crop of all panels ((256, 256)); training only. At
        evaluation every panel is scaled to crop_size directly (the test script's loadSize = fineSize).
        With load/crop sizes, input_size and target_size must both equal crop_size.
      flip: the SAME random horizontal flip (p 0.5) of all panels; training only.
      edge_map: append a 4th input channel: Canny(50, 100) of the grey input after scaling, values 0/1.
      homography: ((4 source (x, y)), (4 destination (x, y))): warp the aerial input with the
        homography mapping the source points onto the destination points first (CVIU 2019); the
        direction must then be a2g. See CVIU_HOMOGRAPHY.
      homography_size: (H, W) of the pixel frame the homography points refer to: the aerial image is
        scaled to it before the warp and the warp's output has that size. None: the points are pixel
        coordinates of the aerial image as read, and the output keeps its size.
    """

    input_size: tuple
    target_size: tuple
    load_size: Optional[tuple] = None
    crop_size: Optional[tuple] = None
    flip: bool = False
    edge_map: bool = False
    homography: Optional[tuple] = None
    homography_size: Optional[tuple] = None

    def __post_init__(self):
        for name in ("input_size", "target_size", "load_size", "crop_size", "homography_size"):
            size = getattr(self, name)
            if size is None:
                if name in ("input_size", "target_size"):
                    raise CvmError(f"SynthesisSpec.{name} is required: (height, width)")
                continue
            try:
                size = tuple(int(s) for s in size)
            except (TypeError, ValueError):
                raise CvmError(f"SynthesisSpec.{name} must be (height, width), got {size!r}") from None
            if len(size) != 2 or min(size) <= 0:
                raise CvmError(f"SynthesisSpec.{name} must be (height, width) with positive values, got {size!r}")
            object.__setattr__(self, name, size)
        if (self.load_size is None) != (self.crop_size is None):
            raise CvmError("SynthesisSpec: load_size and crop_size go together (pix2pix: scale to load_size, "
                           f"then crop crop_size), got load_size={self.load_size}, crop_size={self.crop_size}")
        if self.crop_size is not None:
            if self.crop_size[0] > self.load_size[0] or self.crop_size[1] > self.load_size[1]:
                raise CvmError(f"SynthesisSpec: crop_size {self.crop_size} is larger than load_size {self.load_size}")
            if self.input_size != self.crop_size or self.target_size != self.crop_size:
                raise CvmError(f"SynthesisSpec: with crop_size {self.crop_size}, input_size ({self.input_size}) and "
                               f"target_size ({self.target_size}) must equal it")
        if self.homography is not None:
            object.__setattr__(self, "homography", parse_homography(self.homography))

    @property
    def input_channels(self) -> int:
        return 4 if self.edge_map else 3

    def replace(self, **changes) -> "SynthesisSpec":
        return dataclasses.replace(self, **changes)


SYNTHESIS_PRESETS = {
    # Regmi & Borji (CVPR 2018): 256x256 both views, scale 286, crop 256, flip during training.
    "borji256": SynthesisSpec((256, 256), (256, 256), load_size=(286, 286), crop_size=(256, 256), flip=True),
    # Regmi & Shah (ICCV 2019) X-Fork on CVUSA: 256x1024 panorama -> 512x512 aerial + aerial segmap.
    "pano2aerial": SynthesisSpec((256, 1024), (512, 512)),
    "pano2aerial_edges": SynthesisSpec((256, 1024), (512, 512), edge_map=True),
    # ... and the reverse: 512x512 aerial -> 256x1024 panorama + panorama segmap.
    "aerial2pano": SynthesisSpec((512, 512), (256, 1024)),
    # Small versions for tests and the synthetic-world quickstart (same aspect ratios, 1/4 side).
    "pano2aerial_small": SynthesisSpec((64, 256), (128, 128)),
    "aerial2pano_small": SynthesisSpec((128, 128), (64, 256)),
    "borji64": SynthesisSpec((64, 64), (64, 64), load_size=(72, 72), crop_size=(64, 64), flip=True),
}


def synthesis_preset(name: str) -> SynthesisSpec:
    """The SynthesisSpec of a named preset; a CvmError lists the valid names."""
    try:
        return SYNTHESIS_PRESETS[name]
    except KeyError:
        raise CvmError(f"unknown synthesis preset {name!r}; valid: {', '.join(sorted(SYNTHESIS_PRESETS))}") from None



def parse_homography(value) -> tuple:
    """((4 source (x, y)), (4 destination (x, y))) from 16 numbers, a "x1,y1,...,x4,y4,x1',...,y4'" string
    (CVIU_HOMOGRAPHY_FLAG), a list of such strings (absl DEFINE_list), or nested pairs.
    """
    original = value
    if isinstance(value, str):
        value = [v for v in value.replace(";", ",").replace(" ", ",").split(",") if v]
    try:
        numbers = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise CvmError(f"homography must be 16 numbers (4 source x,y then 4 destination x,y), got {original!r}") from None
    if numbers.size != 16 or not np.all(np.isfinite(numbers)):
        raise CvmError(f"homography must be 16 finite numbers (4 source x,y then 4 destination x,y), got "
                       f"{numbers.size} from {original!r}; e.g. the CVIU points {CVIU_HOMOGRAPHY_FLAG}")
    pts = numbers.reshape(2, 4, 2)
    return tuple(tuple(tuple(float(c) for c in p) for p in side) for side in pts)

