"""The embedded synthetic cross-view world: procedural city, renderers, in-memory splits and writers.

The default dataset for demos and tests: `make_synthetic_split("train")` renders pairs on the fly,
`write_dataset(out_dir, "cvusa" | "cvact", pairs, seed)` writes folders the real loaders read.
"""

from cvm.data.synthetic.dataset import SyntheticSplit, make_synthetic_split
from cvm.data.synthetic.render import render_aerial, render_panorama
from cvm.data.synthetic.world import CLASSES, World, world_size_for
from cvm.data.synthetic.write import write_dataset

__all__ = ["CLASSES", "SyntheticSplit", "World", "make_synthetic_split", "render_aerial", "render_panorama",
           "world_size_for", "write_dataset"]
