"""DINOv2's linear segmentation head: BatchNorm + 1x1 conv over the concatenated (resized) feature maps."""

from __future__ import annotations

from benchmarks.segmentation.mmcv_compat import install_mmcv_ops_shim

install_mmcv_ops_shim()  # mmseg.models imports mmcv.ops at load time

from mmcv.cnn import build_norm_layer  # noqa: E402
from mmseg.models.decode_heads.decode_head import BaseDecodeHead  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402


@MODELS.register_module()
class BNLinearHead(BaseDecodeHead):
    """``conv_seg(BN(concat(resize(maps[in_index]))))``; ``channels`` must equal ``sum(in_channels)``.

    With ``input_transform='resize_concat'`` the selected maps are resized to the first one's size and
    concatenated (one map for the linear setting, the last four blocks for multiscale). No dropout.
    """

    def __init__(self, norm_cfg=None, dropout_ratio: float = 0.0, input_transform: str = "resize_concat", **kwargs):
        norm_cfg = norm_cfg or dict(type="BN", requires_grad=True)
        super().__init__(norm_cfg=norm_cfg, dropout_ratio=dropout_ratio, input_transform=input_transform, **kwargs)
        expected = sum(self.in_channels) if isinstance(self.in_channels, (list, tuple)) else self.in_channels
        if self.channels != expected:
            raise ValueError(
                f"BNLinearHead: channels={self.channels} but the concatenated inputs have {expected} channels "
                f"(in_channels={self.in_channels}); set channels to their sum"
            )
        self.bn = build_norm_layer(norm_cfg, self.channels)[1]

    def forward(self, inputs):
        return self.cls_seg(self.bn(self._transform_inputs(inputs)))
