"""GGUF files: the container read from a memory map, and its tensors' block formats dequantized in torch.

A GGUF file (llama.cpp, Ollama, LM Studio) is a header of typed metadata, a directory of tensors
(name, shape, ggml type, offset), and then the tensors' bytes. `GGUFFile` parses the first two
straight from a memory map; the bytes stay there until `dequantize_rows` decodes them.

Each quantized format stores a tensor's rows as blocks of 32 or 256 values: small integers and
one or more float16 scales per block (the "K" formats add 6-bit sub-block scales). The layouts
follow ggml's block_* structs (ggml-common.h); every function below turns (n_blocks, bytes) of
raw uint8 into (n_blocks, values) of float32, in the order of arithmetic that ggml and the gguf
package use, so the results are bit for bit theirs. Vectorized torch runs these at several
GB/s on two cores, which is what lets a GGUF model load without a converted copy on disk.

What the metadata means for a model (architectures, tensor names, the config) is load.py's.
"""

from __future__ import annotations

import mmap
import struct
import warnings
from pathlib import Path

import numpy as np
import torch

# ----------------------------------------------------------------------------- the container


class UnreadableGGUF(ValueError):
    """A file that is not GGUF, or a GGUF file cut short or damaged."""


class UnsupportedGGUF(ValueError):
    """A well-formed GGUF file of a version this reader does not know."""


class GGUFFile:
    """A GGUF file's metadata and tensor directory, read straight from a memory map.

    The gguf package's own reader builds a numpy view per array element and takes 15 s on a
    128k-token vocabulary; this reads the same in a fraction of a second. The tensors' bytes
    stay in the map until `dequantize_rows` decodes them (the block formats below).
    """

    SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
    STRING, ARRAY = 8, 9

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as f:
            self.data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if path.stat().st_size else b""
        try:
            self._parse()
        except (UnreadableGGUF, UnsupportedGGUF):
            raise
        except (struct.error, IndexError, OverflowError, ValueError) as e:  # a count or length past the end
            raise UnreadableGGUF(f"{path} is not a readable GGUF file: truncated or corrupt header ({e}). Download or copy it again") from e

    def _parse(self):
        magic = bytes(self.data[:4])
        if magic != b"GGUF":
            raise UnreadableGGUF(f"{self.path} is not a readable GGUF file: it starts with {magic!r}, not b'GGUF'")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", self.data, 4)
        if version not in (2, 3):
            raise UnsupportedGGUF(f"{self.path}: GGUF version {version} is not supported (2 and 3 are)")
        self.pos = 24
        self.metadata = {}
        for _ in range(n_kv):
            key = self._string()
            self.metadata[key] = self._value(self._scalar("<I"))
        infos = []
        for _ in range(n_tensors):
            name = self._string()
            dims = [self._scalar("<Q") for _ in range(self._scalar("<I"))]
            infos.append((name, dims, self._scalar("<I"), self._scalar("<Q")))
        alignment = self.metadata.get("general.alignment", 32)
        start = -(-self.pos // alignment) * alignment
        self.tensors = {}  # name -> (type name, shape in PyTorch order, byte offset, byte size)
        for name, dims, type_id, offset in infos:
            kind, block, size = TYPES.get(type_id, (f"type {type_id}", 1, 0))
            nbytes = int(np.prod(dims)) // block * size
            if start + offset + nbytes > len(self.data):
                raise UnreadableGGUF(
                    f"{self.path} is not a readable GGUF file: it ends inside tensor {name} "
                    f"({len(self.data):,} bytes, truncated). Download or copy it again"
                )
            self.tensors[name] = (kind, tuple(reversed(dims)), start + offset, nbytes)

    def _scalar(self, fmt: str):
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def _string(self) -> str:
        n = self._scalar("<Q")
        self.pos += n
        if self.pos > len(self.data):
            raise IndexError("string runs past the end of the file")
        return bytes(self.data[self.pos - n : self.pos]).decode("utf-8")

    def _strings(self, count: int) -> list[str]:
        """`count` strings in a row, in one tight loop (half the time of a _string call for each)."""
        data, pos, length, out = self.data, self.pos, struct.Struct("<Q").unpack_from, []
        for _ in range(count):
            (n,) = length(data, pos)
            out.append(data[pos + 8 : pos + 8 + n].decode("utf-8"))
            pos += 8 + n
        if pos > len(data):
            raise IndexError("string runs past the end of the file")
        self.pos = pos
        return out

    def _value(self, kind: int):
        if kind == self.STRING:
            return self._string()
        if kind == self.ARRAY:
            element, count = self._scalar("<I"), self._scalar("<Q")
            if element in self.SCALARS:  # numbers: one vectorized read
                dtype = np.dtype(self.SCALARS[element])
                values = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos)
                self.pos += dtype.itemsize * count
                return values.tolist()
            if element == self.STRING:  # a vocabulary or its merges: 150k strings and more
                return self._strings(count)
            return [self._value(element) for _ in range(count)]
        if kind not in self.SCALARS:
            raise ValueError(f"{self.path}: unknown GGUF value type {kind}")
        return self._scalar(self.SCALARS[kind])

    def tensor_rows(self, name: str, part: int | None = None):
        """Yield (rows, float32 values) of the named tensor in PyTorch's (rows, columns) order, a few
        rows at a time (dequantize_rows), releasing the bytes read as it goes. `part`: only
        that index of the first axis (one expert of a stacked 3-D tensor)."""
        kind, shape, offset, nbytes = self.tensors[name]
        if part is not None:
            nbytes //= shape[0]
            offset, shape = offset + part * nbytes, shape[1:]
        yield from dequantize_rows(self.data, offset, kind, shape)
        self.release(offset, nbytes)

    def release(self, offset: int, nbytes: int) -> None:
        """Drop the mapped pages of bytes already read from this process's resident memory
        (they stay in the OS's file cache), so a load holds the model, not the model plus the file."""
        if hasattr(self.data, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            start = offset // mmap.PAGESIZE * mmap.PAGESIZE
            self.data.madvise(mmap.MADV_DONTNEED, start, offset + nbytes - start)


# ----------------------------------------------------------------------------- block formats


def _f16(raw: torch.Tensor) -> torch.Tensor:
    """(n, 2) little-endian bytes -> (n, 1) float32."""
    return raw.contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """(n, k) bytes -> (n, 2, k): low nibbles, then high nibbles (ggml's order within a group)."""
    return torch.stack((qs & 0x0F, qs >> 4), dim=1)


def _bits(packed: torch.Tensor, count: int, width: int) -> torch.Tensor:
    """(n, k) bytes -> (n, count, k): field i of every byte is (byte >> (width * i)) & mask."""
    mask = (1 << width) - 1
    return torch.stack([(packed >> (width * i)) & mask for i in range(count)], dim=1)


BIT_INDEX = torch.arange(32, dtype=torch.int32)


def _qh32(raw: torch.Tensor) -> torch.Tensor:
    """(n, 4) bytes of a little-endian uint32 -> (n, 32): bit j of it, as uint8."""
    return ((raw.contiguous().view(torch.int32) >> BIT_INDEX) & 1).to(torch.uint8)


def q4_0(b):  # d, 16 bytes of 4-bit values, offset 8
    d, q = _f16(b[:, :2]), _nibbles(b[:, 2:]).reshape(-1, 32)
    return d * (q.to(torch.int8) - 8).float()


def q4_1(b):  # d, m, 16 bytes of 4-bit values
    d, m, q = _f16(b[:, :2]), _f16(b[:, 2:4]), _nibbles(b[:, 4:]).reshape(-1, 32)
    return d * q.float() + m


def q5_0(b):  # d, 32 high bits, 16 bytes of low nibbles, offset 16
    d, q = _f16(b[:, :2]), _nibbles(b[:, 6:]).reshape(-1, 32) | (_qh32(b[:, 2:6]) << 4)
    return d * (q.to(torch.int8) - 16).float()


def q5_1(b):  # d, m, 32 high bits, 16 bytes of low nibbles
    d, m = _f16(b[:, :2]), _f16(b[:, 2:4])
    q = _nibbles(b[:, 8:]).reshape(-1, 32) | (_qh32(b[:, 4:8]) << 4)
    return d * q.float() + m


def q8_0(b):  # d, 32 int8
    return b[:, 2:].contiguous().view(torch.int8).float() * _f16(b[:, :2])


def q2_k(b):  # 16 scale bytes (4-bit scale, 4-bit min), 64 bytes of 2-bit values, d, dmin
    n = b.shape[0]
    scales, d, dmin = b[:, :16], _f16(b[:, 80:82]), _f16(b[:, 82:84])
    dl = (d * (scales & 0x0F).float()).reshape(n, 16, 1)
    ml = (dmin * (scales >> 4).float()).reshape(n, 16, 1)
    q = _bits(b[:, 16:80].reshape(n * 2, 32), 4, 2).reshape(n, 16, 16).float()
    return (dl * q - ml).reshape(n, 256)


def q3_k(b):  # 32 bytes of high bits, 64 bytes of 2-bit values, 12 bytes of 6-bit scales, d
    n = b.shape[0]
    hmask, qs, packed, d = b[:, :32], b[:, 32:96], b[:, 96:108], _f16(b[:, 108:110])
    low = _bits(packed[:, :8], 2, 4).reshape(n, 16)
    high = _bits(packed[:, 8:], 4, 2).reshape(n, 16)
    scales = ((low | (high << 4)).to(torch.int8) - 32).float()
    dl = (d * scales).reshape(n, 16, 1)
    ql = _bits(qs.reshape(n * 2, 32), 4, 2).reshape(n, 16, 16)
    qh = (_bits(hmask, 8, 1).reshape(n, 16, 16)) ^ 1  # a clear bit means "subtract 4"
    q = (ql.to(torch.int8) - (qh << 2).to(torch.int8)).float()
    return (dl * q).reshape(n, 256)


def _k_scales(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K: 12 bytes -> eight 6-bit scales and eight 6-bit mins, each (n, 8) uint8."""
    d, m, md = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scale = torch.cat((d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)), dim=1)
    low = torch.cat((m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)), dim=1)
    return scale, low


def q4_k(b):  # d, dmin, 12 bytes of scales and mins, 128 bytes of 4-bit values
    n = b.shape[0]
    d, dmin = _f16(b[:, :2]), _f16(b[:, 2:4])
    scale, low = _k_scales(b[:, 4:16])
    dl, ml = (d * scale.float()).reshape(n, 8, 1), (dmin * low.float()).reshape(n, 8, 1)
    q = _nibbles(b[:, 16:].reshape(n * 4, 32)).reshape(n, 8, 32).float()
    return (dl * q - ml).reshape(n, 256)


def q5_k(b):  # d, dmin, 12 bytes of scales and mins, 32 bytes of high bits, 128 bytes of nibbles
    n = b.shape[0]
    d, dmin = _f16(b[:, :2]), _f16(b[:, 2:4])
    scale, low = _k_scales(b[:, 4:16])
    dl, ml = (d * scale.float()).reshape(n, 8, 1), (dmin * low.float()).reshape(n, 8, 1)
    ql = _nibbles(b[:, 48:].reshape(n * 4, 32)).reshape(n, 8, 32)
    qh = _bits(b[:, 16:48], 8, 1).reshape(n, 8, 32)
    return (dl * (ql | (qh << 4)).float() - ml).reshape(n, 256)


def q6_k(b):  # 128 bytes of low nibbles, 64 bytes of 2-bit highs, 16 int8 scales, d
    n = b.shape[0]
    ql = _nibbles(b[:, :128].reshape(n * 2, 64)).reshape(n, 8, 32)
    qh = _bits(b[:, 128:192].reshape(n * 2, 32), 4, 2).reshape(n, 8, 32)
    scales = b[:, 192:208].contiguous().view(torch.int8).float()
    dl = (_f16(b[:, 208:210]) * scales).reshape(n, 16, 1)
    q = ((ql | (qh << 4)).to(torch.int8) - 32).reshape(n, 16, 16).float()
    return (dl * q).reshape(n, 256)


IQ4_VALUES = torch.tensor([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=torch.float32)


def iq4_nl(b):  # d, 16 bytes of 4-bit indices into IQ4_VALUES, a non-linear grid
    d, q = _f16(b[:, :2]), _nibbles(b[:, 2:]).reshape(-1, 32)
    return d * IQ4_VALUES[q.long()]


def iq4_xs(b):  # d, 16 high scale bits, 4 bytes of low scale nibbles, 128 bytes of 4-bit indices
    n = b.shape[0]
    high = (b[:, 2].int() | (b[:, 3].int() << 8))[:, None] >> torch.arange(0, 16, 2) & 3  # (n, 8)
    low = torch.stack((b[:, 4:8] & 0x0F, b[:, 4:8] >> 4), dim=2).reshape(n, 8)  # byte by byte: low, high
    dl = (_f16(b[:, :2]) * ((low.int() | (high << 4)) - 32).float()).reshape(n, 8, 1)
    q = _nibbles(b[:, 8:].reshape(n * 8, 16)).reshape(n, 8, 32)
    return (dl * IQ4_VALUES[q.long()]).reshape(n, 256)


def f32(b):
    return b.contiguous().view(torch.float32)


def f16(b):
    return b.contiguous().view(torch.float16).float()


def bf16(b):
    return b.contiguous().view(torch.bfloat16).float()


# name -> (ggml type id, values per block, bytes per block, dequantize)
FORMATS = {
    "F32": (0, 1, 4, f32),
    "F16": (1, 1, 2, f16),
    "BF16": (30, 1, 2, bf16),
    "Q4_0": (2, 32, 18, q4_0),
    "Q4_1": (3, 32, 20, q4_1),
    "Q5_0": (6, 32, 22, q5_0),
    "Q5_1": (7, 32, 24, q5_1),
    "Q8_0": (8, 32, 34, q8_0),
    "Q2_K": (10, 256, 84, q2_k),
    "Q3_K": (11, 256, 110, q3_k),
    "Q4_K": (12, 256, 144, q4_k),
    "Q5_K": (13, 256, 176, q5_k),
    "Q6_K": (14, 256, 210, q6_k),
    "IQ4_NL": (20, 32, 18, iq4_nl),
    "IQ4_XS": (23, 256, 136, iq4_xs),
}
# ggml's other types, named in errors (their sizes let a file with them still be parsed)
OTHER_TYPES = {
    9: ("Q8_1", 32, 36),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
}
TYPES = {type_id: (name, block, size) for name, (type_id, block, size, _) in FORMATS.items()} | OTHER_TYPES
CHUNK_VALUES = 1 << 18  # values per step (1 MB of float32): the intermediates of a step stay in cache


def dequantize_rows(data, offset: int, kind: str, shape: tuple[int, ...]):
    """Yield (rows, float32 values of those rows) for a `kind` tensor of `shape` stored at
    data[offset:] (a buffer such as a memory map; read, never written): a few whole rows at a
    time, so a caller can store them in any dtype, or quantize them row by row, without ever
    holding the whole tensor in float32."""
    if kind not in FORMATS:
        raise ValueError(f"unsupported tensor type {kind}; supported: {', '.join(FORMATS)}")
    _, block, size, decode = FORMATS[kind]
    n_rows, row = (shape[0], int(np.prod(shape[1:]))) if len(shape) > 1 else (1, int(np.prod(shape)))
    if row % block:
        raise ValueError(f"a {kind} tensor holds whole blocks of {block} values, not rows of {row}")
    blocks_per_row = row // block
    with warnings.catch_warnings():  # the map is read-only, and nothing here writes to it
        warnings.filterwarnings("ignore", message="The given buffer is not writable")
        raw = torch.frombuffer(data, dtype=torch.uint8, count=n_rows * blocks_per_row * size, offset=offset)
    raw = raw.view(n_rows * blocks_per_row, size)
    step = max(1, CHUNK_VALUES // row)
    for start in range(0, n_rows, step):
        rows = slice(start, min(start + step, n_rows))
        values = decode(raw[rows.start * blocks_per_row : rows.stop * blocks_per_row])
        if len(shape) > 1:
            yield rows, values.view(rows.stop - rows.start, *shape[1:])
        else:  # a vector is one piece: all of it
            yield slice(None), values.view(shape)


def dequantize(data, offset: int, kind: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The whole tensor as float32 (see dequantize_rows)."""
    out = torch.empty(shape)
    for rows, values in dequantize_rows(data, offset, kind, shape):
        out[rows] = values
    return out
