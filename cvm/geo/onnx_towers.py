"""Towers from an ONNX export (`cvm export --format onnx`), run by cvm.export.onnx.OnnxTower (ONNX Runtime).

The fingerprint is of the two graphs' initializers (the converter may fold or transpose weights, so it
differs from the Keras / SavedModel fingerprint of the same run): a gallery built from the ONNX export is
queried with that export.
"""

from __future__ import annotations

import os

import numpy as np

from cvm.geo.towers import Towers, _preprocessing, exported_correlation, fingerprint_of, weights_digest


class OnnxTowers(Towers):
    def __init__(self, path: str):
        import onnx
        from onnx import numpy_helper

        from cvm.export.onnx import OnnxTower

        folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
        self.path = folder
        self.ground, self.aerial = OnnxTower(folder, "ground"), OnnxTower(folder, "aerial")
        info = self.aerial.info
        self.input_order = info.get("input_order", "rgb")
        self.ground_size = tuple(self.ground.input_size)
        self.cell_px = tuple(self.aerial.input_size)  # polar towers take the square source aerial
        self.fov_deg = info.get("fov_deg")
        self.correlation = exported_correlation(info, folder)
        layout = info["aerial"]
        aerial_size = layout.get("polar_size") or layout["input_size"]
        self.preprocessing = dict(_preprocessing(self.ground_size, aerial_size, info.get("mean"),
                                                 info["ground"].get("rows"), bool(layout.get("polar")),
                                                 layout.get("interpolation", "area")),
                                  format="onnx")
        arrays = []
        for tower in (self.ground, self.aerial):
            arrays += [numpy_helper.to_array(t) for t in onnx.load(tower.path).graph.initializer]
        self.fingerprint = fingerprint_of(weights_digest(arrays), self.preprocessing)
        self.description = f"onnx {folder} ({info.get('method', '?')}, {info.get('checkpoint', '?')})"

    def _order(self, images):
        images = np.asarray(images, np.uint8)
        return images[..., ::-1] if self.input_order == "bgr" else images

    def embed_aerial(self, images):
        return self.aerial.embed(self._order(images))

    def embed_ground(self, images):
        return self.ground.embed(self._order(images))
