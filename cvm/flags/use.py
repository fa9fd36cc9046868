"""Flags that would have no effect are errors: the check every verb runs on its parsed flags.

Each verb says which of its flags the run at hand does not use, and why, as {name: reason}:
`cvm train` from its config's own table (`TrainConfig.unused_fields`: model options from the
builders' signatures, data / loss flags that only some datasets, presets or settings read;
`SynthesisConfig.unused_fields` for the GANs) plus every flag of the other method family; the other
verbs from their sub-command and options. `check` refuses each of those flags that was given
explicitly (absl's `FlagValues[name].present`: on the command line or in a flagfile) with one
CvmError naming the flags, why, and what the run does take. A run's flags.cfg writes only the
fields the run uses, so it stays a valid flagfile.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, Optional

from cvm.errors import CvmError


def check(flag_values, unused: Mapping[str, str], takes: Optional[Iterable[str]] = None,
          subject: str = "this run", context: str = "") -> None:
    """CvmError if a flag of `unused` was given explicitly (`present`).

    takes: the flags the run does use (listed in the message); subject names the run ("--method cvft",
    "cvm data synth"); context says where the flags came from (a stage flagfile, ...).
    """
    given = [name for name in unused if name in flag_values and flag_values[name].present]
    if not given:
        return
    message = "; ".join(f"--{name} has no effect: {unused[name]}" for name in given)
    if context:
        message += f" ({context})"
    if takes is not None:
        message += f". {subject} takes: {', '.join('--' + name for name in sorted(takes))}"
    raise CvmError(message + f"; remove {'it' if len(given) == 1 else 'them'}")


def module_flags(flag_values, modules: Iterable[str]) -> list:
    """Names of the flags the given modules defined (a verb's own flags)."""
    return [flag.name for module in modules for flag in flag_values.get_flags_for_module(module)]


def check_verb(flag_values, unused: Mapping[str, str], modules: Iterable[str], subject: str) -> None:
    """`check` for a verb whose flags are those its modules define (the run takes the rest of them)."""
    takes = [name for name in module_flags(flag_values, modules) if name not in unused and name != "verbose"]
    check(flag_values, unused, takes, subject)


def check_model_dir_verb(flag_values, argv, config_class, modules: Iterable[str], subject: str,
                         more_unused: Optional[Callable] = None) -> None:
    """`check_verb` for a verb that reads a run's model_dir (cvm eval, cvm synthesize): --root is unused
    when the run's (or the given) dataset is the synthetic world; `more_unused(flag_values, config)` adds
    the verb's own {flag: reason}. A missing or foreign model_dir is left for the verb's main to report."""
    from cvm.errors import CvmError

    if len(argv) > 1 or not flag_values.model_dir:
        return  # main says what is wrong
    try:
        config = config_class.load(flag_values.model_dir)
    except CvmError:
        return  # main names the missing or foreign config.json
    unused = {}
    if (flag_values.dataset or config.dataset) == "synthetic":
        unused["root"] = "--dataset synthetic is rendered in memory and reads no files"
    if more_unused is not None:
        unused.update(more_unused(flag_values, config))
    check_verb(flag_values, unused, modules, subject)


def train_unused(flag_values) -> tuple:
    """({flag: reason}, subject) of `cvm train`'s flags for the parsed --method: the flags of the other
    method family and the fields the method's config does not use."""
    from cvm.flags import synthesis as synthesis_flags, train as train_flags
    from cvm.synthesis.methods import is_synthesis_method

    method = flag_values.method
    if is_synthesis_method(method):
        config = synthesis_flags.config_from_flags(flag_values)
        unused = config.unused_fields()
        own = set(synthesis_flags.FIELDS) | set(synthesis_flags.SHARED)
        for name in train_flags.FIELDS:
            if name not in own:
                unused[name] = f"it is a retrieval flag and --method {method} is a synthesis GAN"
        return unused, f"--method {method} (a synthesis GAN)"
    config = train_flags.config_from_flags(flag_values)
    unused = config.unused_fields()
    for name in synthesis_flags.FIELDS:
        unused[name] = f"it is a synthesis flag and --method {method} is a retrieval method"
    return unused, f"--method {method}"


def check_train(flag_values, context: str = "") -> None:
    """`check` for a FlagValues holding `cvm train`'s flags (train_flags and synthesis_flags)."""
    from cvm.flags import synthesis as synthesis_flags, train as train_flags

    unused, subject = train_unused(flag_values)
    takes = [name for name in (*train_flags.FIELDS, *synthesis_flags.FIELDS) if name not in unused]
    check(flag_values, unused, takes, subject, context)
