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

The modules, in the order the data flows:
  presets.py    SynthesisSpec (sizes, crop, flip, edge channel, homography) and SYNTHESIS_PRESETS
  records.py    SynthesisSample / SynthesisSplit: what an adapter returns
  adapters.py   load_synthesis_split: CVUSA (through cvm.data.cvusa's list reader), Dayton, UCF-OP /
                CVACT pairs, the synthetic world; DATASETS
  image_ops.py  torch_scale (Torch image.scale), the [-1, 1] BGR range, Canny edges, the homography warp
  loader.py     SynthesisLoader: one sample read and prepared (the body of the tf.data map)
  pipeline.py   SynthesisPipeline: tf.data train / eval datasets (cvm.data.batching.EpochPipeline)
This package re-exports their public names: `from cvm.data.synthesis import SynthesisPipeline`.
"""

from __future__ import annotations

from cvm.data.cvusa import SPLIT_PLACEHOLDER, XFORK_SPLIT_FILES
from cvm.data.synthesis.adapters import (DATASETS, WITHOUT_SEGMAPS, cvusa_split_file, load_cvusa_synthesis,
                                         load_dayton_synthesis, load_pairs_synthesis, load_synthesis_split,
                                         load_synthetic_synthesis)
from cvm.data.synthesis.image_ops import (CANNY_HIGH, CANNY_LOW, edge_map, homography_matrix, to_uint8_bgr,
                                          to_unit_range, torch_scale, warp_homography)
from cvm.data.synthesis.loader import SynthesisLoader
from cvm.data.synthesis.pipeline import SynthesisPipeline
from cvm.data.synthesis.presets import (CVIU_HOMOGRAPHY, CVIU_HOMOGRAPHY_FLAG, SYNTHESIS_PRESETS, SynthesisSpec,
                                        parse_homography, synthesis_preset)
from cvm.data.synthesis.records import DIRECTIONS, SynthesisSample, SynthesisSplit, check_direction

__all__ = ["CANNY_HIGH", "CANNY_LOW", "CVIU_HOMOGRAPHY", "CVIU_HOMOGRAPHY_FLAG", "DATASETS", "DIRECTIONS",
           "SPLIT_PLACEHOLDER", "SYNTHESIS_PRESETS", "SynthesisLoader", "SynthesisPipeline", "SynthesisSample",
           "SynthesisSpec", "SynthesisSplit", "WITHOUT_SEGMAPS", "XFORK_SPLIT_FILES", "check_direction",
           "cvusa_split_file", "edge_map", "homography_matrix", "load_cvusa_synthesis", "load_dayton_synthesis",
           "load_pairs_synthesis", "load_synthesis_split", "load_synthetic_synthesis", "parse_homography",
           "synthesis_preset", "to_uint8_bgr", "to_unit_range", "torch_scale", "warp_homography"]
