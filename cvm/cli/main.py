"""`cvm` entry point: dispatches `cvm VERB ...` to the verb's absl app (one module per verb)."""

from __future__ import annotations

import importlib
import os
import sys

# TensorFlow's C++ start-up chatter (CUDA probing on CPU machines) drowns the CLI's output: the level
# hides its INFO/WARNING lines, cvm.cli.quiet the rest of its start-up lines (unless --verbose).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# verb -> (module, one-line description). Importing only the chosen verb keeps its flags alone.
VERBS = {
    "data": ("cvm.cli.data", "datasets: synth (write a synthetic-world dataset), check (validate a folder), polar "
                            "(precompute SAFA polar maps)"),
    "train": ("cvm.cli.train", "train or resume a retrieval model (no --flagfile / --method: the synthetic-world "
                               "quickstart, experiments/sample4geo_quickstart.cfg) or a synthesis GAN (--method xfork, "
                               "xseq, ...)"),
    "synthesize": ("cvm.cli.synthesize", "write generated images of a trained synthesis GAN for a split (resumable)"),
    "eval": ("cvm.cli.eval", "evaluate a trained model: recall@K / top-1% JSON, recall curve, retrieval grid"),
    "eval-synthesis": ("cvm.cli.eval_synthesis", "SSIM / PSNR / sharpness and classifier agreement of generated images"),
    "export": ("cvm.cli.export", "export a trained model's towers (SavedModel, ONNX or LiteRT; uint8 in, checked against Keras)"),
    "convert": ("cvm.cli.convert", "convert the authors' TF1 checkpoints (CVM-Net, CVFT, SAFA, Regmi) into .keras files"),
    "pipeline": ("cvm.cli.pipeline", "run a multi-stage paper experiment, resumable (regmi_iccv19)"),
    "gallery": ("cvm.cli.gallery", "build a geo-referenced gallery (split, GeoTIFF or XYZ tiles) with a vector index"),
    "locate": ("cvm.cli.locate", "where was this photo taken: top-k gallery locations, PNG and offline HTML map"),
}

USAGE = """usage: cvm VERB [--flagfile FILE] [--flags ...]

cvm: cross-view image geo-localization and synthesis (TensorFlow 2 / Keras 3).

verbs:
{verbs}

`cvm VERB --help` lists a verb's flags. Every verb reads --flagfile; later flags override it.
"""


def usage() -> str:
    width = max(len(v) for v in VERBS)
    return USAGE.format(verbs="\n".join(f"  {v.ljust(width)}  {d}" for v, (_, d) in VERBS.items()))


def shipped_flagfiles(args: list) -> list:
    """`--flagfile experiments/X.cfg` that is not a file here names cvm's shipped flagfile X (any folder)."""
    from cvm import resources
    from cvm.errors import CvmError

    out, i = [], 0
    while i < len(args):
        arg = args[i]
        if arg in ("--flagfile", "-flagfile") and i + 1 < len(args):
            arg, i = f"--flagfile={args[i + 1]}", i + 1
        if arg.startswith(("--flagfile=", "-flagfile=")):
            path = arg.split("=", 1)[1]
            if path.startswith("experiments/") and not os.path.isfile(path):
                try:
                    arg = f"--flagfile={resources.find_flagfile(path)}"
                except CvmError:
                    pass  # absl's own error names the missing file
        out.append(arg)
        i += 1
    return out


# `cvm train` without --flagfile and without --method trains this experiment (any flag given overrides it).
QUICKSTART = "experiments/sample4geo_quickstart.cfg"


def with_quickstart(args: list) -> list:
    """`cvm train`'s arguments with the quickstart flagfile first when they name no flagfile and no method."""
    names = {a.lstrip("-").split("=", 1)[0] for a in args if a.startswith("-")}
    if names & {"flagfile", "method", "help", "helpfull", "h", "helpshort"}:
        return args
    from cvm import resources

    return [f"--flagfile={resources.find_flagfile(QUICKSTART)}"] + list(args)


def run(argv=None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "-help", "help", "--helpfull"):
        print(usage())
        sys.exit(0 if len(argv) >= 2 else 2)
    if argv[1] in ("--version", "version"):
        import cvm

        print(f"cvm {cvm.__version__}")
        sys.exit(0)
    verb = argv[1]
    if verb not in VERBS:
        print(f"cvm: error: unknown verb {verb!r}; valid verbs: {', '.join(VERBS)}\n", file=sys.stderr)
        print(usage(), file=sys.stderr)
        sys.exit(2)
    from cvm.cli import quiet

    argv[2:] = shipped_flagfiles(argv[2:])
    if verb == "train":
        argv[2:] = with_quickstart(argv[2:])
    quiet.configure(argv[2:])  # before anything imports TensorFlow
    module = importlib.import_module(VERBS[verb][0])
    module.run([f"cvm {verb}"] + argv[2:])


if __name__ == "__main__":
    run()
