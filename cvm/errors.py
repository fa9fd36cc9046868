"""The one exception type for errors a user can cause (missing file, bad flag value, bad checkpoint)."""


class CvmError(Exception):
    """A user-facing error: the message names the file, flag or value at fault and what to do.

    The CLI prints it on one line and exits non-zero, without a traceback unless `--verbose`.
    """
