"""GGML block formats (gguf_file.py): every format against llama.cpp's gguf package bit for bit, and
Q4_K and Q6_K against blocks built here from the format's definition (ggml's block_q4_K and
block_q6_K and their dequantize_row_* loops), with values chosen so that float32 is exact."""

import numpy as np
import pytest
import torch

from gguf_file import FORMATS, dequantize, dequantize_rows


def random_blocks(kind: str, rows: int, blocks_per_row: int, rng) -> np.ndarray:
    """Random bytes for `kind`, with every float16 scale field a finite number below 1 (bytes
    below 0x3C keep each half's exponent small; the integer fields may take any value)."""
    _, block, size, _ = FORMATS[kind]
    raw = rng.integers(0, 256, size=(rows * blocks_per_row, size), dtype=np.uint8)
    if block == 1:  # plain floats: keep them finite
        raw = rng.integers(0, 0x3C, size=raw.shape, dtype=np.uint8)
    for start in SCALE_BYTES.get(kind, ()):
        raw[:, start : start + 2] = rng.integers(0, 0x3C, size=(raw.shape[0], 2), dtype=np.uint8)
    return raw.reshape(rows, blocks_per_row * size)


SCALE_BYTES = {  # where each format keeps its float16 scales
    "Q4_0": (0,),
    "Q4_1": (0, 2),
    "Q5_0": (0,),
    "Q5_1": (0, 2),
    "Q8_0": (0,),
    "Q2_K": (80, 82),
    "Q3_K": (108,),
    "Q4_K": (0, 2),
    "Q5_K": (0, 2),
    "Q6_K": (208,),
    "IQ4_NL": (0,),
    "IQ4_XS": (0,),
}


@pytest.mark.parametrize("kind", list(FORMATS))
def test_every_format_equals_the_gguf_package(kind):
    import gguf

    rng = np.random.default_rng(sum(map(ord, kind)))
    _, block, _, _ = FORMATS[kind]
    raw = random_blocks(kind, rows=6, blocks_per_row=3, rng=rng)
    expected = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[kind]).astype(np.float32)
    ours = dequantize(raw.tobytes(), 0, kind, (6, 3 * block)).numpy()
    assert ours.shape == expected.shape and np.isfinite(ours).all()
    assert np.array_equal(ours, expected)


def test_rows_come_in_whole_pieces_and_cover_the_tensor(monkeypatch):
    import gguf_file

    monkeypatch.setattr(gguf_file, "CHUNK_VALUES", 600)  # two rows of 256 per piece
    raw = random_blocks("Q6_K", rows=5, blocks_per_row=1, rng=np.random.default_rng(0)).tobytes()
    pieces = list(dequantize_rows(raw, 0, "Q6_K", (5, 256)))
    assert [rows for rows, _ in pieces] == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert torch.equal(torch.cat([v for _, v in pieces]), dequantize(raw, 0, "Q6_K", (5, 256)))


def test_offsets_and_bad_shapes():
    raw = random_blocks("Q8_0", rows=2, blocks_per_row=2, rng=np.random.default_rng(1)).tobytes()
    assert torch.equal(dequantize(b"xyz" + raw, 3, "Q8_0", (2, 64)), dequantize(raw, 0, "Q8_0", (2, 64)))
    with pytest.raises(ValueError, match="whole blocks of 32 values, not rows of 48"):
        dequantize(raw, 0, "Q8_0", (2, 48))
    with pytest.raises(ValueError, match="unsupported tensor type IQ2_XXS"):
        dequantize(raw, 0, "IQ2_XXS", (2, 256))


# ----------------------------------------------------------------------------- blocks built by hand


def f16_bytes(x: float) -> bytes:
    return np.float16(x).tobytes()


def q4_k_block(d, dmin, scales, mins, q) -> bytes:
    """ggml's block_q4_K: half d, half dmin, 12 bytes of eight 6-bit scales and eight 6-bit
    mins (get_scale_min_k4's layout), 128 bytes: for each 64 values, 32 bytes whose low
    nibbles are values 0..31 and high nibbles values 32..63."""
    packed = [0] * 12
    for j in range(8):
        if j < 4:
            packed[j] |= scales[j]
            packed[j + 4] |= mins[j]
        else:
            packed[j + 4] |= (scales[j] & 0x0F) | ((mins[j] & 0x0F) << 4)
            packed[j - 4] |= (scales[j] >> 4) << 6
            packed[j] |= (mins[j] >> 4) << 6
    qs = [0] * 128
    for chunk in range(4):
        for lane in range(32):
            qs[32 * chunk + lane] = q[64 * chunk + lane] | (q[64 * chunk + 32 + lane] << 4)
    return f16_bytes(d) + f16_bytes(dmin) + bytes(packed) + bytes(qs)


def q6_k_block(d, scales, q) -> bytes:
    """ggml's block_q6_K: 128 bytes of low nibbles, 64 bytes of 2-bit high parts, 16 int8
    scales (one per 16 values), half d; q are the 6-bit values 0..63 (stored minus 32)."""
    ql, qh = [0] * 128, [0] * 64
    for half in range(2):
        for lane in range(32):
            q1, q2, q3, q4 = (q[128 * half + 32 * k + lane] for k in range(4))
            ql[64 * half + lane] = (q1 & 0x0F) | ((q3 & 0x0F) << 4)
            ql[64 * half + 32 + lane] = (q2 & 0x0F) | ((q4 & 0x0F) << 4)
            qh[32 * half + lane] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6)
    return bytes(ql) + bytes(qh) + np.array(scales, dtype=np.int8).tobytes() + f16_bytes(d)


def test_q4_k_from_the_format_definition():
    """value = d * scale[s] * q - dmin * min[s] for sub-block s of 32 values; d and dmin powers
    of two and small integers elsewhere, so every value is exact in float32."""
    rng = np.random.default_rng(7)
    blocks, expected = b"", []
    for d, dmin in ((0.5, 0.25), (2.0**-6, 2.0**-3)):
        scales, mins = rng.integers(0, 64, 8).tolist(), rng.integers(0, 64, 8).tolist()
        scales[5], mins[6] = 63, 63  # the high bits of every field are exercised
        q = rng.integers(0, 16, 256).tolist()
        blocks += q4_k_block(d, dmin, scales, mins, q)
        expected += [d * scales[i // 32] * q[i] - dmin * mins[i // 32] for i in range(256)]
    ours = dequantize(blocks, 0, "Q4_K", (2, 256))
    assert torch.equal(ours, torch.tensor(expected, dtype=torch.float32).view(2, 256))


def test_q6_k_from_the_format_definition():
    """value = d * scale[i // 16] * (q - 32), q 6 bits, scales signed 8 bits."""
    rng = np.random.default_rng(8)
    d = 2.0**-5
    scales = rng.integers(-128, 128, 16).tolist()
    q = rng.integers(0, 64, 256).tolist()
    q[0], q[255] = 0, 63  # both ends of the 6-bit range
    ours = dequantize(q6_k_block(d, scales, q), 0, "Q6_K", (1, 256))
    expected = torch.tensor([d * scales[i // 16] * (q[i] - 32) for i in range(256)], dtype=torch.float32)
    assert torch.equal(ours[0], expected)
