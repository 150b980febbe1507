"""Reads a MATLAB 5 ``.mat`` file's structure and numeric matrices, strictly, from its bytes.

SBD ships each annotation as a MATLAB 5 file (MATLAB's ``save``: one zlib-compressed element
per variable) holding a struct, ``GTcls``, whose ``Segmentation`` field is an [H, W] matrix.
scipy 1.12's ``loadmat`` trusts the sizes written inside a file. On 2,000 byte-damaged copies of
the dataset maker's SBD files (bytes changed, tail cut, zeroed, inserted or overwritten; half
compressed as the maker writes them, half stored plain), it killed the process with SIGSEGV or
SIGBUS on 2.5% of the compressed and 6.9% of the plain ones (seed 25), 4.8% and 7.0% with seed 2
(``python -m tests.test_matfile measure --n 2000 --seed S``). No except clause catches that: the
Beam worker dies and the run fails without saying which file did it.

So this module reads the subset of the format SBD uses itself, in Python: every tag, size and
dimension is checked against the bytes that are there before anything is sliced or looped
over, zlib inflates (it raises on bad data, and its Adler-32 checksum catches any damage inside
a compressed element), and numpy only views bytes already counted: nothing is allocated from a
size the file claims. What does not check out is a ``MatError`` saying what is wrong, which
ingestion makes a rejected record. On the same files: no crash; the compressed ones read where
scipy read them, to the same values, and rejected where scipy raised or crashed. Of the plain
ones it rejects more than scipy fails on (675 of 1,000 against 498, seed 25): damage that scipy
reads past inside fields nobody uses, such as a sparse matrix's column pointers that fall.

What is checked, for every variable (a damaged field nobody reads still makes the file damaged):

* the 128-byte header: MATLAB 5 in either byte order (7.3 is HDF5: ``HDF5MatError``);
* each variable an miMATRIX element, or an miCOMPRESSED one that inflates to exactly one, the
  variables tiling the file to its last byte;
* each matrix's array flags, dimensions and name, then what its class holds, its sub-elements
  tiling it exactly: numeric data holding exactly the values the dimensions need (and an
  imaginary part if complex); a struct's NUL-terminated field names and one matrix per field
  and element; a cell's matrix per cell; a sparse matrix's row indices, column pointers (one per
  column and one more) and values; a char matrix's text element.

Numeric matrices come back as ``loadmat`` returns them (``mat_dtype=False``): the stored data
type, MATLAB's dimensions unsqueezed, column-major, value for value.
"""

from __future__ import annotations

import dataclasses
import math
import struct
import zlib
from typing import Optional

import numpy as np

HEADER_BYTES = 128
# The most one compressed variable may inflate to: an SBD mask of the largest VOC image (500x500)
# is 250 KB as uint8 and 2 MB as doubles, its boundaries a few times that.
MAX_INFLATED_BYTES = 256 << 20
_TAG_BYTES = 8
_MAX_DEPTH = 16  # cells and structs nest; SBD's go 2 deep (GTcls.Boundaries{k})

# Data types of elements (MATLAB's "MAT-File Format", table 1-1).
_MI_INT8 = 1
_MI_UINT8 = 2
_MI_UINT16 = 4
_MI_INT32 = 5
_MI_UINT32 = 6
_MI_MATRIX = 14
_MI_COMPRESSED = 15
_MI_UTF8 = 16
_MI_UTF16 = 17
_MI_UTF32 = 18
# Element types that hold numbers, as numpy dtypes (the file's byte order is added).
_NUMERIC_TYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
_TEXT_TYPES = (_MI_INT8, _MI_UINT8, _MI_UINT16, _MI_UTF8, _MI_UTF16, _MI_UTF32)
_INT32_TYPES = (_MI_INT32, _MI_UINT32)

# Array classes: the low byte of a matrix's array flags.
_CLASS_NAMES = {
    1: "cell",
    2: "struct",
    3: "object",
    4: "char",
    5: "sparse",
    6: "double",
    7: "single",
    8: "int8",
    9: "uint8",
    10: "int16",
    11: "uint16",
    12: "int32",
    13: "uint32",
    14: "int64",
    15: "uint64",
}
_MX_CELL, _MX_STRUCT, _MX_OBJECT, _MX_CHAR, _MX_SPARSE, _MX_DOUBLE = 1, 2, 3, 4, 5, 6
_NUMERIC_CLASSES = range(6, 16)
_COMPLEX_FLAG = 0x800
_LOGICAL_FLAG = 0x200
_MAX_DIMS = 32  # numpy's limit, and loadmat's

_VERSION_5 = 0x0100
_VERSION_73 = 0x0200


class MatError(ValueError):
    """The bytes are not a MATLAB 5 file of the subset read here; the message says what is wrong."""


class HDF5MatError(MatError):
    """A MATLAB 7.3 file: HDF5 inside, not MATLAB 5."""


@dataclasses.dataclass(frozen=True)
class Matrix:
    """One miMATRIX element, checked: its header, and what its class holds."""

    where: str  # what it is, for messages: "GTcls", "GTcls.Segmentation", "GTcls.Boundaries{3}"
    name: str  # the variable's name; empty inside a struct or cell
    mclass: int  # array class
    flags: int  # the array flags word (class, complex, global, logical)
    dims: tuple  # MATLAB's dimensions, at least 2
    real: Optional[np.ndarray] = None  # numeric: the values, flat and column-major, a view
    fields: tuple = ()  # struct or object: one {field: Matrix} per element
    cells: tuple = ()  # cell: one Matrix per cell, column-major

    @property
    def class_name(self) -> str:
        return _CLASS_NAMES[self.mclass]

    def shape(self) -> str:
        return " x ".join(str(d) for d in self.dims)


class _Elements:
    """Reads the sub-elements of one element's data in order, each checked to end inside it."""

    def __init__(self, buf: memoryview, order: str, where: str):
        self.buf, self.pos, self.order, self.where = buf, 0, order, where

    def left(self) -> int:
        return len(self.buf) - self.pos

    def typed(self, what: str, types: tuple) -> tuple:
        """The next sub-element, which must be of one of ``types``: ``(its type, its data)``.

        A small data element keeps up to 4 bytes inside its 8-byte tag (the byte count in the
        high 16 bits of its first word, in either byte order); a full one is followed by its
        data, padded to 8 bytes.
        """
        where = self.where
        if self.left() < _TAG_BYTES:
            raise MatError(f"{where}: {what}: missing ({self.left()} bytes left where its tag would be)")
        word, count = struct.unpack_from(self.order + "II", self.buf, self.pos)
        if word >> 16:
            kind, count, start, end = word & 0xFFFF, word >> 16, self.pos + 4, self.pos + _TAG_BYTES
            if count > 4:
                raise MatError(f"{where}: {what}: a small element of {count} bytes (at most 4 fit)")
        else:
            kind, start = word, self.pos + _TAG_BYTES
            end = start + count + (-count % 8)
            if end > len(self.buf):
                raise MatError(f"{where}: {what}: {count} bytes claimed, {len(self.buf) - start} left")
        if kind not in types:
            raise MatError(f"{where}: {what}: element type {kind}, not one of {types}")
        self.pos = end
        return kind, self.buf[start : start + count]

    def next(self, what: str, types: tuple) -> memoryview:
        return self.typed(what, types)[1]

    def numbers(self, what: str, count: int) -> np.ndarray:
        """The next sub-element, ``count`` numbers of any numeric type, viewed by numpy."""
        kind, data = self.typed(what, tuple(_NUMERIC_TYPES))
        dtype = np.dtype(_NUMERIC_TYPES[kind]).newbyteorder(self.order)
        if len(data) != count * dtype.itemsize:
            raise MatError(f"{self.where}: {what}: {len(data)} bytes of {dtype.name}, not {count} values")
        return np.frombuffer(data, dtype)

    def matrix(self, where: str, depth: int) -> Matrix:
        """The next sub-element, a whole matrix, parsed."""
        if self.left() < _TAG_BYTES:
            raise MatError(f"{where} is missing ({self.left()} bytes left where its tag would be)")
        kind, size = struct.unpack_from(self.order + "II", self.buf, self.pos)
        start = self.pos + _TAG_BYTES
        left = len(self.buf) - start
        if kind != _MI_MATRIX or size > left:
            raise MatError(f"{where} is an element of type {kind} and {size} bytes, not a matrix in {left}")
        self.pos = start + size
        return _matrix(self.buf[start : self.pos], self.order, where, depth)

    def done(self) -> None:
        if self.left():
            raise MatError(f"{self.where}: {self.left()} bytes follow its last element")


def _ascii(data, where: str, what: str) -> str:
    try:
        return bytes(data).decode("ascii")
    except UnicodeDecodeError:
        raise MatError(f"{where}: {what} is not ASCII: {bytes(data)[:40]!r}") from None


def _count_fits(count: int, elements: _Elements, what: str) -> None:
    """Before a loop over ``count`` matrices: each needs at least a tag, so a damaged dimension
    cannot make the loop run longer than the bytes allow."""
    if count * _TAG_BYTES > elements.left():
        raise MatError(f"{elements.where}: {count} {what} cannot fit in {elements.left()} bytes")


def _header(elements: _Elements) -> tuple:
    """A matrix's array header: ``(flags word, class, dimensions, name)``."""
    where, order = elements.where, elements.order
    flags = elements.next("the array flags", (_MI_UINT32,))
    if len(flags) != 8:
        raise MatError(f"{where}: array flags are {len(flags)} bytes, not 2 uint32s")
    flag_word = struct.unpack_from(order + "I", flags)[0]
    mclass = flag_word & 0xFF
    if mclass not in _CLASS_NAMES:
        raise MatError(f"{where}: array class {mclass} is not one this reader knows")
    dims = elements.next("the dimensions", _INT32_TYPES)
    if len(dims) % 4 or not 2 <= len(dims) // 4 <= _MAX_DIMS:
        raise MatError(f"{where}: dimensions are {len(dims)} bytes, not 2-{_MAX_DIMS} int32s")
    dims = struct.unpack_from(f"{order}{len(dims) // 4}i", dims)
    if min(dims) < 0:
        raise MatError(f"{where}: negative dimension in {dims}")
    name = _ascii(elements.next("the array name", (_MI_INT8, _MI_UTF8)), where, "the array name")
    return flag_word, mclass, dims, name


def _matrix(body: memoryview, order: str, where: str, depth: int) -> Matrix:
    """Parses and checks the matrix whose miMATRIX data (after its tag) is ``body``."""
    if depth > _MAX_DEPTH:
        raise MatError(f"{where}: cells and structs nested deeper than {_MAX_DEPTH}")
    if not len(body):  # an element with no data at all: loadmat reads an empty double
        return Matrix(where, "", _MX_DOUBLE, _MX_DOUBLE, (0, 0), real=np.zeros(0))
    elements = _Elements(body, order, where)
    flag_word, mclass, dims, name = _header(elements)
    count = math.prod(dims)
    complex_ = bool(flag_word & _COMPLEX_FLAG)
    real, fields, cells = None, (), ()
    if mclass in _NUMERIC_CLASSES:
        real = elements.numbers("the real part" if complex_ else "the data", count)
        if complex_:
            elements.numbers("the imaginary part", count)
    elif mclass == _MX_SPARSE:
        _check_sparse(elements, dims, complex_, bool(flag_word & _LOGICAL_FLAG))
    elif mclass == _MX_CHAR:
        elements.next("the text", _TEXT_TYPES)
    elif mclass == _MX_CELL:
        _count_fits(count, elements, "cells")
        cells = tuple(elements.matrix(f"{where}{{{k + 1}}}", depth + 1) for k in range(count))
    else:  # struct, or object: a struct with a class name
        if mclass == _MX_OBJECT:
            _ascii(elements.next("the class name", (_MI_INT8, _MI_UTF8)), where, "the class name")
        fields = _struct_fields(elements, count, where, depth)
    elements.done()
    return Matrix(where, name, mclass, flag_word, dims, real, fields, cells)


def _int32s(elements: _Elements, what: str) -> np.ndarray:
    data = elements.next(what, _INT32_TYPES)
    if len(data) % 4:
        raise MatError(f"{elements.where}: {what}: {len(data)} bytes, not int32s")
    return np.frombuffer(data, elements.order + "i4")


def _check_sparse(elements: _Elements, dims: tuple, complex_: bool, logical: bool) -> None:
    """A sparse matrix's row indices, column pointers and values agree (what scipy's csc_array
    checks, and what ``loadmat`` would index by)."""
    where = elements.where
    if len(dims) != 2:
        raise MatError(f"{where}: a sparse matrix of {len(dims)} dimensions")
    rows, columns = _int32s(elements, "the row indices"), _int32s(elements, "the column pointers")
    if len(columns) < dims[1] + 1:
        raise MatError(f"{where}: {len(columns)} column pointers for {dims[1]} columns")
    columns = columns[: dims[1] + 1]
    stored = int(columns[-1])
    if columns[0] != 0:
        raise MatError(f"{where}: the first column pointer is {columns[0]}, not 0")
    falls = np.diff(columns) < 0
    if falls.any():
        at = int(falls.argmax()) + 1
        raise MatError(
            f"{where}: column pointer {at} is {columns[at]}, below the one before ({columns[at - 1]})"
        )
    if stored > len(rows):
        raise MatError(f"{where}: column pointers count {stored} entries, there are {len(rows)} row indices")
    if stored and (rows[:stored].min() < 0 or rows[:stored].max() >= dims[0]):
        raise MatError(f"{where}: row indices outside 0-{dims[0] - 1}")
    for what in ("the values", "the imaginary values") if complex_ else ("the values",):
        kind, data = elements.typed(what, tuple(_NUMERIC_TYPES))
        itemsize = np.dtype(_NUMERIC_TYPES[kind]).itemsize
        # MATLAB writes a logical sparse matrix's values as bytes under a double's type.
        if not (logical and len(data) == stored) and (len(data) % itemsize or len(data) < stored * itemsize):
            raise MatError(f"{where}: {what}: {len(data)} bytes of type {kind} for {stored} entries")


def _struct_fields(elements: _Elements, count: int, where: str, depth: int) -> tuple:
    length = elements.next("the field name length", _INT32_TYPES)
    if len(length) != 4:
        raise MatError(f"{where}: the field name length is {len(length)} bytes, not one int32")
    length = struct.unpack_from(elements.order + "i", length)[0]
    names = bytes(elements.next("the field names", (_MI_INT8, _MI_UTF8)))
    if length <= 0 or len(names) % length:
        raise MatError(f"{where}: field names of {len(names)} bytes are not slots of {length}")
    keys = []
    for slot in range(0, len(names), length):
        text = names[slot : slot + length]
        if b"\0" not in text:
            raise MatError(f"{where}: field name {text[:40]!r} has no terminating NUL")
        key = _ascii(text[: text.index(b"\0")], where, "a field name")
        if key in keys:
            raise MatError(f"{where}: field {key} appears twice")
        keys.append(key)
    _count_fits(count * len(keys), elements, "fields")
    element = "" if count == 1 else "({k})"
    return tuple(
        {key: elements.matrix(f"{where}{element.format(k=k + 1)}.{key}", depth + 1) for key in keys}
        for k in range(count)
    )


def _inflate(compressed: memoryview, order: str, where: str) -> memoryview:
    """An miCOMPRESSED element's data -> the data of the one miMATRIX element it holds.

    Inflates no more than the matrix declares (plus one byte, to notice more): a damaged size
    is never allocated. The stream must end, its checksum verified, at the element's end.
    """
    try:
        inflater = zlib.decompressobj()
        tag = inflater.decompress(compressed, _TAG_BYTES)
        if len(tag) < _TAG_BYTES:
            raise MatError(f"{where}: compressed element inflates to {len(tag)} bytes, less than a tag")
        kind, size = struct.unpack(order + "II", tag)
        if kind != _MI_MATRIX:
            raise MatError(f"{where}: compressed element holds an element of type {kind}, not a matrix")
        if size > MAX_INFLATED_BYTES:
            # A few MB of zlib can inflate a thousandfold: a crafted size must not take a worker's
            # memory (the OOM killer would end it without naming the file).
            raise MatError(
                f"{where}: compressed matrix declares {size} bytes, above the {MAX_INFLATED_BYTES} "
                "this reader inflates"
            )
        data = inflater.decompress(inflater.unconsumed_tail, size + 1)
        if len(data) == size and not inflater.eof:
            data += inflater.decompress(inflater.unconsumed_tail, 1)
    except zlib.error as e:
        raise MatError(f"{where}: compressed element does not inflate: {e}") from None
    if len(data) != size:
        more = "more" if len(data) > size else "fewer"
        raise MatError(
            f"{where}: compressed element inflates to {more} than the {size} bytes its matrix declares"
        )
    if not inflater.eof:
        raise MatError(f"{where}: compressed element is cut short")
    if inflater.unused_data:
        raise MatError(
            f"{where}: {len(inflater.unused_data)} bytes follow the compressed stream in its element"
        )
    return memoryview(data)


def read_variables(data: bytes) -> dict:
    """A MATLAB 5 file's bytes -> ``{variable name: Matrix}`` (a repeated name: the last, as
    ``loadmat``). Raises ``MatError`` unless the whole file checks out."""
    if len(data) < HEADER_BYTES:
        raise MatError(f"{len(data)} bytes, shorter than the {HEADER_BYTES}-byte MATLAB 5 header")
    if 0 in data[:4]:
        raise MatError("no header text: a MATLAB 4 file or not MATLAB at all")
    order = {b"IM": "<", b"MI": ">"}.get(bytes(data[126:128]))
    if order is None:
        raise MatError(f"the header's byte-order mark is {bytes(data[126:128])!r}, not b'IM' or b'MI'")
    version = struct.unpack_from(order + "H", data, 124)[0]
    if version == _VERSION_73:
        raise HDF5MatError("a MATLAB 7.3 (HDF5) file")
    if version != _VERSION_5:
        raise MatError(f"the header's version is {version:#06x}, not MATLAB 5's 0x0100")
    view = memoryview(data)
    variables = {}
    pos = HEADER_BYTES
    while pos < len(data):
        where = f"variable {len(variables) + 1} (at byte {pos})"
        if len(data) - pos < _TAG_BYTES:
            raise MatError(f"{len(data) - pos} stray bytes at the end of the file")
        kind, size = struct.unpack_from(order + "II", data, pos)
        end = pos + _TAG_BYTES + size
        if not size or end > len(data):
            raise MatError(f"{where}: claims {size} bytes, {len(data) - pos - _TAG_BYTES} are left")
        body = view[pos + _TAG_BYTES : end]
        if kind == _MI_COMPRESSED:
            body = _inflate(body, order, where)
        elif kind != _MI_MATRIX:
            raise MatError(f"{where}: an element of type {kind}, neither a matrix nor a compressed one")
        name = _header(_Elements(body, order, where))[3]
        variables[name] = _matrix(body, order, name or where, 0)
        pos = end
    return variables


def struct_field(matrix: Matrix, field: str) -> Matrix:
    """The matrix of ``field`` in ``matrix``, a struct with one element."""
    if matrix.mclass != _MX_STRUCT:
        raise MatError(f"{matrix.where} is a {matrix.class_name}, not a struct")
    if len(matrix.fields) != 1:
        raise MatError(f"{matrix.where} is a {matrix.shape()} struct array, not one struct")
    (fields,) = matrix.fields
    if field not in fields:
        raise MatError(f"{matrix.where} has no {field} field (fields: {sorted(fields)})")
    return fields[field]


def numeric_array(matrix: Matrix) -> np.ndarray:
    """A real numeric matrix's values as ``loadmat`` returns them (``mat_dtype=False``): the
    stored data type, MATLAB's dimensions, column-major. A read-only view of the file's bytes."""
    if matrix.real is None:
        raise MatError(f"{matrix.where} is a {matrix.class_name}, not a numeric matrix")
    if matrix.flags & _COMPLEX_FLAG:
        raise MatError(f"{matrix.where} is complex")
    return matrix.real.reshape(matrix.dims[::-1]).T
