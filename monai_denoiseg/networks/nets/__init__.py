"""Networks: IEM fusion UNet, the joint denoise-segment-fuse net and the backbones the papers compare."""

from .dncnn import DnCNN
from .export import ExportNetwork, export_channel_names
from .fusion_unet import IEMFusionUNet, ReferenceUNet
from .joint import GUIDANCE, STAGES, JointDenoiSegNet, paper_joint_net, shuffle_affinity
from .n2v_unet import N2V_UNET_STRIDE, InputResidual, n2v_denoiser_unet, n2v_segmenter_unet
from .ridnet import RIDNet
from .transunet import TRANSUNET_PAPER_CONFIG, TransUNet
