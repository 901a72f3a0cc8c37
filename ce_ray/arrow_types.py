"""Arrow types as ce-ray reads them: which hold texts or lists, which parquet cannot write, the type a column is
read as, where an id is missing, and the one type that rows of two types are put together in."""

from __future__ import annotations

import re
from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc


def is_list(dtype: pa.DataType) -> bool:
    return pa.types.is_list(dtype) or pa.types.is_large_list(dtype)


def is_text(dtype: pa.DataType) -> bool:
    """Strings, strings dictionary-encoded (a pandas categorical, a Polars categorical written to parquet), or
    string views (Polars' strings in Arrow)."""
    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype)


WHOLE_NUMBER = r"(-?[0-9]+)\.0+"  # an id written as a whole number with a fraction of zeros: `7.0`


def whole_number_text(ids):
    """Text ids written as whole numbers with a fraction of zeros (`7.0`, as pandas writes an integer id column with a
    missing value, in a CSV too) as the integer's text (`7`), so that they are one id with `7`; others as they are
    (`0042`, `7.5`). Strings, large or not."""
    return pc.replace_substring_regex(ids, f"^{WHOLE_NUMBER}$", r"\1")


def whole_number_id(text: str) -> str:
    """`whole_number_text` of one id."""
    whole = re.fullmatch(WHOLE_NUMBER, text)
    return whole.group(1) if whole else text


def holds_empty_struct(dtype: pa.DataType) -> bool:
    """A struct without fields, itself or inside (a list's values, a struct's field, a map's): what Arrow reads a
    JSON object of no keys as, `{}`, and what parquet cannot write."""
    if pa.types.is_struct(dtype):
        return dtype.num_fields == 0 or any(holds_empty_struct(dtype.field(i).type) for i in range(dtype.num_fields))
    if pa.types.is_map(dtype):
        return holds_empty_struct(dtype.key_type) or holds_empty_struct(dtype.item_type)
    if is_list(dtype) or pa.types.is_fixed_size_list(dtype) or pa.types.is_list_view(dtype):
        return holds_empty_struct(dtype.value_type)
    return False


def read_type(dtype: pa.DataType) -> pa.DataType:
    """The type a column of a file is read as (`readers.plain_columns`): string and binary views (Polars') as
    plain strings and binaries, dictionary-encoded columns (pandas' and Polars' categoricals) as their values."""
    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    return {pa.string_view(): pa.string(), pa.binary_view(): pa.binary()}.get(dtype, dtype)


def nulls_as_text(dtype: pa.DataType) -> pa.DataType:
    """`dtype` with text where it is null (a column, a list's values, a struct's fields): the type a JSON Lines column
    is read in where the lines the input's check read (each file's first MiB) held no value of it in any file.
    Later lines may (a title, tags after `[]`): text takes any (`readers.as_checked_types`), where null took none
    and the parts were written in their own types (null and string: no one table), or, in a list or a struct,
    the job failed mid-way."""
    if pa.types.is_null(dtype):
        return pa.string()
    if is_list(dtype):
        values = dtype.value_field.with_type(nulls_as_text(dtype.value_type))
        return pa.large_list(values) if pa.types.is_large_list(dtype) else pa.list_(values)
    if pa.types.is_struct(dtype):
        return pa.struct([field.with_type(nulls_as_text(field.type)) for field in dtype])
    return dtype


def missing_values(column) -> pa.Array:
    """Where an id is missing: null, NaN (how pandas writes a missing integer id), or text empty or of blanks alone (a
    parquet's or JSON Lines' `""`, where a CSV's empty field is null: those rows were ranked together as one query,
    and an id of blanks, which a run's line cannot hold, failed `ce-ray eval --run-output`)."""
    missing = column.is_null()
    if pa.types.is_floating(column.type):
        missing = pc.or_(missing, pc.is_nan(column).fill_null(True))
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        missing = pc.or_(missing, pc.equal(pc.utf8_trim_whitespace(column), "").fill_null(True))
    return missing


def one_type(one: pa.DataType, other: pa.DataType) -> Optional[pa.DataType]:
    """The type that rows of both types are put together in, as Ray Data widens them; None where there is none.
    Extension types (Ray's tensors) Ray Data unifies its own way: the first is kept."""
    if one == other or isinstance(one, pa.ExtensionType) or isinstance(other, pa.ExtensionType):
        return one
    try:
        unified = pa.unify_schemas([pa.schema([("c", one)]), pa.schema([("c", other)])],
                                   promote_options="permissive").field("c").type
        if pa.types.is_decimal(unified):  # an integer and a decimal: too few digits for any integer but null
            for side in (one, other):
                if pa.types.is_integer(side):
                    pa.array([1], side).cast(unified)
        return unified
    except (pa.ArrowTypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
