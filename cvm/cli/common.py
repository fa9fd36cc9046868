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


HELP_ARGS = ("-h", "--help", "-help", "--helpshort")


def flag_help(names, flag_values=FLAGS, indent: str = "  ", texts=None) -> str:
    """absl-style help lines of the named flags (texts: {name: help} replacing a flag's own)."""
    import textwrap

    lines = []
    for name in names:
        flag = flag_values[name]
        prefix = "--[no]" if flag.boolean else "--"
        text = (texts or {}).get(name, flag.help)
        lines.append(textwrap.fill(f"{indent}{prefix}{name}: {text}", 100, subsequent_indent=indent * 3))
        if flag.default is not None:
            default = ",".join(map(str, flag.default)) if isinstance(flag.default, list) else flag.default
            lines.append(f"{indent * 3}(default: {str(default).lower() if flag.boolean else repr(default)})")
    return "\n".join(lines)


def run_app(prog: str, argv, main, doc: str, modules, check=None, method_help=None) -> None:
    """absl app.run with cvm's help and error conventions.

    check(FLAGS, args), run before main, raises a CvmError for flags the run would not use
    (cvm.flags.use). method_help(FLAGS, argv) gives the help of one configuration (`cvm train --method
    safa --help`: the flags that run takes) or None for the full help.
    """
    if any(a in HELP_ARGS for a in argv[1:]):
        text = None
        if method_help is not None:
            try:
                text = method_help(FLAGS, [prog] + [a for a in argv[1:] if a not in HELP_ARGS])
            except (CvmError, flags.Error) as exc:
                print(f"{prog}: error: {exc}", file=sys.stderr)
                sys.exit(2)
        if text is None:
            print_help(prog, doc, list(modules) + [__name__])
        else:
            print(f"usage: {prog} [--flagfile FILE] [--flags ...]\n")
            print(doc.strip() + "\n")
            print(text + "\n")
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
