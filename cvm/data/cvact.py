"""CVACT adapter: ACT_data.mat + image folders -> `Split` of (panorama, aerial) pairs with UTM locations.

ACT_data.mat holds `panoIds` (N ids), `utm` (N x 2 easting, northing in metres) and 1-based index
lists: trainSet.trainInd (train), valSet.valInd (CVACT_val, "val") and valSetAll.valInd (the large
CVACT_test set, "test"). Two folder layouts exist:

- "distributed" (ANU_data_small / ANU_data_test as downloaded): streetview/{id}_grdView.jpg
  (832 x 1664 full equirectangular panorama; the pipeline keeps the central half of the rows) and
  satview_polish/{id}_satView_polish.jpg (1200 x 1200).
- "preprocessed" (output of the SAFA/CVFT data_preparation scripts): streetview/{id}_grdView.png
  (already cropped, 112 x 616), satview_polish/{id}_satView_polish.png and/or
  polarmap/{id}_satView_polish.png (SAFA polar transform, 112 x 616).
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from cvm.data import sources
from cvm.data.records import Pair, Split
from cvm.errors import CvmError

# Split name -> (struct, field) of ACT_data.mat holding its 1-based indices.
SPLIT_FIELDS = {"train": ("trainSet", "trainInd"), "val": ("valSet", "valInd"), "test": ("valSetAll", "valInd")}
SPLITS = ("train", "val", "test")
LAYOUTS = ("auto", "distributed", "preprocessed")
AERIAL_KINDS = ("satview", "polar")

# Rows 208..623 of the 832-row distributed panorama: the band the preprocessed layout keeps.
DISTRIBUTED_GROUND_ROWS = (0.25, 0.75)
# How many ids of the split auto-detection probes before giving up (stat calls only).
_DETECT_PROBES = 100

_MAT_ORIGIN = (
    "is distributed inside the CVFT, SAFA and DSM repositories under "
    "OriNet_CVACT/CVACT_orientations/ACT_data.mat; copy it into the dataset root or pass its path as mat_path"
)


def ground_path(root: str, pano_id: str, layout: str) -> str:
    ext = "jpg" if layout == "distributed" else "png"
    return os.path.join(root, "streetview", f"{pano_id}_grdView.{ext}")


def aerial_path(root: str, pano_id: str, layout: str, aerial: str) -> str:
    if aerial == "polar":
        return os.path.join(root, "polarmap", f"{pano_id}_satView_polish.png")
    ext = "jpg" if layout == "distributed" else "png"
    return os.path.join(root, "satview_polish", f"{pano_id}_satView_polish.{ext}")


def load_cvact(
    root: str,
    split: str,
    layout: str = "auto",
    aerial: str = "satview",
    mat_path: Optional[str] = None,
) -> Split:
    """The pairs of a CVACT split, in ACT_data.mat index order.

    Args:
      root: folder holding streetview/ and satview_polish/ (and/or polarmap/): ANU_data_small for
        train/val, ANU_data_test for test, or a folder holding both.
      split: "train" (trainSet.trainInd), "val" (valSet.valInd, CVACT_val) or "test"
        (valSetAll.valInd, CVACT_test).
      layout: "distributed", "preprocessed", or "auto": the layout in which a ground image of one
        of the split's first ids exists (the .jpg of the distributed layout wins if both exist).
      aerial: "satview" (satview_polish/) or "polar" (polarmap/, preprocessed layout only).
      mat_path: ACT_data.mat; default `root/ACT_data.mat`.

    Returns:
      Split(dataset="cvact", location_kind="utm", ground_rows=(0.25, 0.75) for the distributed
      layout and None for the preprocessed one) whose pairs carry absolute paths, id = panoId and
      location = (easting, northing). Extra attributes `layout` (the resolved layout) and
      `aerial_kind` tell `cvm data check` which image sizes to expect. Pairs are listed even if
      their files are missing.

    Raises:
      CvmError: unknown split/layout/aerial value, missing root or ACT_data.mat, unreadable or
        inconsistent ACT_data.mat, or layout="auto" finding none of the split's first panoramas.
    """
    if split not in SPLIT_FIELDS:
        raise CvmError(f"Unknown CVACT split {split!r}; valid splits: {', '.join(map(repr, SPLITS))}.")
    if layout not in LAYOUTS:
        raise CvmError(f"Unknown CVACT layout {layout!r}; valid layouts: {', '.join(map(repr, LAYOUTS))}.")
    if aerial not in AERIAL_KINDS:
        raise CvmError(f"Unknown CVACT aerial kind {aerial!r}; valid kinds: {', '.join(map(repr, AERIAL_KINDS))}.")
    root = sources.require_root("cvact", root)
    mat_path = os.path.abspath(os.path.expanduser(mat_path)) if mat_path else os.path.join(root, "ACT_data.mat")
    if not os.path.isfile(mat_path):
        raise sources.missing_file_error("cvact", mat_path, "meta file ACT_data.mat", _MAT_ORIGIN)

    pano_ids, utm, indices = _read_meta(mat_path, split)
    ids = [pano_ids[i] for i in indices]
    if layout == "auto":
        layout = _detect_layout(root, ids, split)
    if aerial == "polar" and layout != "preprocessed":
        raise CvmError(
            f"CVACT aerial='polar' needs the preprocessed layout (polarmap/{{id}}_satView_polish.png "
            f"made by the SAFA data_preparation script), but {root} is in the {layout} layout; use "
            f"aerial='satview' or point the root at the preprocessed folder."
        )

    pairs = [
        Pair(
            ground_path=ground_path(root, pano_ids[i], layout),
            aerial_path=aerial_path(root, pano_ids[i], layout, aerial),
            id=pano_ids[i],
            location=(float(utm[i, 0]), float(utm[i, 1])),
        )
        for i in indices
    ]
    result = Split(
        dataset="cvact",
        name=split,
        root=root,
        pairs=pairs,
        location_kind="utm",
        ground_rows=DISTRIBUTED_GROUND_ROWS if layout == "distributed" else None,
        source=sources.source("cvact").origin,
    )
    result.layout = layout
    result.aerial_kind = aerial
    return result


def _read_meta(mat_path: str, split: str):
    """(panoIds list, utm [N, 2] float64, 0-based indices of `split`) from ACT_data.mat."""
    import scipy.io  # deferred: only CVACT needs scipy

    restore = "use the original ACT_data.mat from OriNet_CVACT/CVACT_orientations/ of the CVFT/SAFA/DSM repositories"
    try:
        mat = scipy.io.loadmat(mat_path)
    except Exception as e:  # scipy raises ValueError/TypeError/MatReadError etc. for non-mat content
        raise CvmError(f"Cannot read CVACT meta file {mat_path} as a MATLAB .mat file ({e}); {restore}.") from None

    def bad(field: str, what: str) -> CvmError:
        return CvmError(f"CVACT meta file {mat_path}: {what} in field '{field}'; {restore}.")

    for key in ("panoIds", "utm"):
        if key not in mat:
            raise bad(key, "missing")
    pano_ids = _strings(mat["panoIds"])
    if pano_ids is None:
        raise bad("panoIds", f"expected a cell array or char matrix of ids, got {mat['panoIds'].dtype} data")
    n = len(pano_ids)

    utm = np.asarray(mat["utm"])
    if utm.dtype.kind not in "iuf":
        raise bad("utm", f"expected numbers, got {utm.dtype} data")
    if utm.shape == (2, n) and n != 2:
        utm = utm.T
    if utm.shape != (n, 2):
        raise bad("utm", f"expected shape ({n}, 2) to match {n} panoIds, got {utm.shape}")
    utm = utm.astype(np.float64)

    struct, field = SPLIT_FIELDS[split]
    name = f"{struct}.{field}"
    if struct not in mat:
        raise bad(struct, "missing")
    try:
        raw = mat[struct][field][0][0]
    except (ValueError, IndexError, KeyError, TypeError):
        raise bad(name, "missing") from None
    raw = np.asarray(raw).ravel()
    if raw.dtype.kind not in "iuf":
        raise bad(name, f"expected 1-based indices, got {raw.dtype} data")
    if raw.size == 0:
        raise bad(name, "no indices")
    if raw.dtype.kind == "f" and not np.all(raw == np.round(raw)):
        raise bad(name, "non-integer indices")
    indices = raw.astype(np.int64) - 1
    outside = (indices < 0) | (indices >= n)
    if outside.any():
        first = int(raw[np.argmax(outside)])
        raise bad(
            name,
            f"{int(outside.sum())} indices outside 1..{n} (the number of panoIds), first {first}",
        )
    return pano_ids, utm, indices.tolist()


def _strings(array) -> Optional[list]:
    """Stripped strings of a loadmat cell array (object array of 1-element arrays) or char matrix."""
    array = np.asarray(array)
    if array.dtype.kind in "US":
        # A char matrix loads as one string per row, padded with spaces to the longest id.
        return [_decode(item).strip() for item in array.ravel()]
    if array.dtype.kind == "O":
        out = []
        for item in array.ravel():
            if isinstance(item, (str, bytes)):
                out.append(_decode(item).strip())
                continue
            item = np.asarray(item)
            if item.dtype.kind not in "US":
                return None
            out.append("".join(_decode(c) for c in item.ravel()).strip())
        return out
    return None


def _decode(item) -> str:
    return item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)


def _detect_layout(root: str, ids: list, split: str) -> str:
    probes = ids[:_DETECT_PROBES]
    for pano_id in probes:
        if os.path.isfile(ground_path(root, pano_id, "distributed")):
            return "distributed"
        if os.path.isfile(ground_path(root, pano_id, "preprocessed")):
            return "preprocessed"
    example = probes[0] if probes else "<id>"
    raise CvmError(
        f"Cannot tell the CVACT folder layout of {root}: none of the first {len(probes)} '{split}' "
        f"panoramas exists, neither as {ground_path(root, example, 'distributed')} (layout as "
        f"distributed) nor as {ground_path(root, example, 'preprocessed')} (SAFA/CVFT preprocessed). "
        f"Point the root at the folder holding streetview/ (ANU_data_small for train/val, "
        f"ANU_data_test for test), or force layout='distributed' or 'preprocessed' to list the split anyway."
    )
