"""Muffin / VisCPM-Chat image processor: square bicubic resize (PIL), rescale to [0, 1], mean = std = 0.5."""

from transformers.image_processing_backends import PilBackend
from transformers.image_utils import PILImageResampling

# `timm`'s IMAGENET_INCEPTION_MEAN / _STD, used by Muffin's and VisCPM's `build_transform`.
INCEPTION_MEAN = [0.5, 0.5, 0.5]
INCEPTION_STD = [0.5, 0.5, 0.5]


class MuffinImageProcessor(PilBackend):
    r"""
    Evaluation transform of Muffin and VisCPM-Chat (`build_transform(is_train=False)`): `Resize((S, S), BICUBIC)`
    on the PIL image (no crop, no padding, the aspect ratio is not kept), `ToTensor`, then
    `Normalize(mean=0.5, std=0.5)`. `S` is BEiT-3's `image_size` (224 VisCPM-Chat, 448 RLHF-V, 672 Muffin-13B).

    The training-time augmentation of the original code (random resized crop, flip, RandAugment) is not part of the
    processor; apply it to the PIL images in the dataset if you want it.

    Args:
        size (`dict[str, int]`, *optional*, defaults to `{"height": 224, "width": 224}`):
            Output size.
        resample (`PILImageResampling`, *optional*, defaults to `BICUBIC`):
            Resampling filter.
        image_mean, image_std (`list[float]`, *optional*, defaults to `[0.5, 0.5, 0.5]`):
            Normalisation constants.
    """

    model_input_names = ["pixel_values"]
    resample = PILImageResampling.BICUBIC
    image_mean = INCEPTION_MEAN
    image_std = INCEPTION_STD
    size = {"height": 224, "width": 224}
    default_to_square = True
    do_resize = True
    do_center_crop = False
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    do_pad = False


__all__ = ["MuffinImageProcessor"]
