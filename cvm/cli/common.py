"""What every verb shares: --verbose, help printing, and CvmError -> one line + non-zero exit."""

from __future__ import annotations

import sys

from absl import app, flags

from cvm.errors import CvmError

flags.DEFINE_boolean("verbose", False, "Print full tracebacks for errors.")

FLAGS = flags.FLAGS


def print_help(prog: str, doc: str, modules) -> None:
    """The verb's docstring and the flags of the given modules (absl's --help shows only __main__)."""
    print(f"usage: {prog} [--flagfile FILE] [--flags ...]\n")
    print(doc.strip() + "\n")
    for module in modules:
        text = FLAGS.module_help(module)
        if text:
            print(text + "\n")
    print("Flags can be given in a --flagfile (one --flag=value per line); later flags override it.")


def run_app(prog: str, argv, main, doc: str, modules, check=None) -> None:
    """absl app.run with cvm's help and error conventions.

    check(FLAGS, args), run before main, raises a CvmError for flags the run would not use
    (cvm.cli.flag_use).
    """
    if any(a in ("-h", "--help", "-help", "--helpshort") for a in argv[1:]):
        print_help(prog, doc, list(modules) + [__name__])
        sys.exit(0)

    def guarded(args):
        try:
            if check is not None:
                check(FLAGS, args)
            return main(args)
        except CvmError as exc:
            if FLAGS.verbose:
                raise
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return 2

    try:
        app.run(guarded, argv=[prog] + list(argv[1:]))
    except flags.Error as exc:  # unknown flag or bad value, raised before main
        print(f"{prog}: error: {exc}", file=sys.stderr)
        sys.exit(2)
