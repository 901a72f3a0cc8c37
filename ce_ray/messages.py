"""How ce-ray's messages say things: `InputError`, the error a user can act on (it names the file, the column or
the setting), a setting with its command's flag (`setting_and_flag`), lists cut short and counts in words."""

from __future__ import annotations

import unicodedata
from typing import Dict, List, Sequence, Union

# What on_invalid=fail stops a job with (`score._unscorable`), which the line that ends the command reads.
UNSCORABLE = "row(s) cannot be scored"


class InputError(ValueError):
    """The input cannot be read as pairs: named file, named column."""


def briefly(said: List[str], most: int = 5) -> str:
    """The first `most` of many things said, and how many more."""
    return "; ".join(said[:most]) + (f"; and {len(said) - most} more" if len(said) > most else "")


def column_list(names: Sequence[str], most: int = 12) -> str:
    """The columns an error names, the first `most` of them: where there are more it says so and how many, or a
    list cut short reads as every column the file has."""
    shown = ", ".join(names[:most]) or "none"
    return shown + (f", ... ({len(names)} in all)" if len(names) > most else "")


def plural(count: int, noun: str) -> str:
    """A count as a line says it: `1 pair`, `1,234 pairs`, `1 query`, `2 queries`."""
    if count != 1:
        noun = noun[:-1] + "ies" if noun.endswith("y") and noun[-2] not in "aeiou" else noun + "s"
    return f"{count:,} {noun}"


def setting_and_flag(name: str, value: Union[str, bool] = "") -> str:
    """A setting as a message names it, by its YAML key and its command's flag: `batch_tokens (--batch-tokens)`;
    with a `value`, the setting given it: `mode overwrite (--mode overwrite)`, `use_gpu false (--no-use-gpu)` (a
    boolean's flag takes no value)."""
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return f"{name} {str(value).lower()} (--{'' if value else 'no-'}{flag})"
    return f"{name} {value} (--{flag} {value})" if value else f"{name} (--{flag})"


def settings_hint(missing: Sequence[str], settings: Dict[str, str]) -> str:
    """`; name the column with <setting> (--<flag>)` for the `missing` columns that a setting names (`settings`:
    column -> setting); empty where none does."""
    named = [settings[c] for c in missing if c in settings]
    if not named:
        return ""
    flags = " and ".join(setting_and_flag(s) for s in dict.fromkeys(named))
    return f"; name the {'column' if len(missing) == 1 else 'columns'} with {flags}"


def lookalikes_hint(missing: Sequence[str], columns: Sequence[str]) -> str:
    """`; the file has 'Query' for 'query' ...` for the `missing` columns that `columns` holds under a name that
    differs in case, in blanks at its ends, or in Unicode's form alone: `requête` written decomposed (NFD) and
    composed (NFC) print alike, and a message naming both as they are read as nonsense. Both names are written in
    ASCII, their escapes showing the difference."""
    def looks(name: str) -> str:
        return unicodedata.normalize("NFC", name).strip().casefold()

    found = [f"{ascii(column)} for {ascii(name)}" for name in missing
             for column in columns if column != name and looks(column) == looks(name)]
    if not found:
        return ""
    return (f"; the file has {', '.join(found)}, which differ in case, blanks or Unicode form: name "
            f"{'it' if len(found) == 1 else 'them'} as the file does")


def cannot_hold(rows_of: str, column: str, dtype, agreed, error: Exception) -> InputError:
    """The error of a column whose values the type the input's files make of it cannot hold (`readers.in_input_types`
    as a parquet file is read, `sink.conform` as a part is written)."""
    return InputError(f"{rows_of}: column {column!r} is {dtype}, of values that the type the input's files make of "
                      f"it, {agreed}, cannot hold ({error}): write it as one type in every file")
