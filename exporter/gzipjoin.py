"""One gzip member (RFC 1952) joined from separately compressed parts, as pigz does.

Each part is a raw deflate stream ended with a full flush: byte-aligned, not final, and
independent of what comes before it, so cached parts can be joined in any order between
one gzip header and one trailer. The trailer's CRC-32 is combined from the parts' own
CRCs with zlib's crc32_combine arithmetic, which Python's zlib does not expose. A
gzip body made of several members instead is valid RFC 1952 but curl and browsers
decode only the first member, silently.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

# CRC-32 (IEEE 802.3), reflected, as zlib and gzip compute it.
_POLY = 0xEDB88320
_TOP = 1 << 31  # x^0 in the reflected representation


def _times_x4() -> tuple[int, ...]:
    """n(x) * x^4 for the 16 reflected values n of the lowest nibble (degrees 28..31)."""
    out = []
    for n in range(16):
        for _ in range(4):
            n = (n >> 1) ^ _POLY if n & 1 else n >> 1
        out.append(n)
    return tuple(out)


_X4 = _times_x4()


def multmodp(a: int, b: int) -> int:
    """a(x) * b(x) modulo the CRC-32 polynomial, both reflected 32-bit (zlib's multmodp).

    zlib walks a's 32 bits; this walks its 8 nibbles (Horner, highest degrees first)
    with a 16-entry table of b's multiples, which is about twice as fast in Python.
    """
    b1 = (b >> 1) ^ _POLY if b & 1 else b >> 1
    b2 = (b1 >> 1) ^ _POLY if b1 & 1 else b1 >> 1
    b3 = (b2 >> 1) ^ _POLY if b2 & 1 else b2 >> 1
    # t[n] = n(x) * b(x) for a nibble n whose bit 3 is x^0 and bit 0 is x^3.
    low, high = (0, b3, b2, b2 ^ b3), (0, b1, b, b ^ b1)
    t = [h ^ lo for h in high for lo in low]
    x4 = _X4
    p = t[a & 15]
    p = (p >> 4) ^ x4[p & 15] ^ t[(a >> 4) & 15]
    p = (p >> 4) ^ x4[p & 15] ^ t[(a >> 8) & 15]
    p = (p >> 4) ^ x4[p & 15] ^ t[(a >> 12) & 15]
    p = (p >> 4) ^ x4[p & 15] ^ t[(a >> 16) & 15]
    p = (p >> 4) ^ x4[p & 15] ^ t[(a >> 20) & 15]
    p = (p >> 4) ^ x4[p & 15] ^ t[(a >> 24) & 15]
    return (p >> 4) ^ x4[p & 15] ^ t[(a >> 28) & 15]


def _x2n_table() -> tuple[int, ...]:
    """x^(2^n) modulo the polynomial for n = 0..31."""
    table, p = [], 1 << 30  # x^1
    for _ in range(32):
        table.append(p)
        p = multmodp(p, p)
    return tuple(table)


_X2N = _x2n_table()


def shift_operator(length: int) -> int:
    """x^(8 * length) modulo the polynomial: what appending `length` bytes does to a CRC.

    zlib's x2nmodp(length, 3). Multiplying by it is the GF(2) matrix power of the older
    crc32_combine (zlib before 1.2.12), in a few dozen operations instead of matrix
    squarings.
    """
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    p, k = _TOP, 3
    while length:
        if length & 1:
            p = multmodp(_X2N[k & 31], p)
        length >>= 1
        k += 1
    return p


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """zlib.crc32(a + b) from crc1 = zlib.crc32(a), crc2 = zlib.crc32(b) and len2 = len(b)."""
    return multmodp(shift_operator(len2), crc1) ^ crc2


@dataclass(frozen=True, slots=True)
class Run:
    """CRC-32 and length of some bytes, and the shift operator of that length."""

    crc: int = 0
    size: int = 0
    shift: int = _TOP

    @staticmethod
    def of(data: bytes | bytearray | memoryview) -> Run:
        size = len(data)
        return Run(zlib.crc32(data), size, shift_operator(size))

    def then(self, other: Run) -> Run:
        """The run of these bytes followed by `other`'s."""
        return Run(
            multmodp(other.shift, self.crc) ^ other.crc,
            self.size + other.size,
            multmodp(self.shift, other.shift),
        )


def fold(runs: Iterable[Run]) -> Run:
    """The run of the concatenation, left to right: one multiplication per run."""
    crc = size = 0
    for run in runs:
        crc = multmodp(run.shift, crc) ^ run.crc
        size += run.size
    return Run(crc, size, shift_operator(size))


@dataclass(frozen=True, slots=True)
class Part:
    """Raw deflate of some bytes, byte-aligned and not final, with their CRC and length."""

    deflate: bytes
    run: Run


def compress(data: bytes | bytearray | memoryview, level: int) -> Part:
    """One part: a fresh raw deflate stream (no dictionary from earlier parts), flushed.

    Z_FULL_FLUSH ends it on a byte boundary with an empty stored block that is not the
    final block, so the decoder carries on into whatever part comes next.
    """
    compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
    deflate = compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH)
    return Part(deflate, Run.of(data))


def header(level: int) -> bytes:
    """A gzip header without name or time (MTIME 0), XFL as gzip sets it, OS unknown."""
    xfl = 4 if level == 1 else 2 if level == 9 else 0
    return struct.pack("<BBBBIBB", 0x1F, 0x8B, 8, 0, 0, xfl, 255)


def trailer(run: Run, level: int) -> bytes:
    """The final deflate block, then CRC-32 and ISIZE (length mod 2^32) of the whole text."""
    final = zlib.compressobj(level, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)
    return final + struct.pack("<II", run.crc, run.size & 0xFFFFFFFF)


def member(parts: Iterable[Part], level: int) -> bytes:
    """One gzip member of the parts' texts, in order."""
    parts = list(parts)
    run = fold(p.run for p in parts)
    return header(level) + b"".join(p.deflate for p in parts) + trailer(run, level)
