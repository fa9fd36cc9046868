"""Write a PNG of a few pairs exactly as the training pipeline feeds them (after preprocessing and
augmentation), to check a dataset folder or a preset before a long run.

  python tools/preview_pairs.py --dataset cvusa --root /data/CVPR_subset --preset cvm_net --augment cvm_net --out preview.png
  python tools/preview_pairs.py --out preview.png            # the synthetic world, small sizes

Each row: the ground image, then the aerial image (polar maps are shown as they are).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--root", default=None)
    parser.add_argument("--split", default="train")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--augment", default="none", choices=["none", "cvm_net", "joint"])
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=int, default=128, help="row height of the preview in pixels")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from cvm.data import augment, images, load_split
    from cvm.data.pipeline import Pipeline

    spec = images.preset(args.preset)
    split = load_split(args.dataset, args.split, args.root, image_spec=spec, synthetic_pairs=max(20, 4 * args.pairs))
    recipe = {"none": None, "cvm_net": augment.CVM_NET, "joint": augment.JOINT}[args.augment]
    pipe = Pipeline(split, spec, recipe, seed=args.seed)
    features, meta = next(iter(pipe.train(batch_size=min(args.pairs, len(split)), epochs=1)))
    rows = []
    for ground, aerial in zip(features["ground"].numpy(), features["aerial"].numpy()):
        tiles = []
        for image in (ground, aerial):
            pixels = images.denormalise(image, spec)
            width = int(round(pixels.shape[1] * args.height / pixels.shape[0]))
            tiles.append(cv2.resize(pixels, (width, args.height), interpolation=cv2.INTER_AREA))
            tiles.append(np.full((args.height, 8, 3), 255, np.uint8))
        rows.append(np.concatenate(tiles, axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 8), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    cv2.imwrite(args.out, np.concatenate(rows, axis=0))
    print(f"wrote {len(rows)} {split.dataset} {split.name} pairs (indices {meta['index'].numpy().tolist()}) "
          f"to {args.out}")


if __name__ == "__main__":
    main()
