"""Mu-law codec: known values, the reference formula as oracle, round trip, order, streaming."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from features.audio import (
    BLOCK,
    code_dtype,
    decode_table,
    encode_blocks,
    mu_law_decode,
    mu_law_decode_torch,
    mu_law_encode,
    mu_law_encode_torch,
    round_trip_snr_db,
    snr_db,
)
from tests.conftest import cuda_devices

CHANNELS = [2, 3, 16, 100, 256, 257, 1000, 1024, 1025, 4096, 65536]


def reference_v(x: np.ndarray, channels: int) -> np.ndarray:
    """The pre-floor value of torchaudio.functional.mu_law_encoding, written out literally.

    float64 numpy on the clipped input (the reference itself does not clip).
    """
    mu = channels - 1
    x = np.clip(x.astype(np.float64), -1.0, 1.0)
    x_mu = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    return (x_mu + 1) / 2 * mu + 0.5


def reference_codes(x: np.ndarray, channels: int) -> np.ndarray:
    """Oracle codes: floor of `reference_v` (torchaudio truncates with .to(int64); v > 0)."""
    return np.floor(reference_v(x, channels)).astype(np.int64)


def torch_reference_codes(x: torch.Tensor, channels: int) -> torch.Tensor:
    """torchaudio's mu_law_encoding body, verbatim, in the tensor's own precision."""
    mu = channels - 1.0
    mu = torch.tensor(mu, dtype=x.dtype)
    x_mu = torch.sign(x) * torch.log1p(mu * torch.abs(x)) / torch.log1p(mu)
    return ((x_mu + 1) / 2 * mu + 0.5).to(torch.int64)


def reference_decode(codes: np.ndarray, channels: int) -> np.ndarray:
    """The exact inverse, written out: x = sign(y) ((1 + mu)^|y| - 1) / mu, y = code/mu*2 - 1."""
    mu = channels - 1
    y = codes.astype(np.float64) / mu * 2 - 1
    return np.sign(y) * ((1 + mu) ** np.abs(y) - 1) / mu


def samples(rng: np.random.Generator, n: int) -> np.ndarray:
    """Uniform samples plus log-uniform quiet ones (mu-law's fine region), float32."""
    uniform = rng.uniform(-1, 1, n // 2)
    quiet = rng.choice([-1, 1], n - n // 2) * 10.0 ** rng.uniform(-7, 0, n - n // 2)
    return np.concatenate([uniform, quiet]).astype(np.float32)


def assert_matches_oracle(
    codes: np.ndarray, x: np.ndarray, channels: int, *, max_fraction: float = 1e-4
) -> None:
    """Equal to the oracle, except for samples within 1e-3 code units of a rounding boundary.

    There, float32 rounding (ours or torchaudio's) may land one code away; they are rare.
    """
    v = reference_v(x, channels)
    diff = codes.astype(np.int64) - np.floor(v).astype(np.int64)
    off = np.flatnonzero(diff)
    assert np.all(np.abs(diff[off]) <= 1), diff[off]
    assert np.all(np.abs(v[off] - np.round(v[off])) < 1e-3), v[off]
    assert off.size <= max(3, max_fraction * x.size), off.size


def test_known_values() -> None:
    x = np.array([0.0, -0.0, 1.0, -1.0, 0.5, -0.5], dtype=np.float32)
    assert mu_law_encode(x).tolist() == [128, 128, 255, 0, 239, 16]
    assert mu_law_encode(x).dtype == np.uint8


def test_zero_and_ends_for_every_channel_count() -> None:
    x = np.array([-1.0, -0.0, 0.0, 1.0], dtype=np.float32)
    for channels in [*range(2, 1200), 4096, 65535, 65536]:
        expected = reference_codes(x, channels).tolist()
        assert mu_law_encode(x, channels).tolist() == expected, channels


def test_clips_where_the_reference_does_not() -> None:
    x = np.array([1.2, -1.2, 7.0, np.inf, -np.inf], dtype=np.float32)
    mu = 255
    unclipped = np.floor((np.log1p(mu * 1.2) / np.log1p(mu) + 1) / 2 * mu + 0.5)
    assert unclipped == 259  # why we clip
    assert mu_law_encode(x).tolist() == [255, 0, 255, 255, 0]


def test_nan_encodes_as_top_code() -> None:
    assert mu_law_encode(np.array([np.nan], dtype=np.float32)).tolist() == [255]


@pytest.mark.parametrize("channels", CHANNELS)
def test_matches_reference_formula(rng: np.random.Generator, channels: int) -> None:
    x = samples(rng, 200_000)
    codes = mu_law_encode(x, channels)
    assert codes.dtype == code_dtype(channels)
    assert_matches_oracle(codes, x, channels)
    ends = mu_law_encode(np.array([-1.0, 0.0, 1.0], dtype=np.float32), channels)
    assert ends.tolist() == reference_codes(np.array([-1.0, 0.0, 1.0]), channels).tolist()


@pytest.mark.parametrize("channels", [2, 16, 256, 1000, 65536])
def test_torch_variant_matches_reference_formula(rng: np.random.Generator, channels: int) -> None:
    x = samples(rng, 100_000)
    codes = mu_law_encode_torch(torch.from_numpy(x), channels)
    assert codes.dtype == (torch.uint8 if channels <= 256 else torch.int32)
    assert_matches_oracle(codes.numpy(), x, channels)
    # torchaudio's own float32 formula agrees with the float64 oracle to the same standard.
    literal = torch_reference_codes(torch.from_numpy(x).clamp(-1, 1), channels)
    if channels <= 1024:  # float32 cannot resolve 65536 codes; ours switches to float64 there
        assert_matches_oracle(literal.numpy(), x, channels)


def test_torch_variant_known_values() -> None:
    x = torch.tensor([0.0, -0.0, 1.0, -1.0, 1.2, -1.2, float("nan")])
    assert mu_law_encode_torch(x).tolist() == [128, 128, 255, 0, 255, 0, 255]


@pytest.mark.parametrize("channels", [2, 256, 1000, 65536])
def test_decode_is_the_exact_inverse(channels: int) -> None:
    codes = np.arange(channels)
    expected = reference_decode(codes, channels).astype(np.float32)
    np.testing.assert_array_equal(decode_table(channels), expected)
    np.testing.assert_array_equal(mu_law_decode(codes, channels), expected)
    np.testing.assert_array_equal(mu_law_decode_torch(torch.from_numpy(codes), channels).numpy(),
                                  expected)


@pytest.mark.parametrize("channels", CHANNELS)
def test_decoded_levels_encode_to_themselves(channels: int) -> None:
    codes = np.arange(channels).astype(code_dtype(channels))
    np.testing.assert_array_equal(mu_law_encode(mu_law_decode(codes, channels), channels), codes)


def round_trip_bound(x: np.ndarray, channels: int) -> np.ndarray:
    """Half a code step in y maps to |dx| <= ln(1+mu)/mu^2 * (1 + mu|x|) * (1+mu)^(1/mu)."""
    mu = channels - 1
    x = np.clip(np.abs(x.astype(np.float64)), 0, 1)
    return np.log1p(mu) / mu**2 * (1 + mu * x) * (1 + mu) ** (1 / mu) * (1 + 1e-4) + 1e-7


@settings(max_examples=200, deadline=None)
@given(
    audio=arrays(np.float32, st.integers(1, 300),
                 elements=st.floats(-1, 1, width=32, allow_subnormal=True)),
    channels=st.sampled_from([16, 256, 1000]),
)
def test_round_trip_error_is_bounded(audio: np.ndarray, channels: int) -> None:
    decoded = mu_law_decode(mu_law_encode(audio, channels), channels)
    error = np.abs(decoded.astype(np.float64) - audio)
    assert np.all(error <= round_trip_bound(audio, channels))
    if channels == 256:
        assert np.all(error <= 0.035)  # the house-style bound for mu = 255


@settings(max_examples=100, deadline=None)
@given(audio=arrays(np.float32, st.integers(2, 300), elements=st.floats(-1.5, 1.5, width=32)))
def test_codes_are_monotone(audio: np.ndarray) -> None:
    ordered = np.sort(audio)
    assert np.all(np.diff(mu_law_encode(ordered).astype(np.int64)) >= 0)


def test_codes_are_monotone_across_every_boundary() -> None:
    # 64 consecutive float32 values either side of each of the 255 code boundaries, which sit
    # where y = code / mu * 2 - 1 is half-way between two levels.
    mu = 255
    y = (np.arange(1, mu + 1) - 0.5) * 2 / mu - 1
    edges = (np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu).astype(np.float32)
    up, down, near = edges.copy(), edges.copy(), [edges]
    for _ in range(64):
        up, down = np.nextafter(up, np.float32(2)), np.nextafter(down, np.float32(-2))
        near += [up, down]
    x = np.sort(np.concatenate(near))
    codes = mu_law_encode(x).astype(np.int64)
    assert np.all(np.diff(codes) >= 0)
    assert np.unique(codes).size == 256
    assert_matches_oracle(codes, x, 256, max_fraction=1.0)  # all of them are near a boundary


def test_block_streaming_equals_whole_array(rng: np.random.Generator) -> None:
    x = samples(rng, 3 * BLOCK + 123)
    whole = mu_law_encode(x)
    for block in (1000, BLOCK, 10 * BLOCK):
        np.testing.assert_array_equal(mu_law_encode(x, block=block), whole)
    for block in (1, 7):  # slow per sample: a prefix is enough
        np.testing.assert_array_equal(mu_law_encode(x[:5000], block=block), whole[:5000])
    cuts = np.sort(rng.choice(x.size, 20, replace=False))
    streamed = np.concatenate(list(encode_blocks(np.split(x, cuts))))
    np.testing.assert_array_equal(streamed, whole)


def test_shapes_dtypes_and_out(rng: np.random.Generator) -> None:
    x = samples(rng, 600).reshape(2, 3, 100)
    codes = mu_law_encode(x)
    assert codes.shape == x.shape
    np.testing.assert_array_equal(mu_law_encode(x.astype(np.float64)), codes)
    np.testing.assert_array_equal(mu_law_encode(x[:, ::2]), codes[:, ::2])  # non-contiguous
    out = np.empty(600, dtype=np.uint8)
    assert mu_law_encode(x, out=out) is out
    assert mu_law_encode(np.zeros(0, np.float32)).shape == (0,)
    assert mu_law_decode(codes).shape == x.shape


@pytest.mark.parametrize("bad", [
    lambda: mu_law_encode(np.array([1, 2], dtype=np.int16)),
    lambda: mu_law_encode(np.zeros(3, np.float32), channels=1),
    lambda: mu_law_encode(np.zeros(3, np.float32), channels=70_000),
    lambda: mu_law_encode(np.zeros(3, np.float32), out=np.empty(3, np.int64)),
    lambda: mu_law_decode(np.array([0, 300], dtype=np.int64)),
    lambda: mu_law_decode(np.array([0, 200], dtype=np.uint8), channels=128),
    lambda: mu_law_decode(np.array([0.5])),
    lambda: mu_law_encode_torch(torch.tensor([1, 2])),
    lambda: mu_law_decode_torch(torch.tensor([0, 256])),
])
def test_bad_arguments_say_what_to_do(bad: object) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        bad()  # type: ignore[operator]


def test_snr(rng: np.random.Generator) -> None:
    t = np.arange(16_000) / 16_000
    tone = (0.9 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    snr = round_trip_snr_db(tone)
    assert 35 < snr < 45  # 8-bit mu-law on a loud tone
    codes = mu_law_encode(tone)
    assert round_trip_snr_db(tone, codes=codes) == snr
    assert snr == pytest.approx(snr_db(tone, mu_law_decode(codes)), abs=1e-3)
    assert snr_db(tone, tone) == float("inf")
    assert round_trip_snr_db(tone, channels=65536) > snr + 40


@pytest.mark.gpu
@pytest.mark.skipif("cuda" not in cuda_devices(), reason="needs CUDA")
def test_torch_variant_on_gpu_matches_cpu(rng: np.random.Generator) -> None:
    x = torch.from_numpy(samples(rng, 1_000_000))
    gpu = mu_law_encode_torch(x.cuda())
    assert gpu.device.type == "cuda"
    assert_matches_oracle(gpu.cpu().numpy(), x.numpy(), 256)
    decoded = mu_law_decode_torch(gpu)
    np.testing.assert_array_equal(decoded.cpu().numpy(), mu_law_decode(gpu.cpu().numpy()))


# ---------------------------------------------------------------- the fused kernel vs. the numpy
# encoder as it was before the kernel (commit cacb11d), copied here verbatim as the oracle: the
# kernel must give the same codes bit for bit, boundary cases included.

def numpy_encoder_before_kernel(audio: np.ndarray, channels: int = 256) -> np.ndarray:
    """`mu_law_encode` of commit cacb11d (float32 numpy passes over 32K blocks)."""
    from features.audio import _encode_constants, _work_dtype

    mu = channels - 1
    x = np.asarray(audio)
    dtype = code_dtype(channels)
    flat_x = x.reshape(-1)
    out = np.empty(x.shape, dtype=dtype)
    flat_out = out.reshape(-1)
    inv, scale, offset = _encode_constants(mu)
    fix = dtype.type(np.iinfo(dtype).max - mu)
    n = flat_x.size
    block = BLOCK
    scratch = np.empty(min(block, max(n, 1)), dtype=_work_dtype(mu))
    negative = np.empty(scratch.size, dtype=dtype)
    for start in range(0, n, block):
        xb = flat_x[start : start + block]
        a, m, codes = scratch[: xb.size], negative[: xb.size], flat_out[start : start + block]
        np.abs(xb, out=a)
        if not a.max() <= 1.0:
            np.fmin(a, 1.0, out=a)
        np.add(a, inv, out=a)
        np.log2(a, out=a)
        np.multiply(a, scale, out=a)
        np.add(a, offset, out=a)
        np.copyto(codes, a, casting="unsafe")
        if dtype == np.uint8:
            np.less(xb, 0, out=m.view(np.bool_))
            np.negative(m, out=m)
        else:
            np.negative(np.less(xb, 0), dtype=dtype, out=m)
        np.bitwise_xor(codes, m, out=codes)
        if fix:
            np.bitwise_and(m, fix, out=m)
            np.subtract(codes, m, out=codes)
    return out


EDGES = np.array([0.0, -0.0, 1.0, -1.0, 1.5, -1.5, np.inf, -np.inf, np.nan, -np.nan, 1e-45,
                  -1e-45, 1.1754944e-38, -1.1754944e-38, 0.5, -0.5, 1 / 255, -1 / 255,
                  np.nextafter(np.float32(1), np.float32(0)), 3e38, -3e38], dtype=np.float32)


def boundary_neighbours(channels: int) -> np.ndarray:
    """Every code boundary of the kernel's table and the floats one and two ulps either side."""
    from features.audio import code_boundaries

    bounds = code_boundaries(channels).astype(np.int64)
    one = int(np.float32(1.0).view(np.uint32))
    near = np.clip(bounds[:, None] + np.arange(-2, 3)[None, :], 0, one).reshape(-1)
    x = np.unique(near).astype(np.uint32).view(np.float32)
    return np.concatenate([x, -x])


@pytest.mark.parametrize("channels", [2, 3, 16, 100, 255, 256, 257, 1000, 1024])
def test_kernel_matches_the_numpy_encoder_bit_for_bit(rng: np.random.Generator,
                                                      channels: int) -> None:
    x = np.concatenate([
        EDGES,
        boundary_neighbours(channels),
        rng.uniform(-1.2, 1.2, 200_000).astype(np.float32),
        (rng.uniform(-1, 1, 50_000) * 10.0 ** rng.uniform(-40, 0, 50_000)).astype(np.float32),
    ])
    want = numpy_encoder_before_kernel(x, channels)
    got = mu_law_encode(x, channels)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("channels", [256, 1000])
def test_kernel_matches_on_float64_input(rng: np.random.Generator, channels: int) -> None:
    """float64 is rounded to float32 for |x| but its sign is read in float64 (tiny negatives)."""
    x = np.concatenate([
        EDGES.astype(np.float64), [-1e-50, 1e-50, -1e-300, -5e-324, 5e-324, 1e300, -1e300],
        boundary_neighbours(channels).astype(np.float64),
        rng.uniform(-1.2, 1.2, 100_000) * 10.0 ** rng.uniform(-60, 0, 100_000),
    ])
    with np.errstate(over="ignore"):
        want = numpy_encoder_before_kernel(x, channels)
        got = mu_law_encode(x, channels)
    np.testing.assert_array_equal(got, want)


def test_kernel_on_strided_and_shaped_input(rng: np.random.Generator) -> None:
    x = rng.uniform(-1, 1, (64, 300)).astype(np.float32)
    np.testing.assert_array_equal(mu_law_encode(x[:, ::3]), numpy_encoder_before_kernel(x[:, ::3]))
    np.testing.assert_array_equal(mu_law_encode(x.T), numpy_encoder_before_kernel(x.T))
    big_endian = x.astype(">f4")  # not native: the numpy path
    np.testing.assert_array_equal(mu_law_encode(big_endian), numpy_encoder_before_kernel(x))


def kernels_for(x: np.ndarray, channels: int) -> dict[str, np.ndarray]:
    """The codes of each compiled kernel (scalar loop; 8-lane gather where the CPU has AVX2)."""
    from features.audio import _boundary_table, _fast_kernels

    kernels = _fast_kernels()
    assert kernels is not None
    table, shift = _boundary_table(channels - 1)
    got = {}
    for name, kernel in kernels._asdict().items():
        if kernel is not None:
            got[name] = np.full(x.size, 7, dtype=code_dtype(channels))
            kernel(x, got[name], table, shift, channels - 1)
    return got


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("channels", [2, 256, 1000, 1024])
def test_scalar_and_gather_kernels_agree_bit_for_bit(rng: np.random.Generator, dtype: type,
                                                     channels: int) -> None:
    """Both kernels directly (mu_law_encode picks the gather one for contiguous arrays)."""
    x = np.concatenate([
        EDGES, boundary_neighbours(channels), rng.uniform(-1.2, 1.2, 20_000).astype(np.float32),
    ]).astype(dtype)
    if dtype == np.float64:
        x = np.concatenate([x, [-1e-50, 1e-50, -5e-324, 1e300, -1e300]])
    rng.shuffle(x)  # edge cases in every lane position
    with np.errstate(over="ignore"):
        want = numpy_encoder_before_kernel(x, channels)
        for name, got in kernels_for(x, channels).items():
            np.testing.assert_array_equal(got, want, err_msg=name)


def test_kernels_on_every_length_and_offset(rng: np.random.Generator) -> None:
    """Lengths around the 16-sample step (the tail is scalar), unaligned starts, strided 1-D."""
    x = np.concatenate([EDGES, rng.uniform(-1, 1, 100).astype(np.float32)])
    want = numpy_encoder_before_kernel(x)
    for start in range(3):
        for stop in range(start, x.size, 5):
            np.testing.assert_array_equal(mu_law_encode(x[start:stop]), want[start:stop])
            for got in kernels_for(x[start:stop], 256).values():
                np.testing.assert_array_equal(got, want[start:stop])
    np.testing.assert_array_equal(mu_law_encode(x[::3]), want[::3])
    np.testing.assert_array_equal(mu_law_encode(x.astype(np.float64)[1::2]), want[1::2])
    out = np.zeros(2 * x.size, dtype=np.uint8)
    assert mu_law_encode(x, out=out[1::2]) is not None
    np.testing.assert_array_equal(out[1::2], want)  # a strided `out` is written in place
    assert not out[::2].any()


def test_out_that_cannot_be_flattened_in_place(rng: np.random.Generator) -> None:
    x = rng.uniform(-1, 1, 12).astype(np.float32)
    out = np.zeros((3, 9), dtype=np.uint8)[:, ::2]  # (3, 5) view, rows 9 apart
    x = np.concatenate([x, x[:3]])
    assert mu_law_encode(x, out=out) is out
    np.testing.assert_array_equal(out.reshape(-1), numpy_encoder_before_kernel(x))


@pytest.mark.parametrize("dtype", [np.float16, np.longdouble])
def test_other_float_dtypes_take_the_numpy_path(rng: np.random.Generator, dtype: type) -> None:
    x = rng.uniform(-1, 1, 5000).astype(dtype)
    np.testing.assert_array_equal(mu_law_encode(x), numpy_encoder_before_kernel(x))


def test_code_boundaries_bracket_each_code() -> None:
    """Boundary k is the smallest float32 the encoder maps to code >= k (one ulp below: < k)."""
    from features.audio import code_boundaries

    bounds = code_boundaries(256)
    assert bounds.shape == (255,) and np.all(np.diff(bounds.astype(np.int64)) >= 0)
    at = bounds.view(np.float32)
    below = np.maximum(bounds.astype(np.int64) - 1, 0).astype(np.uint32).view(np.float32)
    k = np.arange(1, 256)
    assert np.all(numpy_encoder_before_kernel(at) >= k)
    positive = bounds > 0
    assert np.all(numpy_encoder_before_kernel(below)[positive] < k[positive])


@pytest.mark.slow
def test_kernel_matches_on_every_positive_float32_below_one_in_a_slice() -> None:
    """A dense sweep: every float32 in [2^-9, 2^-7] (where codes change fastest), both signs."""
    lo, hi = (int(np.float32(v).view(np.uint32)) for v in (2.0**-9, 2.0**-7))
    x = np.arange(lo, hi, dtype=np.uint32).view(np.float32)
    np.testing.assert_array_equal(mu_law_encode(x), numpy_encoder_before_kernel(x))
    np.testing.assert_array_equal(mu_law_encode(-x), numpy_encoder_before_kernel(-x))
