"""cvm locate: where was this photo taken? Top-k gallery locations for each image.

  cvm locate photo.jpg --gallery galleries/town [--k 10] [--fov_deg 90] [--json] [--out results/]

Prints, per image, the ranked hits with latitude / longitude, score (cosine similarity) and the distance of
each hit from the top one (hits that agree lie close together). A correlation gallery (--method dsm) adds
each hit's heading: where the photo's centre looks, in degrees clockwise from north (JSON "heading_deg",
null for other methods). --out DIR writes DIR/<image>.png (the gallery mosaic around the hits with ranked
markers and heading arrows, under the query) and DIR/<image>.html (the same as a self-contained page that
works offline). The model defaults to the SavedModel the gallery was built from; --model_dir / --saved_model /
--onnx_model give another copy of it (a different model is refused).
"""

from __future__ import annotations

import json
import os

from absl import flags

from cvm.cli import common, geo_common

flags.DEFINE_string("gallery", None, "A gallery folder written by `cvm gallery build`.")
geo_common.define_model_flags(__name__)
flags.DEFINE_integer("k", 10, "Number of hits per image.", lower_bound=1)
flags.DEFINE_float("fov_deg", None, "Horizontal field of view of the photos in degrees (checked against the "
                                    "model's; default: the model's).", lower_bound=0.0, upper_bound=360.0)
flags.DEFINE_boolean("json", False, "Print the hits as JSON.")
flags.DEFINE_string("out", None, "Folder for <image>.png and <image>.html (the mosaic with the hits).")

FLAGS = flags.FLAGS


def check_flags(fv, argv) -> None:
    from cvm.flags import use as flag_use

    flag_use.check_verb(fv, geo_common.model_unused(fv), [__name__], "cvm locate")


def main(argv) -> int:
    from cvm.errors import CvmError

    images = argv[1:]
    if not images:
        raise CvmError("give one or more images: cvm locate IMAGE... --gallery DIR")
    if not FLAGS.gallery:
        raise CvmError("--gallery is required: a folder written by `cvm gallery build`")
    from cvm.geo.localizer import Localizer, read_rgb, spread_m

    queries = [read_rgb(p) for p in images]
    localizer = Localizer(FLAGS.gallery, geo_common.towers_from_flags(FLAGS, required=False))
    results = localizer.locate_many(queries, k=FLAGS.k, fov_deg=FLAGS.fov_deg)
    if FLAGS.out:
        from cvm.geo import render

        os.makedirs(FLAGS.out, exist_ok=True)
    report = []
    for path, query, hits in zip(images, queries, results):
        entry = {"image": path, "spread_top5_m": spread_m(hits), "hits": [h.to_dict() for h in hits]}
        if FLAGS.out:
            stem = os.path.splitext(os.path.basename(path))[0]
            png, page = os.path.join(FLAGS.out, f"{stem}.png"), os.path.join(FLAGS.out, f"{stem}.html")
            render.render(localizer, query, hits, os.path.basename(path), png=png, html_path=page)
            entry.update(png=png, html=page)
        report.append(entry)
    if FLAGS.json:
        print(json.dumps(report, indent=1))
        return 0
    for entry in report:
        top = entry["hits"][0]
        facing = "" if top["heading_deg"] is None else f", facing {top['heading_deg']:.1f} deg"
        print(f"{entry['image']}: {top['lat']:.6f}, {top['lon']:.6f} (score {top['score']:.3f}{facing}); top-5 "
              f"within {entry['spread_top5_m']:.0f} m of the first")
        for h in entry["hits"]:
            heading = "" if h["heading_deg"] is None else f"  heading {h['heading_deg']:5.1f} deg"
            print(f"  {h['rank']:>3}  {h['lat']:11.6f} {h['lon']:11.6f}  score {h['score']:.4f}  "
                  f"{h['distance_to_top1_m']:8.1f} m{heading}  {h['name']}")
        if FLAGS.out:
            print(f"  wrote {entry['png']} and {entry['html']}")
    return 0


def run(argv) -> None:
    common.run_app("cvm locate", argv, main, __doc__, [__name__], check=check_flags)
