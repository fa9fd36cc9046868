r"""cvm gallery build: embed geo-referenced aerial imagery into a searchable gallery (shards + FAISS index).

  cvm gallery build --gallery galleries/town --saved_model exported/town \
      --geotiff town/orthophoto.tif --cell_m 172.5 --stride_m 20
  cvm gallery build --gallery galleries/val --model_dir runs/quickstart --dataset synthetic --split val
  cvm gallery build --gallery galleries/tiles --saved_model exported/m --tiles tiles/ --zoom 18 --cell_m 150

Sources (one): a dataset split's aerials at their coordinates (--dataset, --split, --root), GeoTIFF
orthophotos cut into cells of --cell_m metres every --stride_m (--geotiff FILE|DIR,...; several rasters form
one mosaic), or an XYZ tile folder {z}/{x}/{y}.png|jpg (--tiles DIR --zoom Z --cell_m M). Cells are resampled
to the model's aerial input. The build writes shards as it goes and resumes after an interruption (run the
same command again); --runner beam runs the embedding as an Apache Beam pipeline (--beam_options passes
runner options: --runner=FlinkRunner ...). A correlation model (--method dsm) stores its aerial feature maps
and builds no FAISS index (--index hnsw / ivfpq and --index_params are refused): `cvm locate` correlates them.
Then `cvm locate IMAGE --gallery DIR`.
"""

from __future__ import annotations

import json

from absl import flags

from cvm.cli import common, geo_common

flags.DEFINE_string("gallery", None, "The gallery folder to write (resumed when it holds a partial build).")
geo_common.define_model_flags(__name__)
flags.DEFINE_string("dataset", None, "Split source: dataset name (synthetic, cvact, ...).")
flags.DEFINE_string("split", "val", "Split source: the split whose aerials form the gallery.")
flags.DEFINE_string("root", None, "Split source: the dataset folder.")
flags.DEFINE_integer("synthetic_pairs", 1000, "Split source, --dataset synthetic: pairs of the synthetic dataset.")
flags.DEFINE_integer("synthetic_seed", 0, "Split source, --dataset synthetic: the world's seed.")
flags.DEFINE_list("geotiff", None, "GeoTIFF source: orthophoto files or folders of .tif files (one gallery).")
flags.DEFINE_string("tiles", None, "Tile source: an XYZ folder holding {z}/{x}/{y}.png|jpg.")
flags.DEFINE_integer("zoom", None, "Tile source: the zoom level to cut cells from.")
flags.DEFINE_float("cell_m", None, "GeoTIFF / tile source: ground side of a cell in metres (match the training "
                                   "aerials' coverage: 172.5 for CVUSA-like and synthetic models).")
flags.DEFINE_float("stride_m", None, "GeoTIFF / tile source: metres between cell centres (default --cell_m).")
flags.DEFINE_integer("shard_size", 4096, "Candidate cells per shard (the unit of resumption and of memory).",
                     lower_bound=1)
flags.DEFINE_integer("batch_size", 32, "Cells per forward pass.", lower_bound=1)
flags.DEFINE_enum("index", "auto", ["auto", "exact", "ivfflat", "ivfpq", "hnsw"],
                  "Vector index: exact inner product, IVF-Flat, IVF-PQ, HNSW, or auto (exact up to 1e5 cells, "
                  "IVF-Flat while the float32 vectors fit 4 GiB, IVF-PQ above). "
                  "A correlation model's (DSM) gallery has no FAISS index: auto or exact only.")
flags.DEFINE_string("index_params", None, "JSON overriding the index parameters, e.g. '{\"efSearch\": 256}'.")
flags.DEFINE_enum("runner", "local", ["local", "beam"], "Embed in this process or as an Apache Beam pipeline "
                                                        "(needs --saved_model).")
flags.DEFINE_string("beam_options", None, "--runner beam: Beam pipeline options, space-separated "
                                          "(default: the DirectRunner).")
flags.DEFINE_boolean("progress", True, "Show a progress bar.")

FLAGS = flags.FLAGS

SOURCE_FLAGS = {"split": ("dataset", "split", "root", "synthetic_pairs", "synthetic_seed"),
                "geotiff": ("geotiff", "cell_m", "stride_m"), "tiles": ("tiles", "zoom", "cell_m", "stride_m")}


def source_kind(fv) -> str:
    given = [k for k, flag in (("split", "dataset"), ("geotiff", "geotiff"), ("tiles", "tiles")) if getattr(fv, flag)]
    from cvm.errors import CvmError

    if len(given) != 1:
        raise CvmError("give one gallery source: --dataset D --split S, --geotiff FILE,... --cell_m M, or "
                       f"--tiles DIR --zoom Z --cell_m M (got {', '.join('--' + g for g in given) or 'none'})")
    return given[0]


def make_source(fv):
    from cvm.errors import CvmError
    from cvm.geo import sources

    kind = source_kind(fv)
    if kind in ("geotiff", "tiles") and not fv.cell_m:
        raise CvmError(f"--{kind} needs --cell_m: the ground side of a cell in metres (the coverage of the "
                       "aerials the model was trained on: 172.5 for CVUSA-like and synthetic models)")
    if kind == "geotiff":
        return sources.GeoTiffSource(fv.geotiff, fv.cell_m, fv.stride_m)
    if kind == "tiles":
        if fv.zoom is None:
            raise CvmError("--tiles needs --zoom: the zoom level of the tiles to cut cells from")
        return sources.TileSource(fv.tiles, fv.zoom, fv.cell_m, fv.stride_m)
    from cvm.data import load_split

    options = {}
    if fv.dataset == "synthetic":
        options = {"synthetic_pairs": fv.synthetic_pairs, "synthetic_seed": fv.synthetic_seed}
    split = load_split(fv.dataset, fv.split, fv.root, **options)
    return sources.SplitSource(split, load_options=options)


def check_flags(fv, argv) -> None:
    from cvm.flags import use as flag_use

    if len(argv) != 2 or argv[1] != "build":
        return
    unused = geo_common.model_unused(fv)
    try:
        kind = source_kind(fv)
    except Exception:
        return  # main says what is wrong
    for k, names in SOURCE_FLAGS.items():
        for name in names:
            if name not in SOURCE_FLAGS[kind]:
                unused[name] = f"it belongs to the {k} source and this run's source is {kind}"
    if kind == "split" and fv.dataset != "synthetic":
        unused["synthetic_pairs"] = unused["synthetic_seed"] = "only --dataset synthetic reads it"
    if kind == "split" and fv.dataset == "synthetic":
        unused["root"] = "--dataset synthetic is rendered in memory and reads no files"
    if fv.runner != "beam":
        unused["beam_options"] = "it configures --runner beam"
    flag_use.check_verb(fv, unused, [__name__], "cvm gallery build")


def main(argv) -> int:
    from cvm.errors import CvmError

    if len(argv) != 2 or argv[1] != "build":
        raise CvmError("usage: cvm gallery build --gallery DIR (model flags) (source flags); see --help")
    if not FLAGS.gallery:
        raise CvmError("--gallery is required: the folder to write the gallery to")
    params = None
    if FLAGS.index_params:
        try:
            params = json.loads(FLAGS.index_params)
            assert isinstance(params, dict)
        except (ValueError, AssertionError):
            raise CvmError(f"--index_params must be a JSON object, got {FLAGS.index_params!r}") from None
    source = make_source(FLAGS)
    towers = geo_common.towers_from_flags(FLAGS)
    if FLAGS.runner == "beam" and not FLAGS.saved_model:
        raise CvmError("--runner beam needs --saved_model: the workers load the exported SavedModel "
                       "(`cvm export --model_dir RUN --out DIR`)")
    from cvm.geo.gallery import build_gallery

    summary = build_gallery(source, towers, FLAGS.gallery, shard_size=FLAGS.shard_size, batch_size=FLAGS.batch_size,
                            index=FLAGS.index, index_params=params, progress=FLAGS.progress, runner=FLAGS.runner,
                            beam_options=FLAGS.beam_options.split() if FLAGS.beam_options else None,
                            saved_model=FLAGS.saved_model)
    skipped = ", ".join(f"{v} {k}" for k, v in sorted(summary["skipped"].items())) or "none"
    idx = summary["index"]
    recall = idx["recall@10_vs_exact"]
    rate = summary["cells_per_second"]
    if summary.get("correlation"):  # DSM: no FAISS index, `cvm locate` correlates the shards' maps
        index = "correlation search (exact, streamed over the shards; no FAISS index)"
    else:
        index = f"index {idx['kind']} {json.dumps(idx['params'])}"
    print(f"gallery {FLAGS.gallery}: {summary['cells']} cells of {summary['candidates']} candidates (skipped: "
          f"{skipped}), {summary['dim']}-d, {summary['shards']} shards ({summary['resumed_shards']} already built)"
          f"{f', {rate:g} cells/s' if rate else ''}; {index}"
          f"{f', recall@10 vs exact {recall:.3f}' if recall is not None else ''}; model fingerprint "
          f"{summary['fingerprint']}")
    return 0


def run(argv) -> None:
    common.run_app("cvm gallery", argv, main, __doc__, [__name__], check=check_flags)
