"""Network blocks of RTFSyn (shapes are ``(B, C, D, H, W)`` unless stated)."""
from synthesis.blocks.attention import PackedCrossAttention
from synthesis.blocks.common import ChannelNorm, LayerScale, ResBlock3d
from synthesis.blocks.decoder import ConvDecoder, Features, ImplicitDecoder
from synthesis.blocks.dynconv import DynamicConv3d
from synthesis.blocks.fusion import ConditionEmbedding, CrossModalFusion, GlobalFusion
from synthesis.blocks.packing import pixel_shuffle3d, pixel_unshuffle3d
from synthesis.blocks.refinement import AxisRefinement

__all__ = [
    "AxisRefinement",
    "ChannelNorm",
    "ConditionEmbedding",
    "ConvDecoder",
    "CrossModalFusion",
    "DynamicConv3d",
    "Features",
    "GlobalFusion",
    "ImplicitDecoder",
    "LayerScale",
    "PackedCrossAttention",
    "ResBlock3d",
    "pixel_shuffle3d",
    "pixel_unshuffle3d",
]
