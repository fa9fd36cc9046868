"""What a synthesis adapter returns: `SynthesisSample`s (input, target, target map files) in a `SynthesisSplit`."""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import numpy as np

from cvm.data.records import read_bgr
from cvm.errors import CvmError

DIRECTIONS = ("a2g", "g2a")  # a2g: aerial -> ground (street view); g2a: ground -> aerial


@dataclasses.dataclass(frozen=True)
class SynthesisSample:
    """One synthesis sample.

    Attributes:
      id: the dataset's id (CVUSA: aerial file stem; Dayton: file name without extension).
      input_path, target_path: files of the input and target view (synthetic://... for the world).
      target_seg_path: file of the target's segmentation map, or None (then target_seg is all zeros).
      out_name: file name a generated image is written under: CVUSA the aerial file's basename (as
        test_xfork_*.lua), Dayton the 4-panel file's basename (as test_fork.lua).
      panels: Dayton: (input, target, target_seg) panel indices into the 4-panel file (A=0, B=1,
        As=2, Bs=3); None for separate files.
    """

    id: str
    input_path: str
    target_path: str
    target_seg_path: Optional[str]
    out_name: str
    panels: Optional[tuple] = None


@dataclasses.dataclass
class SynthesisSplit:
    """The samples of one split for one direction.

    `read(i)` returns (input, target, target_seg) BGR uint8 images (target_seg None when the sample
    has none), with None in place of any that could not be read.
    """

    dataset: str
    name: str
    root: Optional[str]
    direction: str
    samples: list
    source: str
    renderer: Optional[Callable] = dataclasses.field(default=None, repr=False)  # in-memory datasets

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> SynthesisSample:
        return self.samples[i]

    @property
    def ids(self) -> list:
        return [s.id for s in self.samples]

    @property
    def out_names(self) -> list:
        return [s.out_name for s in self.samples]

    @property
    def input_view(self) -> str:
        return "aerial" if self.direction == "a2g" else "ground"

    def subset(self, indices: Sequence[int]) -> "SynthesisSplit":
        return dataclasses.replace(self, samples=[self.samples[int(i)] for i in indices])

    def read(self, i: int, sizes: Optional[dict] = None) -> tuple:
        """sizes: {"ground": (H, W), "aerial": (H, W)} the caller will scale to; an in-memory dataset
        rendered without fixed sizes renders at them (files ignore the hint)."""
        sample = self.samples[i]
        if self.renderer is not None:
            return self.renderer(sample, sizes)
        if sample.panels is not None:
            from cvm.data.dayton import split_panels

            image = read_bgr(sample.input_path)
            if image is None:
                return None, None, None
            quarters = split_panels(image)
            a, b, s = (np.ascontiguousarray(quarters[k]) for k in sample.panels)
            return a, b, (s if sample.target_seg_path is not None else None)
        seg = None if sample.target_seg_path is None else read_bgr(sample.target_seg_path)
        return read_bgr(sample.input_path), read_bgr(sample.target_path), seg


def check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise CvmError(f"unknown synthesis direction {direction!r}; valid: 'a2g' (aerial -> ground) or "
                       "'g2a' (ground -> aerial)")
    return direction

