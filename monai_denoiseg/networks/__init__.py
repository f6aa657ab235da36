"""MONAI-style networks of joint denoising and segmentation (all take ``spatial_dims`` first)."""

from .blocks import IEM_MODES, InstanceAwareEmbedding
from .nets import (
    GUIDANCE,
    N2V_UNET_STRIDE,
    STAGES,
    TRANSUNET_PAPER_CONFIG,
    DnCNN,
    ExportNetwork,
    IEMFusionUNet,
    InputResidual,
    JointDenoiSegNet,
    ReferenceUNet,
    RIDNet,
    TransUNet,
    export_channel_names,
    n2v_denoiser_unet,
    n2v_segmenter_unet,
    paper_joint_net,
    shuffle_affinity,
)
from .utils import PadToMultiple, crop_spatial, pad_to_multiple
