"""The building blocks of MVMICNet on real corpus images: wavelet, quantiser, integer network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mvmic.model.cdf97 import max_levels
from mvmic.model.context_model import PHASES, decoded_mask, phase_mask
from mvmic.model.entropy_coder import PRECISION, TABLE_COUNT, CodingTables, RansReader, RansWriter, scale_table
from mvmic.model.integer_net import IndexNetwork, IntegerConv2d
from mvmic.model.lifting import FIXED_POINT_BITS, Subbands, analysis, exact_synthesis, synthesis
from mvmic.model.subbands import band_gains, dequantize, quantize


def _normalised(corpus_manifest, corpus_dir, entry_id: str) -> torch.Tensor:
    entry = next(e for e in corpus_manifest.entries if e.id == entry_id)
    image = entry.read(corpus_dir)
    frame = image.frame(0).astype(np.float64)
    return torch.from_numpy(frame / 2**image.format.bits_stored)[None, None]


@pytest.mark.parametrize("entry_id", ["pyradiomics-lung1-030", "pydicom-RG3_UNCR", "pyradiomics-breast1-010"])
def test_wavelet_reconstructs_real_images_perfectly(corpus_manifest, corpus_dir, entry_id: str) -> None:
    image = _normalised(corpus_manifest, corpus_dir, entry_id)
    levels = max_levels(*image.shape[-2:])
    assert levels >= 2
    bands = analysis(image, levels)
    assert torch.allclose(synthesis(bands), image, atol=1e-12, rtol=0)


@pytest.mark.parametrize("shape", [(2, 2), (3, 5), (17, 64), (64, 17), (45, 120)])
def test_wavelet_handles_odd_and_tiny_sizes(shape: tuple[int, int]) -> None:
    image = torch.rand(1, 1, *shape, dtype=torch.float64)
    bands = analysis(image, max(1, max_levels(*shape, smallest=1)))
    assert torch.allclose(synthesis(bands), image, atol=1e-12, rtol=0)


def test_wavelet_keeps_a_constant_in_the_low_band() -> None:
    # DC gain 1 (JPEG 2000 normalisation); border extension must not create detail.
    bands = analysis(torch.full((1, 1, 37, 52), 0.25, dtype=torch.float64), 3)
    assert torch.allclose(bands.low, torch.full_like(bands.low, 0.25))
    assert all(float(b.abs().max()) < 1e-12 for level in bands.details for b in level)


@pytest.mark.parametrize("entry_id", ["pyradiomics-lung1-030", "pyradiomics-breast1-010"])
def test_exact_synthesis_is_the_float_one_in_integers(corpus_manifest, corpus_dir, entry_id: str) -> None:
    # Quantised bands of a real image in int64 fixed point: the integer synthesis lands within a
    # few units of 2**-FIXED_POINT_BITS of the float one, and its output is integers, whatever the thread count.
    image = _normalised(corpus_manifest, corpus_dir, entry_id)
    coefficients = dequantize(quantize(analysis(image, 5), 2.0**-7), 2.0**-7)
    to_fixed = lambda band: torch.round(band * 2**FIXED_POINT_BITS).to(torch.int64)
    fixed = Subbands(to_fixed(coefficients.low), [tuple(map(to_fixed, level)) for level in coefficients.details])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one_thread = exact_synthesis(fixed)
        torch.set_num_threads(2)
        two_threads = exact_synthesis(fixed)
    finally:
        torch.set_num_threads(threads)
    assert one_thread.dtype == torch.int64 and torch.equal(one_thread, two_threads)
    error = (one_thread.double() / 2**FIXED_POINT_BITS - synthesis(coefficients)).abs().max()
    assert float(error) < 64 * 2.0**-FIXED_POINT_BITS


def test_quantiser_error_is_bounded_by_the_step(corpus_manifest, corpus_dir) -> None:
    image = _normalised(corpus_manifest, corpus_dir, "pyradiomics-lung1-030")
    levels = max_levels(*image.shape[-2:])
    mse = []
    for step in (2.0**-6, 2.0**-9):
        decoded = synthesis(dequantize(quantize(analysis(image, levels), step), step))
        mse.append(float(((decoded - image) ** 2).mean()))
        # A uniform quantiser with equal-MSE band weights keeps the error near step**2 / 12.
        assert mse[-1] < step**2 / 4
    assert mse[1] < mse[0] / 16  # 8x finer step, far smaller error


def test_band_gains_follow_the_wavelet_scaling() -> None:
    low, details = band_gains(4)
    assert low == pytest.approx(16, rel=0.1)  # a low coefficient spreads over 16 x 16 pixels, DC gain 1
    finest_hh = details[-1][2]
    coarsest_hh = details[0][2]
    assert coarsest_hh == pytest.approx(8 * finest_hh, rel=0.1)


def test_index_network_is_exact_across_thread_counts_and_precisions() -> None:
    torch.manual_seed(0)
    net = IndexNetwork(in_channels=4, hidden=16, table_size=64)
    features = torch.randint(0, 256, (1, 4, 96, 80)).double()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one_thread = net.indexes(features)
        torch.set_num_threads(2)
        two_threads = net.indexes(features)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one_thread, two_threads)
    assert one_thread.dtype == torch.int32 and 0 <= int(one_thread.min()) and int(one_thread.max()) < 64
    # The training path is the same arithmetic: its rounded output is the coding index.
    training = torch.clamp(net(features.float()), 0, 63).to(torch.int32)
    assert torch.equal(training, one_thread)


def test_frozen_integer_layers_keep_their_integers_when_the_floats_drift() -> None:
    # A bias of ~42,000 integer units (as trained codecs have) stored as a float: 2e-5 relative
    # noise moves it past a rounding boundary. Coding after freeze() must not see that.
    layer = IntegerConv2d(2, 3, 3, out_shift=10, clip=False)
    with torch.no_grad():
        layer.bias.copy_(torch.tensor([41_980.0, -41_895.0, 7.0]) / 2**14)
    layer.snap()
    layer.freeze()
    weight, bias = layer.integers(exact=True)
    assert weight.dtype == bias.dtype == torch.int64
    assert bias.tolist() == [41_980, -41_895, 7]
    features = torch.randint(0, 256, (1, 2, 9, 9)).double()
    before = layer(features, exact=True)
    with torch.no_grad():
        layer.bias.mul_(1 + 2e-5)
    assert layer.integer_bias().round().tolist() != bias.tolist()  # the floats did drift
    assert torch.equal(layer(features, exact=True), before)


def test_index_network_refuses_fractional_features() -> None:
    net = IndexNetwork(in_channels=1, hidden=4, table_size=8)
    with pytest.raises(ValueError, match="integers"):
        net.indexes(torch.full((1, 1, 4, 4), 0.5, dtype=torch.float64))


def test_the_four_passes_cover_a_band_once_and_see_only_earlier_passes() -> None:
    shape = torch.Size([7, 6])
    masks = [phase_mask(shape, phase) for phase in range(len(PHASES))]
    assert torch.equal(sum(m.int() for m in masks), torch.ones(7, 6, dtype=torch.int32))
    for phase, mask in enumerate(masks):
        assert not (decoded_mask(shape, phase) & mask).any()
        assert int(decoded_mask(shape, phase).sum()) == sum(int(m.sum()) for m in masks[:phase])


def test_fitted_tables_are_valid_cdfs_and_cheaper_on_the_data_they_fit() -> None:
    generator = torch.Generator().manual_seed(0)
    # Gaussian symbols of scale ~3 all land on one index: a Laplacian fits them less well than their own counts.
    index = min(range(TABLE_COUNT), key=lambda i: abs(scale_table()[i] - 3.0))
    symbols = torch.round(3.0 * torch.randn(50_000, generator=generator, dtype=torch.float64))
    radius = 5000
    counts = torch.zeros(TABLE_COUNT, 2 * radius + 1, dtype=torch.float64)
    counts[index].index_add_(0, symbols.long() + radius, torch.ones_like(symbols))
    laplacian, fitted = CodingTables.laplacian(), CodingTables.fitted(counts)
    for tables in (laplacian, fitted):
        for row, length in zip(tables.cdfs, tables.lengths, strict=True):
            cdf = row[: int(length)]
            assert int(cdf[0]) == 0 and int(cdf[-1]) == 1 << PRECISION and bool((cdf.diff() >= 1).all())
    indexes = torch.full_like(symbols, index, dtype=torch.long)
    assert float(fitted.bits(symbols, indexes).sum()) < 0.98 * float(laplacian.bits(symbols, indexes).sum())


def test_rans_round_trips_symbols_far_outside_their_table() -> None:
    tables = CodingTables.laplacian()
    symbols = torch.tensor([0, 1, -1, 3, -70_000, 123_456, 0, 2], dtype=torch.float64)
    indexes = torch.tensor([0, 0, 5, 10, 0, 71, 40, 20])
    writer = RansWriter(tables)
    writer.write(symbols, indexes)
    stream = writer.finish()
    assert torch.equal(RansReader(tables, stream, len(symbols)).read(indexes), symbols)
