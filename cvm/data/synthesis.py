"""Data for cross-view image synthesis: (input view, target view, target segmentation map) samples.

Two families of originals (seeds.md §3.1, §4):
  * Regmi & Borji, CVPR 2018 / CVIU 2019 (github.com/kregmi/cross-view-image-synthesis, a pix2pix
    fork): every panel scaled to 286x286, the SAME random 256x256 crop and the SAME random
    horizontal flip of all panels during training; at test time scaled to 256x256 directly.
  * Regmi & Shah, ICCV 2019 X-Fork for CVUSA (github.com/kregmi/cross-view-image-matching,
    xview-synthesis/): panorama scaled to 1024x256, aerial and its segmentation map to 512x512, no
    crop, no flip; optionally a 4th input channel with Canny(50, 100) edges of the grey panorama.
Both load images as RGB in [0, 1], permute the channels to BGR and map them to [-1, 1], and scale
with Torch's `image.scale` ("bilinear": linear interpolation with aligned corners when enlarging, an
area average when shrinking; `torch_scale` reproduces it).

Elements of `SynthesisPipeline.train()` / `.eval()` are `(images, meta)`:
  images = {"input": float32 [B, Hi, Wi, Cin], "target": float32 [B, Ht, Wt, 3],
            "target_seg": float32 [B, Ht, Wt, 3]}, BGR in [-1, 1] (the edge channel is 0/1)
  meta   = {"index": int64 [B] (position in the split), "out_name": string [B] (the file name a
            generated image is written under)}
Training epoch e visits the split in the order `np.random.default_rng([seed, e]).permutation(N)`
with full batches; each sample's crop and flip come from `default_rng([seed, e, index])`, so runs
are reproducible whatever the parallelism and resumable at any (epoch, batch). Unreadable samples
are skipped and written to a `FaultReport`, as in the retrieval pipeline.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Callable, Optional, Sequence

import cv2
import numpy as np

from cvm.data import sources
from cvm.data.batching import EpochPipeline
from cvm.data.records import read_bgr
from cvm.errors import CvmError

DATASETS = ("synthetic", "cvusa", "dayton", "ucfop", "cvact")
# Retrieval datasets without released segmentation maps: their target_seg is all zeros.
WITHOUT_SEGMAPS = ("ucfop", "cvact")
DIRECTIONS = ("a2g", "g2a")  # a2g: aerial -> ground (street view); g2a: ground -> aerial

# CVIU 2019 (Regmi & Borji, "Cross-view image synthesis using geometry-guided conditional GANs"): the
# four point pairs of the aerial -> street-view homography, as (x, y) pixel coordinates, given by the
# author in kregmi/cross-view-image-synthesis issue #27 (the issue text misses one bracket; the
# intended arrays are these). The issue does not say in which image size the points are measured.
CVIU_HOMOGRAPHY = (((600, 730), (325, 600), (1155, 655), (850, 550)),
                   ((790, 780), (210, 377), (1060, 715), (770, 250)))
# The same as a flag value for `parse_homography` (8 source numbers x1,y1,...,x4,y4 then 8 destination).
CVIU_HOMOGRAPHY_FLAG = "600,730,325,600,1155,655,850,550,790,780,210,377,1060,715,770,250"

# Canny thresholds of train_xfork_pano2aerial_with_edgemap.lua.
CANNY_LOW, CANNY_HIGH = 50, 100


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


def homography_matrix(homography) -> np.ndarray:
    """3x3 matrix mapping the 4 source points onto the 4 destination points (exact for 4 pairs)."""
    src, dst = (np.asarray(side, np.float32) for side in parse_homography(homography))
    matrix = cv2.getPerspectiveTransform(src, dst)
    if not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix)) < 1e-12:
        raise CvmError(f"the homography points {homography} are degenerate (three points on a line?)")
    return matrix


def warp_homography(image: np.ndarray, homography, frame: Optional[tuple] = None) -> np.ndarray:
    """Warp an image with the homography of 4 point pairs (cv2.warpPerspective, bilinear, black outside).

    frame: (H, W) the points are measured in: the image is scaled to it first (torch_scale) and the
    output has that size; None keeps the image's size.
    """
    if frame is not None:
        image = torch_scale(image, frame)
    h, w = image.shape[:2]
    return cv2.warpPerspective(image, homography_matrix(homography), (w, h), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)


# ---------------------------------------------------------------------------------------------------
# Torch image.scale


def _scale_axis(x: np.ndarray, n_out: int, axis: int, byte: bool) -> np.ndarray:
    """One pass of Torch's separable `image.scale` (scaleLinear_rowcol) along `axis`, in float64."""
    n_in = x.shape[axis]
    if n_out == n_in:
        return x
    x = np.moveaxis(x, axis, 0)
    if n_out > n_in:
        # Enlarging: linear interpolation with the end samples aligned, position di (n_in-1)/(n_out-1).
        if n_in == 1:
            out = np.repeat(x, n_out, axis=0)
        else:
            scale = np.float32(n_in - 1) / np.float32(n_out - 1)
            pos = np.arange(n_out, dtype=np.float32) * scale
            i0 = np.minimum(pos.astype(np.int64), n_in - 1)
            f = (pos - i0).astype(np.float64).reshape((-1,) + (1,) * (x.ndim - 1))
            out = (1.0 - f) * x[i0] + f * x[np.minimum(i0 + 1, n_in - 1)]
            out[-1] = x[-1]
    else:
        # Shrinking: the average of the source over [di s, (di + 1) s), s = n_in / n_out, with
        # fractional end pixels weighted by their overlap (an exact box filter).
        scale = np.float32(n_in) / np.float32(n_out)
        edges = np.minimum(np.arange(n_out + 1, dtype=np.float32) * scale, np.float32(n_in)).astype(np.float64)
        whole = np.minimum(np.floor(edges).astype(np.int64), n_in - 1)
        frac = (edges - whole).reshape((-1,) + (1,) * (x.ndim - 1))
        cumulative = np.concatenate([np.zeros((1,) + x.shape[1:]), np.cumsum(x, axis=0, dtype=np.float64)])
        integral = cumulative[whole] + frac * x[whole]
        width = (edges[1:] - edges[:-1]).reshape((-1,) + (1,) * (x.ndim - 1))
        out = (integral[1:] - integral[:-1]) / width
    if byte:
        out = np.clip(np.floor(out + 0.5), 0, 255)
    return np.moveaxis(out, 0, axis)


def torch_scale(image: np.ndarray, size: tuple) -> np.ndarray:
    """Torch `image.scale(img, W, H)` (mode "bilinear") to (H, W): width pass, then height pass.

    Enlarging interpolates linearly with aligned corners; shrinking averages over each output pixel's
    footprint (as cv2.INTER_AREA). uint8 images are rounded after each pass as Torch's byte tensors
    are; float images stay float32.
    """
    h, w = int(size[0]), int(size[1])
    if image.shape[0] == h and image.shape[1] == w:
        return image
    byte = image.dtype == np.uint8
    if byte:
        x = image.astype(np.float64)
        x = _scale_axis(x, w, 1, True)
        x = _scale_axis(x, h, 0, True)
        return x.astype(np.uint8)
    x = np.asarray(image, np.float32)
    for axis, n_out in ((1, w), (0, h)):
        n_in = x.shape[axis]
        if n_out < n_in:
            # cv2.INTER_AREA along one axis is the same exact box filter, ~10x faster than NumPy here.
            dsize = (n_out, x.shape[0]) if axis == 1 else (x.shape[1], n_out)
            shrunk = cv2.resize(x, dsize, interpolation=cv2.INTER_AREA)
            x = shrunk.reshape(dsize[1], dsize[0], *x.shape[2:])
        elif n_out > n_in:
            x = _scale_axis(x, n_out, axis, False).astype(np.float32)
    return x


def to_unit_range(image_uint8: np.ndarray) -> np.ndarray:
    """uint8 BGR -> float32 BGR in [-1, 1]: x / 255 * 2 - 1 (Torch image.load as float, then mul(2):add(-1))."""
    return image_uint8.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)


def to_uint8_bgr(images) -> np.ndarray:
    """[-1, 1] float BGR (one image or a batch; extra channels beyond 3 dropped) -> uint8 BGR for cv2.imwrite.

    (x + 1) / 2 * 255, rounded to nearest and clipped (the Torch test scripts' deprocess then save).
    """
    x = np.asarray(images, dtype=np.float32)
    if x.shape[-1] > 3:
        x = x[..., :3]
    return np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def edge_map(grey_uint8: np.ndarray) -> np.ndarray:
    """Canny(50, 100) edges of a grey uint8 image as float32 0/1 (cv.Canny{...} / 255 in the Lua)."""
    return (cv2.Canny(grey_uint8, CANNY_LOW, CANNY_HIGH) > 0).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# Records


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


def _check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise CvmError(f"unknown synthesis direction {direction!r}; valid: 'a2g' (aerial -> ground) or "
                       "'g2a' (ground -> aerial)")
    return direction


def load_synthesis_split(dataset: str, split: str, root: Optional[str] = None, direction: str = "g2a", *,
                         synthetic_pairs: int = 1000, synthetic_seed: int = 0, **options) -> SynthesisSplit:
    """The samples of one split of a synthesis dataset in one direction.

    Args:
      dataset: "synthetic", "cvusa", "dayton", or "ucfop" / "cvact" (retrieval pairs, no segmentation maps).
      split: the split name (synthetic/CVUSA: "train", "val"/"test"; Dayton: "train", "test"/"val").
      root: the dataset folder (not used by "synthetic").
      direction: "a2g" (aerial -> ground) or "g2a" (ground -> aerial).
      synthetic_pairs, synthetic_seed: size and seed of the synthetic world's dataset.
      **options:
        segmaps (all, default True): give samples their target segmentation map; False leaves
          target_seg_path None (for evaluation / generation without maps).
        CVUSA: split_file (a list relative to the root or absolute, "{split}" standing for train / val;
          default: Regmi's splits/train_xfork_cvusa.txt for g2a with maps, else splits/train-19zl.csv
          or val-19zl.csv) and aerial_seg_dir (g2a: maps at <dir>/<aerial stem>.png instead of
          column 3), see `load_cvusa_synthesis`.
        synthetic: val_fraction, ground_size ((H, W)) and aerial_size (side) to render at (default:
          the sizes the pipeline asks for, so no rescaling happens), render options of
          make_synthetic_split (fov_deg, vfov_deg, camera_height_m, max_range_m, aerial_mpp).

    Raises:
      CvmError: unknown dataset, split, direction or option; missing root or split file.
    """
    direction = _check_direction(direction)
    if dataset == "synthetic":
        return load_synthetic_synthesis(split, direction, pairs=synthetic_pairs, seed=synthetic_seed, **options)
    if root is None:
        raise CvmError(f"--root is required for --dataset {dataset}: the folder holding its files (see README 'Datasets')")
    if dataset == "cvusa":
        return load_cvusa_synthesis(root, split, direction, **options)
    if dataset == "dayton":
        return load_dayton_synthesis(root, split, direction, **options)
    if dataset in ("ucfop", "cvact"):
        return load_pairs_synthesis(dataset, root, split, direction, **options)
    raise CvmError(f"unknown synthesis --dataset {dataset!r}; valid: {', '.join(DATASETS)}")


def load_dayton_synthesis(root: str, split: str, direction: str = "a2g", segmaps: bool = True) -> SynthesisSplit:
    """Dayton 4-panel files: a2g = B (aerial) -> A (street view) + As; g2a = A -> B + Bs (train_fork.lua's idx_*)."""
    from cvm.data.dayton import load_dayton

    direction = _check_direction(direction)
    records = load_dayton(root, split)
    panels = (1, 0, 2) if direction == "a2g" else (0, 1, 3)
    samples = [SynthesisSample(id=p.id, input_path=p.ground_path, target_path=p.ground_path,
                               target_seg_path=p.ground_path if segmaps else None,
                               out_name=os.path.basename(p.ground_path), panels=panels) for p in records]
    return SynthesisSplit("dayton", split, records.root, direction, samples, records.source)


def load_pairs_synthesis(dataset: str, root: str, split: str, direction: str = "g2a", segmaps: bool = False,
                         **options) -> SynthesisSplit:
    """Synthesis samples from a retrieval dataset's (ground, aerial) pairs, without segmentation maps.

    UCF-OP and CVACT have no released segmentation maps (kregmi/cross-view-image-matching issue #3), so
    target_seg is all zeros and the fork's segmentation head learns nothing useful: set --lambda_seg=0
    or use a plain generator. out_name is the aerial file's basename, as for CVUSA.
    """
    from cvm.data import load_split

    direction = _check_direction(direction)
    if segmaps:
        raise CvmError(f"--dataset {dataset} has no segmentation maps to train a fork's segmentation head on; "
                       "pass segmaps=False (the GAN trainer does so for this dataset)")
    pairs = load_split(dataset, split, root, **options)
    samples = []
    for pair in pairs.pairs:
        inp, tgt = (pair.aerial_path, pair.ground_path) if direction == "a2g" else (pair.ground_path, pair.aerial_path)
        samples.append(SynthesisSample(id=pair.id, input_path=inp, target_path=tgt, target_seg_path=None,
                                       out_name=os.path.basename(pair.aerial_path)))
    return SynthesisSplit(dataset, split, pairs.root, direction, samples, pairs.source)


# Regmi & Shah's lists for the panorama -> aerial X-Fork (ICCV 2019): CVUSA has no aerial segmentation
# maps, so train_xfork_pano2aerial.lua (and its _with_edgemap twin) read rows "aerial, panorama, aerial
# segmentation map" (paths relative to the CVPR_subset root; csvigo, comma-separated) from
# splits/train_xfork_cvusa.txt and take the target map from column 3. The file is not in either of Regmi's
# repositories. The original validates nothing and its test script reads val-19zl.csv without maps, so
# the validation list has no original: val_xfork_cvusa.txt is cvm's name for it, in the same format.
XFORK_SPLIT_FILES = {"train": "train_xfork_cvusa.txt", "val": "val_xfork_cvusa.txt"}
# In a --split_file name, "{split}" stands for the split read ("train" or "val"; "test" reads "val").
SPLIT_PLACEHOLDER = "{split}"


def cvusa_split_file(split: str, split_file: Optional[str] = None, direction: str = "g2a", segmaps: bool = True,
                     aerial_seg_dir: Optional[str] = None) -> str:
    """The file (relative to the CVUSA root, or absolute) a CVUSA synthesis split reads its rows from.

    split_file given: that file, "{split}" replaced by "train" or "val". Otherwise g2a with maps from a
    list (no aerial_seg_dir): splits/train_xfork_cvusa.txt / val_xfork_cvusa.txt (XFORK_SPLIT_FILES);
    anything else: the official splits/train-19zl.csv / val-19zl.csv.
    """
    from cvm.data import cvusa

    if split not in cvusa.SPLIT_FILES:
        raise CvmError(f"Unknown CVUSA split {split!r}; valid splits: 'train', 'val', 'test' (alias of 'val').")
    canonical = "train" if split == "train" else "val"
    if split_file is not None:
        return str(split_file).replace(SPLIT_PLACEHOLDER, canonical)
    if segmaps and direction == "g2a" and aerial_seg_dir is None:
        return os.path.join("splits", XFORK_SPLIT_FILES[canonical])
    return os.path.join("splits", cvusa.SPLIT_FILES[split])


def _missing_xfork_list(path: str, split: str) -> CvmError:
    canonical = "train" if split == "train" else "val"
    if canonical == "train":
        origin = ("is Regmi & Shah's list for the panorama -> aerial X-Fork: train_xfork_pano2aerial.lua in "
                  "github.com/kregmi/cross-view-image-matching (xview-synthesis/) reads each aerial's segmentation "
                  "target from its column 3 (rows: aerial, panorama, aerial segmentation map, relative to the CVUSA "
                  "root); CVUSA has no aerial maps and the list is not published in that repository (ask its "
                  "author, or write one in that format)")
    else:
        origin = ("is the validation twin of Regmi & Shah's train_xfork_cvusa.txt (rows: aerial, panorama, aerial "
                  "segmentation map): the original validates nothing and its test script reads val-19zl.csv "
                  "without maps, so this is cvm's name for it; write one in that format, or leave --val_split empty")
    return CvmError(f"CVUSA split file not found: {os.path.abspath(path)}. It {origin}. Point --split_file at the "
                    f"list (relative to --root or absolute; '{SPLIT_PLACEHOLDER}' in the name stands for train / val), "
                    "or pass --aerial_seg_dir=DIR to read DIR/<aerial stem>.png beside the official CSVs; "
                    "see README 'Cross-view synthesis'.")


def load_cvusa_synthesis(root: str, split: str, direction: str = "g2a", segmaps: bool = True,
                         split_file: Optional[str] = None, aerial_seg_dir: Optional[str] = None) -> SynthesisSplit:
    """CVUSA synthesis samples from a split list (aerial, panorama[, segmentation map] per row).

    Segmentation maps are the colour (3-channel) images read with OpenCV (issue #18):
      a2g (aerial -> panorama): the row's third column, the CVUSA street-view annotation
        (streetview/annotations/NNNNNNN.png in the official CSVs; Regmi's own CSV for this direction
        was splits/train-19zl-segmap-rgb.csv, pass it as split_file);
      g2a (panorama -> aerial): CVUSA has no aerial maps. As train_xfork_pano2aerial.lua, the third
        column of Regmi's list splits/train_xfork_cvusa.txt (val_xfork_cvusa.txt for val: XFORK_SPLIT_FILES),
        or of the split_file given; a folder without it is a CvmError naming the file. With
        aerial_seg_dir, rows come from the official CSVs (or split_file) and the map of a row is
        <aerial_seg_dir>/<aerial stem>.png instead.
    Without segmaps (generation) the official CSVs are read, as test_xfork_pano2aerial.lua does.

    Args:
      split_file: the list to read instead of the default above, relative to the root or absolute;
        "{split}" in it becomes "train" or "val" ("test").
      aerial_seg_dir: g2a only: the folder (relative to the root or absolute) of <aerial stem>.png maps.

    out_name is the aerial file's basename for both directions, as test_xfork_*.lua name their outputs.
    """
    direction = _check_direction(direction)
    if aerial_seg_dir is not None and direction != "g2a":
        raise CvmError("aerial_seg_dir applies to direction g2a (an aerial segmentation target); a2g's targets are "
                       "panoramas, whose maps are the split file's third column")
    rel = cvusa_split_file(split, split_file, direction, segmaps, aerial_seg_dir)
    root = sources.require_root("cvusa", root)
    csv_path = os.path.join(root, rel)
    if not os.path.isfile(csv_path):
        if split_file is not None:
            raise sources.missing_file_error("cvusa", csv_path, "split file",
                                             f"is the list --split_file names ({split_file})")
        if segmaps and direction == "g2a" and aerial_seg_dir is None:
            raise _missing_xfork_list(csv_path, split)
        raise sources.missing_file_error("cvusa", csv_path, "split file", "comes with the CVPR_subset archive "
                                         "(splits.tar.gz) that the CVUSA authors send on request")
    seg_dir = None
    if segmaps and aerial_seg_dir is not None:
        seg_dir = os.path.join(root, aerial_seg_dir)
        if not os.path.isdir(seg_dir):
            raise CvmError(f"--aerial_seg_dir {aerial_seg_dir}: no such folder ({os.path.abspath(seg_dir)}); it should "
                           "hold one <aerial stem>.png segmentation map per aerial of the split")
    needs_third = segmaps and seg_dir is None
    fields = ("aerial", "ground", "segmentation map") if needs_third else ("aerial", "ground")
    rows = sources.read_split_rows("cvusa", csv_path, fields, "restore the file or fix the row")
    samples = []
    for _, row in rows:
        aerial = os.path.join(root, row[0])
        ground = os.path.join(root, row[1])
        stem = os.path.splitext(os.path.basename(row[0]))[0]
        seg = None
        if segmaps:
            seg = os.path.join(seg_dir, f"{stem}.png") if seg_dir is not None else os.path.join(root, row[2])
        inp, tgt = (aerial, ground) if direction == "a2g" else (ground, aerial)
        samples.append(SynthesisSample(id=stem, input_path=inp, target_path=tgt, target_seg_path=seg,
                                       out_name=os.path.basename(row[0])))
    return SynthesisSplit("cvusa", split, root, direction, samples, sources.source("cvusa").origin)


def load_synthetic_synthesis(split: str, direction: str = "g2a", pairs: int = 1000, seed: int = 0,
                             val_fraction: float = 0.2, ground_size: Optional[tuple] = None,
                             aerial_size: Optional[int] = None, segmaps: bool = True,
                             **render_options) -> SynthesisSplit:
    """The synthetic world rendered on the fly: panorama, aerial and their colour segmentation maps.

    Ids, locations and maps agree with the CVUSA folder `cvm data synth --pairs N --seed S` writes
    (pair "0000001" is bingmap/19/0000001.jpg there); out_name is "<id>.jpg" like its aerial file.
    Without ground_size / aerial_size the views are rendered at the sizes the pipeline scales to
    (an aerial tile of another size covers the same ground, AERIAL_EXTENT_M by default).
    """
    from cvm.data.synthetic import make_synthetic_split
    from cvm.data.synthetic.dataset import colour_segmap
    from cvm.data.synthetic.render import render_aerial, render_panorama

    direction = _check_direction(direction)
    if split == "test":
        split = "val"
    fixed_ground = None if ground_size is None else tuple(int(v) for v in ground_size)
    fixed_aerial = None if aerial_size is None else int(aerial_size)
    world_split = make_synthetic_split(split, pairs=pairs, seed=seed, val_fraction=val_fraction,
                                       ground_size=fixed_ground or (128, 512), aerial_size=fixed_aerial or 256,
                                       **render_options)
    position = {p.id: i for i, p in enumerate(world_split.pairs)}
    coverage_m = world_split.aerial_mpp * world_split.aerial_size

    def render(sample: SynthesisSample, sizes: Optional[dict] = None) -> tuple:
        i = position[sample.id]
        sizes = sizes or {}
        g_size = fixed_ground or tuple(sizes.get("ground") or world_split.ground_size)
        a_size = fixed_aerial or max(sizes.get("aerial") or (world_split.aerial_size,))
        xy = world_split.pairs[i].location
        ground, ground_classes = render_panorama(
            world_split.world, xy, height_px=g_size[0], width_px=g_size[1], camera_height_m=world_split.camera_height_m,
            fov_deg=world_split.fov_deg, vfov_deg=world_split.vfov_deg, max_range_m=world_split.max_range_m,
            with_classes=True)
        aerial, aerial_classes = render_aerial(world_split.world, xy, size_px=int(a_size),
                                               metres_per_pixel=coverage_m / int(a_size), with_classes=True)
        ground_seg, aerial_seg = colour_segmap(ground_classes), colour_segmap(aerial_classes)
        if direction == "a2g":
            return aerial, ground, (ground_seg if sample.target_seg_path else None)
        return ground, aerial, (aerial_seg if sample.target_seg_path else None)

    samples = []
    for p in world_split.pairs:
        inp, tgt = (p.aerial_path, p.ground_path) if direction == "a2g" else (p.ground_path, p.aerial_path)
        seg = f"{tgt}_segmap" if segmaps else None
        samples.append(SynthesisSample(id=p.id, input_path=inp, target_path=tgt, target_seg_path=seg,
                                       out_name=f"{p.id}.jpg"))
    return SynthesisSplit("synthetic", split, None, direction, samples, world_split.source, renderer=render)


# ---------------------------------------------------------------------------------------------------
# Pipeline


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


class SynthesisPipeline(EpochPipeline):
    """tf.data train / eval datasets of a synthesis split (the shared engine: `cvm.data.batching`).

    Args:
      split: a SynthesisSplit (`load_synthesis_split`).
      spec: sizes and preprocessing (`SYNTHESIS_PRESETS`).
      seed: seed of the epoch orders and the crop / flip draws.
      faults / faults_path: where skipped samples are reported (a FaultReport, or a file for a new one).
      num_parallel_calls: loading threads (default: the usable cores, as the retrieval pipeline).

    Example:
      split = load_synthesis_split("synthetic", "train", direction="g2a", synthetic_pairs=20)
      for images, meta in SynthesisPipeline(split, SYNTHESIS_PRESETS["pano2aerial_small"]).train(4, epochs=1):
          ...
    """

    def __init__(self, split: SynthesisSplit, spec: SynthesisSpec, seed: int = 0, faults: Optional[FaultReport] = None,
                 faults_path: Optional[str] = None, num_parallel_calls: Optional[int] = None):
        if len(split) == 0:
            raise CvmError(f"{split.dataset} split {split.name!r} has no samples (root: {split.root})")
        super().__init__(seed, num_parallel_calls)
        if faults is None:
            from cvm.data.pipeline import FaultReport

            faults = FaultReport(faults_path)
        self.split = split
        self.spec = spec
        self.faults = faults
        self.loader = SynthesisLoader(split, spec, seed, faults)
        self._names = None

    def sample_files(self, index: int) -> tuple:
        """The files sample `index` is read from (cvm.data.pipeline.require_usable)."""
        sample = self.split[int(index)]
        return tuple(p for p in (sample.input_path, sample.target_path, sample.target_seg_path) if p)

    def sample_spec(self) -> dict:
        return {"input": (self.loader.input_shape, np.float32), "target": (self.loader.target_shape, np.float32),
                "target_seg": (self.loader.target_shape, np.float32)}

    def load_sample(self, index: int, epoch: int, train: bool) -> Optional[dict]:
        x, y, s, ok = self.loader.load(index, epoch, train)
        return {"input": x, "target": y, "target_seg": s} if ok else None

    def finish_batch(self, batch: dict):
        import tensorflow as tf

        if self._names is None:
            with tf.init_scope():  # an eager tensor that every traced map captures
                self._names = tf.constant(self.split.out_names, tf.string)
        images = {"input": batch["input"], "target": batch["target"], "target_seg": batch["target_seg"]}
        return images, {"index": batch["index"], "out_name": tf.gather(self._names, batch["index"])}

