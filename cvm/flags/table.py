"""Config fields <-> absl flags, driven by a table of field -> (kind, help) (train_flags, synthesis_flags).

A kind is "str", "int", "float", "bool", "size" (a 'height,width' list held as an int tuple) or
("enum", choices). The modules that own a table decide which fields turn "" into None and which
None fields a flagfile writes; the per-kind work is here.
"""

from __future__ import annotations

from typing import Iterable, Optional, Tuple

from absl import flags


def size_text(value) -> Optional[str]:
    """'height,width' (a size flag's text), or None for None."""
    return None if value is None else ",".join(str(v) for v in value)


def define_field(name: str, kind, default, help_text: str, flag_values, module_name: str) -> None:
    """Define the absl flag of one field.

    module_name is the module whose `--help` section lists the flag (cvm.cli.common.print_help
    prints per module); without it absl would file every flag under this module.
    """
    fv = {"flag_values": flag_values, "module_name": module_name}
    if isinstance(kind, tuple):
        flags.DEFINE_enum(name, default, kind[1], help_text, **fv)
    elif kind == "bool":
        flags.DEFINE_boolean(name, default, help_text, **fv)
    elif kind == "int":
        flags.DEFINE_integer(name, default, help_text, **fv)
    elif kind == "float":
        flags.DEFINE_float(name, default, help_text, **fv)
    elif kind == "size":
        flags.DEFINE_list(name, size_text(default), help_text, **fv)
    else:
        flags.DEFINE_string(name, default, help_text, **fv)


def define_fields(fields: dict, defaults, flag_values, module_name: str) -> None:
    """define_field for every entry of a field -> (kind, help) table, defaults read from a config instance."""
    for name, (kind, help_text) in fields.items():
        define_field(name, kind, getattr(defaults, name), help_text, flag_values, module_name)


def parse_value(kind, raw, empty_is_none: bool = True):
    """A parsed flag's value as the config field holds it.

    Sizes become int tuples (an empty list: None); an empty str becomes None when empty_is_none,
    else stays "" (a str field whose default is a string, where "" may be meant).
    """
    if kind == "size":
        return tuple(int(v) for v in raw) if raw else None
    if kind == "str" and raw == "" and empty_is_none:
        return None
    return raw


def flagfile_line(name: str, kind, value, write_none: bool = True) -> Optional[str]:
    """One field as a flagfile line, or None to leave it out.

    A None str/size value is written `--name=` (which parse_value reads back as None) when
    write_none; otherwise, and for every other None (a tri-state bool's "unset" too), the line is
    left out so the flag's default applies.
    """
    if kind == "bool" and value is not None:
        return f"--{name}" if value else f"--no{name}"
    if value is None:
        return f"--{name}=" if write_none and kind in ("str", "size") else None
    if kind == "size":
        return f"--{name}={size_text(value)}"
    return f"--{name}={value}"


def flagfile_text(entries: Iterable[Tuple[str, object, object, bool]]) -> str:
    """A flagfile from (name, kind, value, write_none) entries, one flagfile_line each, in order."""
    lines = [flagfile_line(name, kind, value, write_none) for name, kind, value, write_none in entries]
    return "\n".join(line for line in lines if line is not None) + "\n"
