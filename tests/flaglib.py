"""`cvm train`'s flags parsed into a fresh FlagValues, as the CLI parses them (for tests of flags and flagfiles)."""

from absl import flags

from cvm.flags import synthesis as synthesis_flags
from cvm.flags import train as train_flags


def train_flag_values(*argv):
    """A FlagValues with `cvm train`'s retrieval and synthesis flags, parsed from argv (flags, --flagfile=...)."""
    fv = flags.FlagValues()
    train_flags.define_flags(fv)
    synthesis_flags.define_flags(fv)
    fv(["cvm train", *argv])
    return fv
