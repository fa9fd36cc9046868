"""Output files named after input rows stay inside their output folder.

Split files, .mat files and the records built from them are untrusted input: a row whose name would
put an output file outside its folder (`../x`, an absolute path, a symbolic link in the folder that
points out) is refused with a CvmError naming the row, before anything is written. Every verb that
names output files after input rows (`cvm synthesize`, `cvm data polar`, ...) builds their paths
with `output_path`.

```python
output_path("/runs/gen", "0000001.jpg", row="cvusa val row 1 (id '0000001')")  # "/runs/gen/0000001.jpg"
output_path("/runs/gen", "../../etc/x.jpg", row="...")                           # CvmError
```
"""

from __future__ import annotations

import os
import re

from cvm.errors import CvmError

_SEPARATORS = re.compile(r"[\\/]")


def output_path(out_dir: str, name: str, *, row: str) -> str:
    """`out_dir/name`, or a CvmError if `name` would resolve outside `out_dir`.

    Args:
      out_dir: the output folder (need not exist yet).
      name: the file's path relative to `out_dir`, from an input row (may hold sub-folders).
      row: the row in words for the error ("cvusa val row 12 (id '0000012')", "splits/x.txt line 3").

    Refused: an empty name, a NUL byte, an absolute path (or a drive), any `..` component, and a
    name that resolves (symbolic links followed, `os.path.realpath`) to `out_dir` itself or outside it.
    """
    text = os.fspath(name)

    def refuse(why: str):
        raise CvmError(f"{row}: output name {text!r} {why}; refusing to write outside {out_dir}. "
                       "Fix that row of the split (or .mat) file.")

    if not text:
        refuse("is empty")
    if "\x00" in text:
        refuse("holds a NUL byte")
    if os.path.isabs(text) or os.path.splitdrive(text)[0] or text[0] in "/\\":
        refuse("is an absolute path")
    if ".." in _SEPARATORS.split(text):
        refuse("climbs out of the folder with '..'")
    target = os.path.join(out_dir, text)
    base = os.path.realpath(out_dir)
    resolved = os.path.realpath(target)
    if resolved == base:
        refuse("names the output folder itself")
    if os.path.commonpath([base, resolved]) != base:
        refuse(f"resolves to {resolved}, outside the folder (through a symbolic link)")
    return target
