"""Shape tables and behaviour of every RTFSyn block (CPU, tiny sizes)."""
from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F

from synthesis.blocks import (
    AxisRefinement,
    ChannelNorm,
    ConditionEmbedding,
    ConvDecoder,
    CrossModalFusion,
    DynamicConv3d,
    Features,
    GlobalFusion,
    ImplicitDecoder,
    PackedCrossAttention,
    ResBlock3d,
    pixel_shuffle3d,
    pixel_unshuffle3d,
)
from synthesis.nets.rtfsyn import Upsample2x

TEXT, FEAT, COND = 24, 10, 8


def _text(batch: int, length: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    tokens = torch.randn(batch, length, TEXT)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, length - 2:] = False
    return tokens, mask, torch.randn(batch, FEAT)


def _run_volume_block(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    tokens, mask, features = _text(x.shape[0])
    cond = torch.randn(x.shape[0], COND)
    if isinstance(block, PackedCrossAttention):
        return block(x, tokens, mask, features)
    if isinstance(block, CrossModalFusion):
        return block(x, tokens, mask, features, cond)
    if isinstance(block, (DynamicConv3d, GlobalFusion)):
        return block(x, cond)
    return block(x)


VOLUME_BLOCKS: list[tuple[str, Callable[[], torch.nn.Module], tuple[int, ...], tuple[int, ...]]] = [
    ("ChannelNorm", lambda: ChannelNorm(6), (2, 6, 4, 5, 3), (2, 6, 4, 5, 3)),
    ("ResBlock3d", lambda: ResBlock3d(6), (2, 6, 5, 4, 3), (2, 6, 5, 4, 3)),
    ("ResBlock3d-nonorm", lambda: ResBlock3d(4, norm=False), (1, 4, 6, 6, 6), (1, 4, 6, 6, 6)),
    ("AxisRefinement", lambda: AxisRefinement(6, kernel=3), (2, 6, 5, 7, 4), (2, 6, 5, 7, 4)),
    ("AxisRefinement-k7", lambda: AxisRefinement(4, kernel=7, dilations=(1, 2, 4)), (1, 4, 8, 8, 8),
     (1, 4, 8, 8, 8)),
    ("PackedCrossAttention-r2", lambda: PackedCrossAttention(4, text_dim=TEXT, feature_dim=FEAT, attn_dim=8,
                                                               heads=2, pack=2), (2, 4, 4, 6, 8), (2, 4, 4, 6, 8)),
    ("PackedCrossAttention-r1", lambda: PackedCrossAttention(4, text_dim=TEXT, feature_dim=FEAT, attn_dim=8,
                                                               heads=4, pack=1), (2, 4, 3, 5, 2), (2, 4, 3, 5, 2)),
    ("DynamicConv3d", lambda: DynamicConv3d(6, COND, bank=3, groups=2), (2, 6, 4, 5, 6), (2, 6, 4, 5, 6)),
    ("DynamicConv3d-k1", lambda: DynamicConv3d(4, COND, bank=2, groups=1, kernel=1), (3, 4, 2, 3, 4),
     (3, 4, 2, 3, 4)),
    ("CrossModalFusion", lambda: CrossModalFusion(4, text_dim=TEXT, feature_dim=FEAT, cond_dim=COND, attn_dim=8,
                                                   heads=2, pack=2, bank=2, conv_groups=2),
     (2, 4, 4, 4, 6), (2, 4, 4, 4, 6)),
    ("GlobalFusion", lambda: GlobalFusion(5, cond_dim=COND), (2, 5, 3, 4, 5), (2, 5, 3, 4, 5)),
]


@pytest.mark.parametrize(("name", "make", "shape", "expected"), VOLUME_BLOCKS, ids=[b[0] for b in VOLUME_BLOCKS])
def test_volume_block_shapes_and_gradients(name: str, make: Callable[[], torch.nn.Module],
                                           shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    block = make()
    out = _run_volume_block(block, torch.randn(shape))
    assert out.shape == expected
    out.square().mean().backward()
    for pname, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}.{pname} got no gradient"


@pytest.mark.parametrize(
    ("args", "inputs", "expected"),
    [
        ((24, 10, 8), ((3, 24), (3, 10)), (3, 8)),
        ((384, 48, 64), ((1, 384), (1, 48)), (1, 64)),
    ],
)
def test_condition_embedding_shapes(args: tuple[int, int, int], inputs: tuple[tuple[int, ...], ...],
                                    expected: tuple[int, ...]) -> None:
    out = ConditionEmbedding(*args)(torch.randn(inputs[0]), torch.randn(inputs[1]))
    assert out.shape == expected


@pytest.mark.parametrize(
    ("decoder", "volume", "n"),
    [
        (lambda: ImplicitDecoder(6, hidden=8, layers=2, cond_dim=COND, chunk=7), (2, 6, 5, 4, 6), 50),
        (lambda: ImplicitDecoder(6, hidden=8, cond_dim=COND, bases=4, chunk=7), (2, 6, 5, 4, 6), 50),
        (lambda: ImplicitDecoder(6, hidden=4, layers=1, cond_dim=None), (1, 6, 3, 3, 3), 9),  # projected table
        (lambda: ConvDecoder(6, hidden=8, cond_dim=COND, render_voxels=20), (2, 6, 5, 4, 6), 50),
    ],
)
def test_decoder_shapes(decoder: Callable[[], Any], volume: tuple[int, ...], n: int) -> None:
    torch.manual_seed(0)
    head = decoder()
    feats = Features(torch.randn(volume), torch.randn(volume[0], COND))
    assert head.render_grid(feats).shape == (volume[0], 1, *volume[2:])
    coords = torch.rand(volume[0], n, 3) * (torch.tensor(volume[2:]) - 1)
    values = head.query(feats, coords, torch.ones(volume[0], 3))
    assert values.shape == (volume[0], n)
    values.sum().backward()
    assert all(p.grad is not None for p in head.parameters())


@pytest.mark.parametrize("hidden", [8, 4])  # gather-then-project and project-then-gather paths
@pytest.mark.parametrize("render_voxels", [1 << 20, 25])
@pytest.mark.parametrize("bases", [1, 3])
def test_implicit_query_at_centres_equals_render_grid(hidden: int, render_voxels: int, bases: int) -> None:
    torch.manual_seed(1)
    head = ImplicitDecoder(6, hidden=hidden, cond_dim=COND, bases=bases, chunk=50, render_voxels=render_voxels)
    feats = Features(torch.randn(2, 6, 4, 5, 3), torch.randn(2, COND))
    centres = torch.stack(torch.meshgrid(*(torch.arange(n) for n in (4, 5, 3)), indexing="ij"), -1)
    coords = centres.reshape(1, -1, 3).float().expand(2, -1, -1)
    grid = head.render_grid(feats)
    queried = head.query(feats, coords, torch.ones(2, 3)).reshape(2, 1, 4, 5, 3)
    torch.testing.assert_close(queried, grid, atol=1e-5, rtol=1e-5)


def test_output_bases_are_mixed_linearly_by_the_condition() -> None:
    torch.manual_seed(4)
    head = ImplicitDecoder(6, hidden=8, cond_dim=COND, bases=3)
    feats = Features(torch.randn(1, 6, 3, 4, 5), torch.randn(1, COND))
    coords = torch.rand(1, 20, 3) * 2

    def outputs(mix: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            head.mix.weight.zero_()
            head.mix.bias.copy_(torch.tensor(mix))
            return head.render_grid(feats), head.query(feats, coords, torch.ones(1, 3))

    for got, a, b in zip(outputs([1.0, 2.0, 0.0]), outputs([1.0, 0.0, 0.0]), outputs([0.0, 2.0, 0.0])):
        torch.testing.assert_close(got, a + b, atol=1e-5, rtol=1e-5)  # linear in the mixing weights
    assert not torch.allclose(outputs([1.0, 0.0, 0.0])[0], outputs([0.0, 1.0, 0.0])[0])  # bases differ
    assert ImplicitDecoder(6, hidden=8, cond_dim=None, bases=3).mix is None  # no condition: one output


def test_upsampling_makes_no_checkerboard() -> None:
    torch.manual_seed(5)
    up = Upsample2x(4, 3)
    out = up(torch.ones(1, 4, 3, 3, 3))
    assert out.shape == (1, 3, 6, 6, 6)
    torch.testing.assert_close(out, out[:, :, :1, :1, :1].expand_as(out))  # constant in, constant out
    transposed = torch.nn.ConvTranspose3d(4, 3, 2, stride=2)(torch.ones(1, 4, 3, 3, 3))
    assert not torch.allclose(transposed, transposed[:, :, :1, :1, :1].expand_as(transposed))


def test_implicit_query_blends_neighbours_and_extrapolates_at_borders() -> None:
    torch.manual_seed(2)
    head = ImplicitDecoder(3, hidden=8, cond_dim=None)
    feats = Features(torch.randn(1, 3, 4, 4, 4), None)
    cell = torch.ones(1, 3)
    mid = head.query(feats, torch.tensor([[[1.5, 2.0, 2.0]]]), cell)
    ends = head.query(feats, torch.tensor([[[1.0, 2.0, 2.0], [2.0, 2.0, 2.0]]]), cell)
    assert not torch.allclose(mid, ends.mean(1, keepdim=True))  # relative offsets matter, not just blending
    outside = head.query(feats, torch.tensor([[[-0.4, 0.0, 0.0], [-0.2, 0.0, 0.0]]]), cell)
    assert torch.isfinite(outside).all() and outside[0, 0] != outside[0, 1]


def test_conv_decoder_query_interpolates_its_grid() -> None:
    torch.manual_seed(3)
    head = ConvDecoder(4, hidden=8, render_voxels=16)
    feats = Features(torch.randn(1, 4, 5, 6, 7), None)
    grid = head.render_grid(feats)
    whole = ConvDecoder(4, hidden=8, render_voxels=1 << 20)
    whole.load_state_dict(head.state_dict())
    torch.testing.assert_close(grid, whole.render_grid(feats))  # slabs with halo == one pass
    centre = head.query(feats, torch.tensor([[[2.0, 3.0, 4.0], [2.5, 3.0, 4.0]]]), torch.ones(1, 3))
    torch.testing.assert_close(centre[0, 0], grid[0, 0, 2, 3, 4])
    torch.testing.assert_close(centre[0, 1], 0.5 * (grid[0, 0, 2, 3, 4] + grid[0, 0, 3, 3, 4]))


@pytest.mark.parametrize(("shape", "r"), [((2, 3, 4, 6, 8), 2), ((1, 2, 3, 6, 9), 3), ((1, 1, 2, 2, 2), 1)])
def test_pixel_unshuffle_and_shuffle_are_exact_inverses(shape: tuple[int, ...], r: int) -> None:
    x = torch.randn(shape)
    packed = pixel_unshuffle3d(x, r)
    assert packed.shape == (shape[0], shape[1] * r**3, shape[2] // r, shape[3] // r, shape[4] // r)
    assert torch.equal(pixel_shuffle3d(packed, r), x)
    assert torch.equal(pixel_unshuffle3d(pixel_shuffle3d(packed, r), r), packed)


def test_pixel_unshuffle_layout_and_errors() -> None:
    x = torch.arange(8.0).reshape(1, 1, 2, 2, 2)
    assert pixel_unshuffle3d(x, 2).flatten().tolist() == list(range(8))  # offset (i, j, k) -> i*4 + j*2 + k
    with pytest.raises(ValueError, match=r"divisible by r=2\. Found \(3, 2, 2\)"):
        pixel_unshuffle3d(torch.zeros(1, 1, 3, 2, 2), 2)
    with pytest.raises(ValueError, match="channels divisible by r\\*\\*3=8"):
        pixel_shuffle3d(torch.zeros(1, 4, 1, 1, 1), 2)
    with pytest.raises(ValueError, match="pack factor r must be a positive integer"):
        pixel_unshuffle3d(x, 0)


def test_axis_refinement_context_is_directional() -> None:
    """A change at one voxel reaches only voxels on the three axis lines through it."""
    torch.manual_seed(4)
    block = AxisRefinement(3, kernel=3, dilations=(1,)).eval()
    x = torch.randn(1, 3, 7, 7, 7)
    y = x.clone()
    y[0, :, 3, 3, 3] += torch.tensor([5.0, -3.0, 1.0])  # not constant: the channel norm removes a shift
    changed = (block(y) - block(x)).abs().sum(1)[0] > 1e-6
    expected = torch.zeros(7, 7, 7, dtype=torch.bool)
    expected[2:5, 3, 3] = expected[3, 2:5, 3] = expected[3, 3, 2:5] = True
    assert torch.equal(changed, expected)


def test_cross_attention_ignores_padding_and_uses_the_sequence() -> None:
    torch.manual_seed(5)
    block = PackedCrossAttention(2, text_dim=TEXT, feature_dim=FEAT, attn_dim=8, heads=2, pack=2)
    x = torch.randn(1, 2, 4, 4, 4)
    tokens, features = torch.randn(1, 6, TEXT), torch.randn(1, FEAT)
    mask = torch.tensor([[True, True, True, True, False, False]])
    base = block(x, tokens, mask, features)
    garbage = tokens.clone()
    garbage[0, 4:] = 100.0
    torch.testing.assert_close(block(x, garbage, mask, features), base)  # padded tokens are masked out
    other = tokens.clone()
    other[0, 1] = torch.randn(TEXT)
    assert not torch.allclose(block(x, other, mask, features), base)  # a real token matters
    shifted = block(x + torch.randn_like(x), tokens, mask, features) - base
    assert shifted.abs().sum() > 0


def test_dynamic_conv_is_per_sample_and_one_grouped_call() -> None:
    torch.manual_seed(6)
    block = DynamicConv3d(4, COND, bank=3, groups=2)
    x, cond = torch.randn(2, 4, 3, 4, 5), torch.randn(2, COND)
    out = block(x, cond)
    alpha = block.mixing(cond)
    for b in range(2):  # reference: mix the bank for sample b, plain conv
        weight = torch.einsum("k,koi...->oi...", alpha[b], block.weight)
        ref = F.conv3d(x[b:b + 1], weight, alpha[b] @ block.bias, padding=1, groups=2)
        torch.testing.assert_close(out[b:b + 1], ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(block(x, cond.flip(0)), out)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: DynamicConv3d(6, 8, groups=4), "channels must be divisible by groups"),
        (lambda: DynamicConv3d(4, 8, kernel=2), "kernel must be odd. Found 2"),
        (lambda: AxisRefinement(4, kernel=4), "kernel must be odd. Found 4"),
        (lambda: AxisRefinement(4, dilations=()), "dilations must name at least one"),
        (lambda: PackedCrossAttention(4, text_dim=8, feature_dim=2, attn_dim=6, heads=4),
         "attn_dim must be divisible by heads"),
        (lambda: ImplicitDecoder(0), "in_channels must be a positive integer. Found 0"),
        (lambda: ResBlock3d(True), "channels must be a positive integer. Found True"),
    ],
)
def test_block_arguments_are_validated(make: Callable[[], Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()
