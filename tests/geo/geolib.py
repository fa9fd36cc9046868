"""Helpers of the geo tests: small GeoTIFFs and random images."""

import numpy as np

CRS = "EPSG:32755"
ORIGIN = (690000.0, 6090400.0)  # west, north edge


def write_tif(path, rgb, origin=ORIGIN, res=1.0, crs=CRS, nodata=None):
    """RGB uint8 [H, W, 3] as a north-up GeoTIFF with pixel size res metres."""
    import rasterio
    from rasterio.transform import from_origin

    profile = dict(driver="GTiff", width=rgb.shape[1], height=rgb.shape[0], count=3, dtype="uint8",
                   transform=from_origin(origin[0], origin[1], res, res))
    if crs is not None:
        profile["crs"] = crs
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.moveaxis(rgb, -1, 0))
    return str(path)


def rng_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


