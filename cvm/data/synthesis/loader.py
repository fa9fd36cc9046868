"""One synthesis sample read and prepared in NumPy / OpenCV (the body of the tf.data map): scale, the
pix2pix crop and flip, the edge channel, the homography pre-warp."""

from __future__ import annotations

import math
from typing import Optional

import cv2
import numpy as np

from cvm.data.synthesis.image_ops import edge_map, homography_matrix, to_unit_range, torch_scale
from cvm.data.synthesis.presets import SynthesisSpec
from cvm.data.synthesis.records import SynthesisSplit
from cvm.errors import CvmError


class SynthesisLoader:
    """Reads and prepares one sample in NumPy/OpenCV; the body of the tf.data map."""

    def __init__(self, split: SynthesisSplit, spec: SynthesisSpec, seed: int = 0, faults: Optional[FaultReport] = None):
        if spec.homography is not None and split.direction != "a2g":
            raise CvmError("the homography pre-warp applies to an aerial input: use direction 'a2g' "
                           f"(got {split.direction!r}) or leave the homography unset")
        self.split = split
        self.spec = spec
        self.seed = int(seed)
        # cvm.data.pipeline imports TensorFlow: imported here, so that `cvm train --help` needs none.
        from cvm.data.pipeline import FaultReport

        self.faults = faults if faults is not None else FaultReport()
        self._matrix = None if spec.homography is None else homography_matrix(spec.homography)
        # The sizes the panels are scaled to (train: load size with a crop; evaluation: crop size):
        # a hint for in-memory datasets, which then render at exactly that size.
        in_train, tgt_train = (spec.load_size, spec.load_size) if spec.crop_size else (spec.input_size, spec.target_size)
        in_eval, tgt_eval = (spec.crop_size, spec.crop_size) if spec.crop_size else (spec.input_size, spec.target_size)
        views = ("aerial", "ground") if split.direction == "a2g" else ("ground", "aerial")
        self._sizes = {True: dict(zip(views, (in_train, tgt_train))), False: dict(zip(views, (in_eval, tgt_eval)))}
        if spec.homography is not None:  # the warp's frame, not the input size, is what gets read
            for sizes in self._sizes.values():
                sizes["aerial"] = None

    @property
    def input_shape(self) -> tuple:
        return (*self.spec.input_size, self.spec.input_channels)

    @property
    def target_shape(self) -> tuple:
        return (*self.spec.target_size, 3)

    def draws(self, index: int, epoch: int) -> tuple:
        """(top, left, flip) of a training sample: Torch's ceil(uniform(0.01, L - C)) offsets and uniform() > 0.5."""
        spec = self.spec
        rng = np.random.default_rng([self.seed, int(epoch), int(index)])
        top = left = 0
        if spec.crop_size is not None:
            spare_h = spec.load_size[0] - spec.crop_size[0]
            spare_w = spec.load_size[1] - spec.crop_size[1]
            u_h, u_w = rng.uniform(0.01, max(spare_h, 0.01)), rng.uniform(0.01, max(spare_w, 0.01))
            top = int(math.ceil(u_h)) if spare_h > 0 else 0
            left = int(math.ceil(u_w)) if spare_w > 0 else 0
        flip = bool(spec.flip and rng.uniform() > 0.5)
        return top, left, flip

    def prepare(self, inp: np.ndarray, target: np.ndarray, seg: Optional[np.ndarray], index: int, epoch: int,
                train: bool) -> tuple:
        """uint8 BGR panels -> (input float32 [Hi, Wi, Cin], target, target_seg float32 [Ht, Wt, 3])."""
        spec = self.spec
        if self._matrix is not None:
            frame = spec.homography_size
            if frame is not None:
                inp = torch_scale(inp, frame)
            inp = cv2.warpPerspective(inp, self._matrix, (inp.shape[1], inp.shape[0]), flags=cv2.INTER_LINEAR,
                                      borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        grey = cv2.cvtColor(inp, cv2.COLOR_BGR2GRAY) if spec.edge_map else None
        panels = [to_unit_range(inp), to_unit_range(target), None if seg is None else to_unit_range(seg)]
        if spec.crop_size is not None:
            size = spec.load_size if train else spec.crop_size
            sizes = [size, size, size]
        else:
            sizes = [spec.input_size, spec.target_size, spec.target_size]
        panels = [None if p is None else torch_scale(p, s) for p, s in zip(panels, sizes)]
        if grey is not None:
            grey = torch_scale(grey, sizes[0])
        if train and (spec.crop_size is not None or spec.flip):
            top, left, flip = self.draws(index, epoch)
            ch, cw = spec.crop_size if spec.crop_size is not None else sizes[0]

            def crop_flip(x):
                if x is None:
                    return None
                if spec.crop_size is not None:
                    x = x[top:top + ch, left:left + cw]
                return x[:, ::-1] if flip else x

            panels = [crop_flip(p) for p in panels]
            grey = crop_flip(grey)
        x, y, s = panels
        if grey is not None:
            x = np.concatenate([x, edge_map(np.ascontiguousarray(grey))[..., None]], axis=-1)
        if s is None:
            s = np.zeros(self.target_shape, np.float32)
        return (np.ascontiguousarray(x, np.float32), np.ascontiguousarray(y, np.float32),
                np.ascontiguousarray(s, np.float32))

    def load(self, index: int, epoch: int, train: bool):
        """(input, target, target_seg, ok); ok False means skip this sample (recorded in the fault report)."""
        index = int(index)
        sample = self.split[index]
        try:
            inp, target, seg = self.split.read(index, self._sizes[bool(train)])
            need = [(inp, sample.input_path), (target, sample.target_path)]
            if sample.target_seg_path is not None:
                need.append((seg, sample.target_seg_path))
            for image, path in need:
                if image is None:
                    from cvm.data.pipeline import describe_failure

                    self.faults.record(path, describe_failure(path))
                    return self._failed()
            x, y, s = self.prepare(inp, target, seg, index, epoch, train)
            if x.shape != self.input_shape or y.shape != self.target_shape or s.shape != self.target_shape:
                raise ValueError(f"prepared shapes {x.shape}/{y.shape}/{s.shape}, expected "
                                 f"{self.input_shape}/{self.target_shape}")
            return x, y, s, True
        except Exception as exc:  # a bad sample must never stop an epoch
            self.faults.record(f"{sample.input_path} | {sample.target_path}", f"{type(exc).__name__}: {exc}")
            return self._failed()

    def _failed(self):
        return (np.zeros(self.input_shape, np.float32), np.zeros(self.target_shape, np.float32),
                np.zeros(self.target_shape, np.float32), False)

