"""`SyntheticSplit`: an in-memory split of the synthetic world, rendered on the fly."""

from __future__ import annotations

import threading
from typing import Optional

import numpy as np

from cvm.data.records import Pair, Split
from cvm.data.synthetic.render import render_aerial, render_panorama
from cvm.data.synthetic.world import World, world_size_for
from cvm.errors import CvmError

# Ground extent of a CVUSA aerial (750 px at ~0.23 m/px); synthetic aerials cover the same by default.
AERIAL_EXTENT_M = 172.5

# Colour of each class in the segmentation maps (RGB), one fixed colour per entry of world.CLASSES:
# the Cityscapes palette colours of terrain, road, building, vegetation and sky (Regmi & Borji's
# Dayton maps came from a Cityscapes-trained RefineNet, so the synthetic maps look alike).
SEG_COLOURS_RGB = ((152, 251, 152), (128, 64, 128), (70, 70, 70), (107, 142, 35), (70, 130, 180))
SEG_COLOURS_BGR = np.array([c[::-1] for c in SEG_COLOURS_RGB], np.uint8)


def colour_segmap(classes: np.ndarray) -> np.ndarray:
    """[H, W] class ids (world.CLASSES) -> [H, W, 3] BGR uint8 colour segmentation map (SEG_COLOURS_RGB)."""
    classes = np.asarray(classes)
    if classes.size and int(classes.max()) >= len(SEG_COLOURS_BGR):
        raise ValueError(f"class id {int(classes.max())} has no segmentation colour")
    return SEG_COLOURS_BGR[classes]

_WORLDS: dict = {}
_WORLDS_LOCK = threading.Lock()


def shared_world(seed: int, size_m: float) -> World:
    """World.generate(seed, size_m), built once per process (train and val splits share it)."""
    key = (int(seed), float(size_m))
    with _WORLDS_LOCK:
        world = _WORLDS.get(key)
        if world is None:
            if len(_WORLDS) >= 2:  # keep memory bounded: worlds are up to a few hundred MB
                _WORLDS.pop(next(iter(_WORLDS)))
            world = _WORLDS[key] = World.generate(*key)
        return world


def split_counts(pairs: int, val_fraction: float) -> tuple:
    """(train, val) counts: train = round(pairs (1 - val_fraction)), each at least 1."""
    pairs = int(pairs)
    if pairs < 2:
        raise CvmError(f"a synthetic dataset needs at least 2 pairs (1 train, 1 val), got {pairs}")
    if not 0.0 < val_fraction < 1.0:
        raise CvmError(f"val_fraction must be in (0, 1), got {val_fraction}")
    train = int(np.clip(round(pairs * (1.0 - val_fraction)), 1, pairs - 1))
    return train, pairs - train


class SyntheticSplit(Split):
    """A split whose images are rendered from the synthetic world when read (BGR uint8)."""

    def __init__(self, name: str, pairs, world_seed: int, world_size_m: float, ground_size=(128, 512),
                 aerial_size: int = 256, aerial_mpp: Optional[float] = None, fov_deg: float = 360.0,
                 vfov_deg: Optional[float] = None, camera_height_m: float = 2.0, max_range_m: float = 150.0):
        super().__init__("synthetic", name, None, pairs, location_kind="metres",
                         source="embedded synthetic world (cvm.data.synthetic)")
        self.world_seed = int(world_seed)
        self.world_size_m = float(world_size_m)
        self.ground_size = (int(ground_size[0]), int(ground_size[1]))
        self.aerial_size = int(aerial_size)
        self.aerial_mpp = float(AERIAL_EXTENT_M / aerial_size if aerial_mpp is None else aerial_mpp)
        self.fov_deg = float(fov_deg)
        self.vfov_deg = vfov_deg
        self.camera_height_m = float(camera_height_m)
        self.max_range_m = float(max_range_m)

    @property
    def world(self) -> World:
        return shared_world(self.world_seed, self.world_size_m)

    def read_ground(self, i: int) -> np.ndarray:
        return render_panorama(self.world, self.pairs[i].location, height_px=self.ground_size[0],
                               width_px=self.ground_size[1], camera_height_m=self.camera_height_m,
                               fov_deg=self.fov_deg, vfov_deg=self.vfov_deg, max_range_m=self.max_range_m)

    def read_aerial(self, i: int) -> np.ndarray:
        return render_aerial(self.world, self.pairs[i].location, size_px=self.aerial_size,
                             metres_per_pixel=self.aerial_mpp)


def make_synthetic_split(name: str, pairs: int = 1000, seed: int = 0, val_fraction: float = 0.2,
                         ground_size=(128, 512), aerial_size: int = 256, aerial_mpp: Optional[float] = None,
                         fov_deg: float = 360.0, vfov_deg: Optional[float] = None, camera_height_m: float = 2.0,
                         max_range_m: float = 150.0) -> SyntheticSplit:
    """Train or val split of `pairs` locations in the world of `seed` (val = the last fraction).

    Pair ids are 1-based and 7-digit like the CVUSA files write_dataset writes for the same seed and
    pair count, and the locations match: pair "0000001" is bingmap/19/0000001.jpg there.
    aerial_mpp defaults to AERIAL_EXTENT_M / aerial_size (CVUSA's ground coverage).
    """
    if name not in ("train", "val"):
        raise CvmError(f"synthetic split name must be 'train' or 'val', got {name!r}")
    n_train, _ = split_counts(pairs, val_fraction)
    size = world_size_for(pairs)
    world = shared_world(seed, size)
    locations = world.sample_locations(int(pairs), seed=seed)
    indices = range(0, n_train) if name == "train" else range(n_train, int(pairs))
    records = [Pair(ground_path=f"synthetic://{seed}/{i + 1}/ground", aerial_path=f"synthetic://{seed}/{i + 1}/aerial",
                    id=f"{i + 1:07d}", location=(float(locations[i, 0]), float(locations[i, 1])))
               for i in indices]
    return SyntheticSplit(name, records, seed, size, ground_size=ground_size, aerial_size=aerial_size,
                          aerial_mpp=aerial_mpp, fov_deg=fov_deg, vfov_deg=vfov_deg, camera_height_m=camera_height_m,
                          max_range_m=max_range_m)
