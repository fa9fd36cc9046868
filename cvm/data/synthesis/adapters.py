"""Synthesis adapters: a dataset folder (or the synthetic world) -> `SynthesisSplit` in one direction.

CVUSA reads its split lists through `cvm.data.cvusa` (the retrieval adapter's reader), Dayton its
4-panel files through `cvm.data.dayton`, UCF-OP / CVACT their retrieval pairs (no segmentation maps).
"""

from __future__ import annotations

import os
from typing import Optional

from cvm.data import cvusa, registry, sources
from cvm.data.synthesis.records import SynthesisSample, SynthesisSplit, check_direction
from cvm.errors import CvmError

# The datasets with synthesis data (cvm.data.registry holds every dataset).
DATASETS = registry.names("synthesis")
# Retrieval datasets without released segmentation maps: their target_seg is all zeros.
WITHOUT_SEGMAPS = ("ucfop", "cvact")


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
    direction = check_direction(direction)
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

    direction = check_direction(direction)
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

    direction = check_direction(direction)
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



def cvusa_split_file(split: str, split_file: Optional[str] = None, direction: str = "g2a", segmaps: bool = True,
                     aerial_seg_dir: Optional[str] = None) -> str:
    """The file (relative to the CVUSA root, or absolute) a CVUSA synthesis split reads its rows from.

    split_file given: that file, "{split}" replaced by "train" or "val". Otherwise g2a with maps from a
    list (no aerial_seg_dir): splits/train_xfork_cvusa.txt / val_xfork_cvusa.txt (XFORK_SPLIT_FILES);
    anything else: the official splits/train-19zl.csv / val-19zl.csv.
    """
    return cvusa.split_list_path(split, split_file, _reads_xfork_list(direction, segmaps, aerial_seg_dir))


def _reads_xfork_list(direction: str, segmaps: bool, aerial_seg_dir: Optional[str]) -> bool:
    """Aerial targets with maps and no folder of them: the maps are column 3 of Regmi's X-Fork list."""
    return bool(segmaps and direction == "g2a" and aerial_seg_dir is None)


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
    direction = check_direction(direction)
    if aerial_seg_dir is not None and direction != "g2a":
        raise CvmError("aerial_seg_dir applies to direction g2a (an aerial segmentation target); a2g's targets are "
                       "panoramas, whose maps are the split file's third column")
    seg_in_list = segmaps and aerial_seg_dir is None
    fields = ("aerial", "ground", "segmentation map") if seg_in_list else ("aerial", "ground")
    root, rows = cvusa.read_split_list(root, split, fields, split_file,
                                       xfork=_reads_xfork_list(direction, segmaps, aerial_seg_dir))
    seg_dir = None
    if segmaps and aerial_seg_dir is not None:
        seg_dir = os.path.join(root, aerial_seg_dir)
        if not os.path.isdir(seg_dir):
            raise CvmError(f"--aerial_seg_dir {aerial_seg_dir}: no such folder ({os.path.abspath(seg_dir)}); it should "
                           "hold one <aerial stem>.png segmentation map per aerial of the split")
    samples = []
    for row in rows:
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

    direction = check_direction(direction)
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

