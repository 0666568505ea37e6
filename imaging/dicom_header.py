"""Fast reading of a DICOM file's header (no pixel data), identical to pydicom's own.

``pydicom.dcmread(path, stop_before_pixels=True)`` spends most of its time per element in
generic Python machinery (a generator, one ``read``/``tell`` pair per element, several
``Dataset`` constructions per file). For the common encodings of image files, Explicit or
Implicit VR Little Endian with a File Meta group, :func:`read_header_fast` walks the
elements over one buffer instead and builds the same ``FileDataset``: the same
``RawDataElement`` tuples (tag, VR, length, undecoded value, value offset, encoding flags), the
same File Meta dataset and original encoding, so every later attribute access behaves exactly
as on a header read by pydicom. Sequences of undefined length are parsed by pydicom's own
``read_sequence``. Anything else (no preamble, big endian, deflated, a command set, undefined
lengths other than sequences, an encoding that contradicts the transfer syntax, a truncated
element) returns ``None`` and the caller uses ``dcmread``, so the result never differs.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO, cast

from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.filereader import read_sequence
from pydicom.tag import BaseTag
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR
from pydicom.values import convert_string

__all__ = ["read_header_fast"]

_FIRST_READ = 16384
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})  # stop_before_pixels
_LONG_VRS = frozenset(vr.encode(default_encoding) for vr in EXPLICIT_VR_LENGTH_32)
_KNOWN_VRS = {vr.encode(default_encoding): str(vr.value) for vr in VR}
_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_LE = "1.2.840.10008.1.2.1"
# Big endian, deflated, and private syntaxes that pydicom remaps: left to pydicom.
_NOT_HANDLED = frozenset({"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
                          "1.2.840.10008.1.2.4.95"})
_CHARSET_TAG = 0x00080005
_ITEM_DELIMITER = 0xFFFEE00D
_UNDEFINED = 0xFFFFFFFF
_TAG_LEN_EXPLICIT = struct.Struct("<HH2sH")
_TAG_LEN_IMPLICIT = struct.Struct("<HHL")
_UINT32 = struct.Struct("<L")
_TAGS: dict[int, BaseTag] = {}  # one BaseTag per tag number seen (a few hundred in practice)
_MAX_CACHED_TAGS = 8192


def _raw_element(tag: BaseTag, vr: str | None, length: int, value: bytes | None, tell: int,
                 implicit: bool) -> RawDataElement:
    # RawDataElement(...) without the namedtuple's keyword-handling wrapper
    return tuple.__new__(RawDataElement,
                         (tag, vr, length, value, tell, implicit, True, True, False))


class _Buffer:
    """The bytes of a file from offset 0, read further on demand."""

    __slots__ = ("data", "eof", "fh")

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.data = fh.read(_FIRST_READ)
        self.eof = len(self.data) < _FIRST_READ

    def ensure(self, end: int) -> bool:
        """Make ``data`` hold at least ``end`` bytes; False if the file is shorter."""
        while len(self.data) < end and not self.eof:
            want = max(end - len(self.data), len(self.data))
            self.fh.seek(len(self.data))
            more = self.fh.read(want)
            self.eof = len(more) < want
            self.data += more
        return len(self.data) >= end


def _empty(vr: str | None) -> bytes | None:
    # the raw value pydicom gives an element of length 0
    return cast(bytes | None, empty_value_for_VR(vr, raw=True))


def _looks_explicit(vr: bytes) -> bool:
    # pydicom's test for the actual encoding of a dataset's first element
    return 0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B


def _file_meta(buf: _Buffer
               ) -> tuple[dict[BaseTag, RawDataElement | DataElement], int] | None:
    """Group 0002 elements (always Explicit VR Little Endian) and the offset after them."""
    elements: dict[BaseTag, RawDataElement | DataElement] = {}
    pos = 132
    data = buf.data
    while True:
        if not buf.ensure(pos + 8):
            return (elements, pos) if len(buf.data) == pos else None
        data = buf.data
        group, elem, vr_bytes, length = _TAG_LEN_EXPLICIT.unpack_from(data, pos)
        if group != 2:
            return elements, pos
        vr = _KNOWN_VRS.get(vr_bytes)
        if vr is None:
            return None
        head = 8
        if vr_bytes in _LONG_VRS:
            if not buf.ensure(pos + 12):
                return None
            data = buf.data
            length = _UINT32.unpack_from(data, pos + 8)[0]
            head = 12
        if length == _UNDEFINED:
            return None
        start = pos + head
        if not buf.ensure(start + length):
            return None
        data = buf.data
        tag = BaseTag(group << 16 | elem)
        value = data[start:start + length] if length else _empty(vr)
        elements[tag] = RawDataElement(tag, vr, length, value, start, False, True)
        pos = start + length


def _transfer_syntax(meta: dict[BaseTag, RawDataElement | DataElement]) -> str | None:
    elem = meta.get(BaseTag(0x00020010))
    if elem is None or not isinstance(elem.value, bytes):
        return None
    return elem.value.decode(default_encoding, errors="replace").strip(" \x00")


def _dataset(buf: _Buffer, pos: int, implicit: bool
             ) -> tuple[dict[BaseTag, RawDataElement | DataElement], int] | None:
    """Elements of the main dataset up to the pixel data, and the pixel data's offset."""
    elements: dict[BaseTag, RawDataElement | DataElement] = {}
    encoding: str | list[str] = default_encoding
    data = buf.data
    if len(data) >= pos + 8 and _looks_explicit(data[pos + 4:pos + 6]) == implicit:
        return None  # the first element contradicts the transfer syntax: pydicom's heuristics
    unpack_implicit = _TAG_LEN_IMPLICIT.unpack_from
    unpack_explicit = _TAG_LEN_EXPLICIT.unpack_from
    unpack_long = _UINT32.unpack_from
    known, long_vrs = _KNOWN_VRS, _LONG_VRS
    while True:
        if pos + 12 > len(data):
            if not buf.ensure(pos + 8):
                if len(buf.data) == pos:
                    return elements, pos  # end of file: no pixel data
                return None  # truncated element header
            data = buf.data
        if implicit:
            group, elem, length = unpack_implicit(data, pos)
            vr: str | None = None
            start = pos + 8
        else:
            group, elem, vr_bytes, length = unpack_explicit(data, pos)
            vr = known.get(vr_bytes)
            if vr is None:
                return None  # implicit switch or unknown VR: pydicom's heuristics
            if vr_bytes in long_vrs:
                if not buf.ensure(pos + 12):
                    return None
                data = buf.data
                length = unpack_long(data, pos + 8)[0]
                start = pos + 12
            else:
                start = pos + 8
        tag_int = group << 16 | elem
        if tag_int in _PIXEL_TAGS:
            return elements, pos
        if tag_int == _ITEM_DELIMITER or group <= 2:
            return None
        tag = _TAGS.get(tag_int)
        if tag is None:
            tag = BaseTag(tag_int)
            if len(_TAGS) < _MAX_CACHED_TAGS:
                _TAGS[tag_int] = tag
        if length == _UNDEFINED:
            sq_vr = vr
            if implicit:
                try:
                    sq_vr = dictionary_VR(tag_int)
                except KeyError:
                    return None
            if sq_vr != VR.SQ:
                return None
            buf.fh.seek(start)
            seq = read_sequence(buf.fh, implicit, True, length, encoding)
            elements[tag] = DataElement(tag, VR.SQ, seq, start, is_undefined_length=True)
            pos = buf.fh.tell()
            data = buf.data
            continue
        pos = start + length
        if pos > len(data):
            if not buf.ensure(pos):
                return None  # truncated value
            data = buf.data
        value = data[start:pos] if length else _empty(vr)
        if tag_int == _CHARSET_TAG:
            encoding = convert_encodings(convert_string(value or b"", True))
        elements[tag] = _raw_element(tag, vr, length, value, start, implicit)


def read_header_fast(fh: BinaryIO, path: Path) -> tuple[FileDataset, int] | None:
    """The header of an open DICOM file as ``dcmread(..., stop_before_pixels=True)`` reads it.

    Parameters
    ----------
    fh : binary file opened on ``path``, positioned anywhere
    path : Path
        The file (for the dataset's ``filename`` and ``timestamp``).

    Returns
    -------
    (FileDataset, int) or None
        The header and the byte offset of the PixelData element (the end of the file if there
        is none); ``None`` when the file's encoding is not handled here (use ``dcmread``).
    """
    fh.seek(0)
    buf = _Buffer(fh)
    if len(buf.data) < 132 or buf.data[128:132] != b"DICM":
        return None
    meta_read = _file_meta(buf)
    if meta_read is None:
        return None
    meta_elements, pos = meta_read
    ts = _transfer_syntax(meta_elements)
    if ts is None or ts in _NOT_HANDLED:
        return None
    implicit = ts == _IMPLICIT_LE
    if not buf.ensure(pos + 1):
        return None  # no dataset after the File Meta: pydicom assumes implicit VR
    if ts != _EXPLICIT_LE and not implicit and not ts.startswith("1.2.840.10008.1.2.4.") \
            and ts != "1.2.840.10008.1.2.5":
        return None  # unknown syntaxes: pydicom's guesswork
    read = _dataset(buf, pos, implicit)
    if read is None:
        return None
    elements, offset = read
    file_meta = FileMetaDataset(meta_elements)
    file_meta.set_original_encoding(
        is_implicit_vr=False, is_little_endian=True, character_encoding=default_encoding)
    fh.seek(offset)
    ds = FileDataset(fh, elements, buf.data[:128], file_meta, implicit, True)
    # pydicom passes ds._character_set, which is the default unless the header names one
    charset = ds._character_set if _CHARSET_TAG in elements else default_encoding
    ds.set_original_encoding(implicit, True, charset)
    return ds, offset
