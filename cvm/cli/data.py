"""cvm data: dataset tools.

  cvm data synth --out DIR --layout cvusa|cvact --pairs N --seed S
      Write a dataset folder from the embedded synthetic cross-view world, in the official layout
      (JPEGs at the official sizes, split CSVs or ACT_data.mat), so the real adapters can read it;
      cvusa also gets colour segmentation maps of both views (--nosegmaps leaves them out).
  cvm data check --dataset cvusa|cvact|ucfop|dayton --root DIR
      Validate a dataset folder: counts per split, and for each kind of fault (missing, empty,
      truncated, not an image, unreadable, a directory instead of a file, wrong size) its count and
      the first 20 files by name. The complete list (one path<TAB>reason line per faulty file) is
      always written to --report FILE (default ROOT/cvm_check_<dataset>.txt, or
      ./cvm_check_<dataset>.txt if the root is read-only); the output gives its path.
      Exit status 0 only if the dataset is usable.
  cvm data check --dataset cvusa --root DIR --direction g2a|a2g [--split_file F] [--aerial_seg_dir D]
      Check what a synthesis run in that direction reads instead: each split's list (g2a: Regmi's
      splits/train_xfork_cvusa.txt, whose column 3 is the aerial segmentation target) and every input,
      target and segmentation map it names.
  cvm data polar --dataset cvusa|cvact|ucfop --root DIR [--out DIR] [--workers N] [--nostretch]
      Precompute SAFA's polar maps (112x616, from the full-resolution aerial) into OUT/polarmap/,
      where the adapters read them (CVUSA: polarmap/19/NNNNNNN.png). Resumable (existing readable
      maps are skipped; files are written atomically); unreadable inputs are listed by name and
      make the exit status 1. CVACT as distributed needs --out: it becomes SAFA's preprocessed
      CVACT folder (polarmap/, 616x112 streetview/*.png crops, ACT_data.mat).
"""

from __future__ import annotations

from absl import flags

from cvm.cli import common
from cvm.data import registry
from cvm.errors import CvmError

SUBCOMMANDS = ("synth", "check", "polar")

flags.DEFINE_string("dataset", None, f"Dataset name: check: {', '.join(registry.names('check'))}; polar: "
                    f"{', '.join(registry.names('polar'))}.")
flags.DEFINE_string("root", None, "Dataset root folder.")
flags.DEFINE_string("out", None, "synth: output folder of the dataset; polar: where polarmap/ goes (default ROOT).")
flags.DEFINE_enum("layout", "cvusa", ["cvusa", "cvact", "vigor", "geotown"],
                  "synth: folder layout to write (vigor: 4 cities, --pairs / 4 panoramas each; geotown: the world of "
                  "the --pairs dataset as an orthophoto GeoTIFF + pairs x val_fraction panoramas and photos with "
                  "coordinates).")
flags.DEFINE_integer("pairs", 200, "synth: number of ground/aerial pairs.", lower_bound=2)
flags.DEFINE_integer("seed", 0, "Random seed (the synthetic world and its sample locations).")
flags.DEFINE_float("val_fraction", 0.2, "synth: fraction of pairs in the validation split.",
                   lower_bound=0.0, upper_bound=0.9)
flags.DEFINE_integer("workers", None, "Parallel workers (default: all cores).")
flags.DEFINE_boolean("stretch", True, "polar: per-image min-max stretch to 0..255, as SAFA's published polar maps "
                                      "(scipy.misc.imsave); --nostretch rounds the interpolated values.")
flags.DEFINE_list("polar_size", ["112", "616"], "polar: polar map height,width (SAFA: 112,616).")
flags.DEFINE_boolean("segmaps", True, "synth: also write colour segmentation maps of both views (cvusa layout: "
                                      "streetview/annotations/, bingmap/annotations/).")
flags.DEFINE_enum("cvact_layout", "auto", ["auto", "distributed", "preprocessed"],
                  "check, polar: CVACT folder layout (auto-detected by default).")
flags.DEFINE_enum("vigor_area", None, ["same", "cross"], "check --dataset vigor: only same-area or cross-area "
                  "(default both).")
flags.DEFINE_enum("vigor_labels", "original", ["original", "corrected", "mercator"], "check --dataset vigor: label "
                  "version (cvm.data.vigor: original, SliceMatch's corrected, offsets recomputed in Web Mercator).")
flags.DEFINE_string("vigor_splits_dir", None, "check --dataset vigor: folder holding <City>/<label lists> instead "
                    "of ROOT/splits (or ROOT/splits__corrected).")
flags.DEFINE_string("cvact_mat", None, "check, polar: path of ACT_data.mat (default ROOT/ACT_data.mat).")
flags.DEFINE_integer("limit", None, "check: only the first N pairs of each split (a quick look).")
flags.DEFINE_string("report", None, "check: file to write the complete list of faulty files to, one path<TAB>reason "
                                    "per line (default ROOT/cvm_check_<dataset>.txt; if the root is read-only "
                                    "./cvm_check_<dataset>.txt, else the temp folder).")
flags.DEFINE_list("splits", None, "check, polar: only these splits (e.g. 'test' for a CVACT ANU_data_test folder).")
flags.DEFINE_enum("direction", None, ["a2g", "g2a"], "check, --dataset cvusa: check the files a synthesis run in "
                                                   "this direction reads (g2a: Regmi's splits/train_xfork_cvusa.txt "
                                                   "and the aerial maps of its column 3) instead of the retrieval pairs.")
flags.DEFINE_string("split_file", None, "check --direction: the synthesis list to check (relative to --root or "
                                        "absolute; '{split}' stands for train / val), as `cvm train --split_file`.")
flags.DEFINE_string("aerial_seg_dir", None, "check --direction g2a: aerial maps at DIR/<aerial stem>.png instead of "
                                            "column 3 of the list, as `cvm train --aerial_seg_dir`.")

FLAGS = flags.FLAGS


def synth() -> int:
    from cvm.data.synthetic import write_dataset

    out = FLAGS.out
    if not out:
        raise CvmError("--out is required: the folder to write the synthetic dataset into")
    if FLAGS.layout == "geotown":  # cvm.data.synthetic.town; held-out photo locations of the same world
        from cvm.data.synthetic.town import write_town

        held = max(1, int(round(FLAGS.pairs * FLAGS.val_fraction)))
        info = write_town(out, seed=FLAGS.seed, pairs=FLAGS.pairs, panos=held, photos=held)
        print(f"wrote a {info['world_size_m']:g} m town to {out}: orthophoto.tif ({info['crs']}, "
              f"{info['ortho_mpp']:g} m/px), {held} panoramas, {held} {info['photo_fov_deg']:g}-degree photos, "
              "locations.csv")
        return 0
    summary = write_dataset(out, layout=FLAGS.layout, pairs=FLAGS.pairs, seed=FLAGS.seed,
                            val_fraction=FLAGS.val_fraction, workers=FLAGS.workers, progress=True,
                            segmaps=FLAGS.segmaps and FLAGS.layout == "cvusa")
    print(f"wrote {summary['pairs']} {FLAGS.layout} pairs ({summary['train']} train, {summary['val']} val) "
          f"to {summary['out_dir']} in {summary['seconds']:.1f} s")
    return 0


def check() -> int:
    from cvm.data.check import main_check

    if not FLAGS.dataset:
        raise CvmError(f"--dataset is required: one of {', '.join(registry.names('check'))}")
    if not FLAGS.root:
        raise CvmError("--root is required: the dataset's root folder")
    options = {}
    if FLAGS.dataset == "cvact":
        options = {"layout": FLAGS.cvact_layout, "mat_path": FLAGS.cvact_mat}
    if FLAGS.dataset == "vigor":
        options = {"area": FLAGS.vigor_area, "labels": FLAGS.vigor_labels, "splits_dir": FLAGS.vigor_splits_dir}
    if FLAGS.direction:
        options = {"direction": FLAGS.direction, "split_file": FLAGS.split_file, "aerial_seg_dir": FLAGS.aerial_seg_dir}
    return main_check(FLAGS.dataset, FLAGS.root, splits=FLAGS.splits, limit=FLAGS.limit, workers=FLAGS.workers,
                      report_path=FLAGS.report, **options)


def polar() -> int:
    from cvm.data.polar_batch import precompute_polar

    if not FLAGS.dataset:
        raise CvmError(f"--dataset is required: one of {', '.join(registry.names('polar'))}")
    if not FLAGS.root:
        raise CvmError("--root is required: the dataset's root folder")
    try:
        height, width = (int(v) for v in FLAGS.polar_size)
    except ValueError:
        raise CvmError(f"--polar_size must be two positive integers height,width; got {','.join(FLAGS.polar_size)}")
    if height <= 0 or width <= 0:
        raise CvmError(f"--polar_size must be positive, got {height},{width}")
    options = {}
    if FLAGS.dataset == "cvact":
        options = {"layout": FLAGS.cvact_layout, "mat_path": FLAGS.cvact_mat}
    summary = precompute_polar(FLAGS.dataset, FLAGS.root, out_dir=FLAGS.out, splits=FLAGS.splits,
                               workers=FLAGS.workers, stretch=FLAGS.stretch, height=height, width=width,
                               progress=True, **options)
    for path, reason in summary.failed:
        print(f"unreadable: {path}: {reason}")
    print(f"polar maps under {summary.out_dir}: {summary.written} written, {summary.redone} rewritten, "
          f"{summary.skipped} already done, {len(summary.failed)} failed, of {summary.total}, "
          f"in {summary.seconds:.1f} s")
    return 1 if summary.failed else 0


# The flags each subcommand reads; the others have no effect on it.
SUBCOMMAND_FLAGS = {
    "synth": ("out", "layout", "pairs", "seed", "val_fraction", "workers", "segmaps"),
    "check": ("dataset", "root", "splits", "limit", "report", "workers", "cvact_layout", "cvact_mat", "direction",
              "split_file", "aerial_seg_dir", "vigor_area", "vigor_labels", "vigor_splits_dir"),
    "polar": ("dataset", "root", "out", "splits", "workers", "stretch", "polar_size", "cvact_layout", "cvact_mat"),
}


def check_flags(fv, argv) -> None:
    """Refuse flags the subcommand would not use (cvm.flags.use)."""
    from cvm.flags import use as flag_use

    if len(argv) != 2 or argv[1] not in SUBCOMMANDS:
        return  # main lists the subcommands
    sub = argv[1]
    unused = {}
    for name in flag_use.module_flags(fv, [__name__]):
        readers = [s for s, names in SUBCOMMAND_FLAGS.items() if name in names]
        if readers and sub not in readers:
            unused[name] = f"`cvm data {sub}` does not read it (a flag of `cvm data {' / '.join(readers)}`)"
    if sub == "synth" and fv.layout == "geotown":
        unused["workers"] = "the geotown layout renders in one process"
    if sub == "synth" and fv.layout != "cvusa":
        unused["segmaps"] = f"only the cvusa layout has segmentation maps (this run: --layout {fv.layout})"
    if sub != "synth" and fv.dataset != "cvact":
        for name in ("cvact_layout", "cvact_mat"):
            unused[name] = f"only --dataset cvact reads it (this run: --dataset {fv.dataset})"
    if sub == "check" and fv.dataset != "vigor":
        for name in ("vigor_area", "vigor_labels", "vigor_splits_dir"):
            unused[name] = f"only --dataset vigor reads it (this run: --dataset {fv.dataset})"
    if sub == "check":
        if fv.dataset != "cvusa":
            for name in ("direction", "split_file", "aerial_seg_dir"):
                unused[name] = f"only --dataset cvusa has synthesis lists to check (this run: --dataset {fv.dataset})"
        elif not fv.direction:
            for name in ("split_file", "aerial_seg_dir"):
                unused[name] = "it places the files of a synthesis check: give --direction g2a or a2g"
        elif fv.direction != "g2a":
            unused["aerial_seg_dir"] = "--direction a2g targets panoramas, whose maps are the list's third column"
    flag_use.check_verb(fv, unused, [__name__], f"cvm data {sub}")


def main(argv) -> int:
    if len(argv) != 2 or argv[1] not in SUBCOMMANDS:
        got = " ".join(argv[1:]) or "nothing"
        raise CvmError(f"`cvm data` takes one subcommand, {' or '.join(SUBCOMMANDS)}; got {got}. "
                       "See `cvm data --help`.")
    return {"synth": synth, "check": check, "polar": polar}[argv[1]]()


def run(argv) -> None:
    common.run_app("cvm data", argv, main, __doc__, [__name__], check=check_flags)
