"""Functional ResNets (He et al. 2016) for depths 10, 18, 34, 50 and 101.

ResNet-50/101 follow `keras.applications.ResNet50/101`: the same layers,
layer names (`conv1_conv`, `conv2_block1_1_conv`, ...) and BatchNormalization
epsilon, so their weights files map onto these models layer by layer.
ResNet-18/34 use basic blocks with the same naming scheme; ResNet-10 is
ResNet-18 with one basic block per stage (the smallest of MedicalNet's
medical-imaging ResNets, Chen et al. 2019, arXiv:1904.00625): a model for
CPU experiments and for tests (the SSL tests' tiny steps trace and run
in about 35% less time than ResNet-18's at width 0.25). The paper's
5-ATTN placement needs two blocks in res3 and res4, so ResNet-10 takes
"none", "1" or an explicit placement.
Stages are called `conv2`..`conv5` as in keras.applications; the paper
calls them res2..res5.

One difference by default: no convolution has a bias (`conv_bias=False`).
Every convolution here feeds a BatchNormalization, which subtracts the
batch mean in training (a bias cancels exactly) and the moving mean in
inference (a bias is the same as a moving mean lower by it). So a bias is
a parameter with no effect on the function, whose gradient is computed for
nothing: oneDNN's filter-gradient kernel with bias was the largest op of
the R-50 training step, and the step is 7-11% faster without it on CPU
(README, Benchmarks). keras.applications' weights (with biases) load with
each bias folded into its BatchNormalization's moving mean
(`backbone_weights.copy_folding_conv_biases`), which computes the same
function; `conv_bias=True` builds the keras.applications layout itself,
the one of this project's weights files written before bias-free
convolutions (they load either way: `backbone_weights.load_backbone`).

Paper: https://arxiv.org/abs/1512.03385
"""

import keras
from keras import layers

from matl_keras.layers.fused_batch_norm import FusedBatchNormalization
from matl_keras.layers.input_normalization import InputNormalization
from matl_keras.layers.non_local_block import NonLocalBlock
from matl_keras.models.resnet import attention_placement

# depth -> (block type, blocks per stage conv2..conv5)
DEPTHS = {
    10: ("basic", (1, 1, 1, 1)),
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}
STAGES = ("conv2", "conv3", "conv4", "conv5")
_STAGE_FILTERS = (64, 128, 256, 512)
_BN_EPSILON = 1.001e-5  # keras.applications' value.


def scaled_filters(filters, width_multiplier):
    """Channel count scaled by `width_multiplier`, a multiple of 8."""
    if width_multiplier == 1.0:
        return filters
    return max(8, int(filters * width_multiplier + 4) // 8 * 8)


# Moving-statistics momentum of every BatchNormalization. keras.applications
# uses Keras' default 0.99; with 0.9 (PyTorch's default) the statistics
# settle within tens of steps, which short fine-tuning runs on a few hundred
# images need. It is not a weight: weights files load either way.
BN_MOMENTUM = 0.9


def _bn(name, synchronized=False, groups=1):
    # The fused kernel (same weights and math as layers.BatchNormalization;
    # see layers/fused_batch_norm.py for why, and for `groups`: per-group
    # statistics for MoCo's shuffle-BN).
    return FusedBatchNormalization(
        groups=groups,
        axis=-1,
        momentum=BN_MOMENTUM,
        epsilon=_BN_EPSILON,
        synchronized=synchronized,
        name=name,
    )


def apply_bottleneck_block(
    x, filters, stride, conv_shortcut, name, sync=False, groups=1, bias=False
):
    """keras.applications' `block1`: 1x1 (strided) -> 3x3 -> 1x1 (x4)."""
    if conv_shortcut:
        shortcut = layers.Conv2D(
            4 * filters, 1, strides=stride, use_bias=bias, name=f"{name}_0_conv"
        )(x)
        shortcut = _bn(f"{name}_0_bn", sync, groups)(shortcut)
    else:
        shortcut = x
    x = layers.Conv2D(
        filters, 1, strides=stride, use_bias=bias, name=f"{name}_1_conv"
    )(x)
    x = _bn(f"{name}_1_bn", sync, groups)(x)
    x = layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = layers.Conv2D(
        filters, 3, padding="same", use_bias=bias, name=f"{name}_2_conv"
    )(x)
    x = _bn(f"{name}_2_bn", sync, groups)(x)
    x = layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = layers.Conv2D(4 * filters, 1, use_bias=bias, name=f"{name}_3_conv")(x)
    x = _bn(f"{name}_3_bn", sync, groups)(x)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def apply_basic_block(
    x, filters, stride, conv_shortcut, name, sync=False, groups=1, bias=False
):
    """Two 3x3 convolutions (ResNet-18/34; bias-free, whatever `bias`: the
    stem's is the one bias the older layout had)."""
    del bias
    if conv_shortcut:
        shortcut = layers.Conv2D(
            filters, 1, strides=stride, use_bias=False, name=f"{name}_0_conv"
        )(x)
        shortcut = _bn(f"{name}_0_bn", sync, groups)(shortcut)
    else:
        shortcut = x
    x = layers.Conv2D(
        filters,
        3,
        strides=stride,
        padding="same",
        use_bias=False,
        name=f"{name}_1_conv",
    )(x)
    x = _bn(f"{name}_1_bn", sync, groups)(x)
    x = layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = layers.Conv2D(
        filters, 3, padding="same", use_bias=False, name=f"{name}_2_conv"
    )(x)
    x = _bn(f"{name}_2_bn", sync, groups)(x)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def apply_stem(x, width_multiplier, sync=False, groups=1, bias=False):
    """7x7/2 convolution and 3x3/2 max-pool (keras.applications names)."""
    x = layers.ZeroPadding2D(padding=((3, 3), (3, 3)), name="conv1_pad")(x)
    x = layers.Conv2D(
        scaled_filters(64, width_multiplier),
        7,
        strides=2,
        use_bias=bias,
        name="conv1_conv",
    )(x)
    x = _bn("conv1_bn", sync, groups)(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.ZeroPadding2D(padding=((1, 1), (1, 1)), name="pool1_pad")(x)
    return layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)


@keras.saving.register_keras_serializable(package="matl_keras")
class ResNetBackbone(keras.Model):
    """A ResNet feature extractor as a functional Keras model.

    Input: float RGB images in [0, 1], `(batch, image_size, image_size, 3)`;
    the model normalizes them itself (`InputNormalization`). Output: the
    last stage's feature map `(batch, image_size / 32, image_size / 32, C)`.
    `pyramid_outputs` maps `"P2"`..`"P5"` to each stage's output;
    `attention_outputs` maps each non-local block's name to its attention
    weights `(batch, h * w, h' * w')` (see `attention_maps`).

    Non-local blocks (`NonLocalBlock`, the paper's ATTNs) are inserted at the
    end of the residual blocks that `attention` names (see
    `attention_placement` for the presets "none", "1", "5"). They are named
    `f"{stage}_block{i}_nonlocal"` and start as the identity.

    Args:
        depth: int. 10, 18, 34, 50 or 101.
        width_multiplier: float. Scales every channel count (1.0 is the
            standard ResNet; 0.25 makes a CPU-sized model).
        image_size: int or None. Input side; None accepts any size.
        normalization: str. Input normalization mode (`"caffe"` matches
            keras.applications' ImageNet weights).
        attention: str or dict. `"none"`, `"1"`, `"5"` or a placement such as
            `{"conv3": [2, 4], "conv5": [-1]}`.
        attention_reduction: int. Q/K/V channels = block channels //
            `attention_reduction` (2: half, as in Wang et al.).
        attention_subsample: int. Max-pool factor of the blocks' keys and
            values (1: full Eq. 1; 2: Wang et al.'s cheaper variant).
        sync_batchnorm: bool. BatchNormalization over the global batch of
            all replicas (`synchronized=True`) instead of each replica's
            share: the same statistics as on one device. Weights are the
            same either way.
        batchnorm_groups: int. Training statistics per chunk of the global
            batch (`FusedBatchNormalization(groups=...)`; MoCo's shuffle-BN on
            one device); 1: over the whole (replica's) batch. Weights are
            the same either way.
        conv_bias: bool. False (default): no convolution has a bias (each
            feeds a BatchNormalization, which makes a bias redundant; see
            the module docstring). True: keras.applications' layout
            (biases in every convolution of R-50/101 and in the stem of
            R-18/34), that of weights files written before; a model saved
            without this setting is read back with it.
        name: str. Model name.

    Example:
    ```python
    backbone = ResNetBackbone(depth=18, width_multiplier=0.25, image_size=64)
    features = backbone(np.zeros((2, 64, 64, 3), "float32"))  # (2, 2, 2, 128)
    ```
    """

    def __init__(
        self,
        depth=50,
        width_multiplier=1.0,
        image_size=None,
        normalization="caffe",
        attention="none",
        attention_reduction=2,
        attention_subsample=1,
        sync_batchnorm=False,
        batchnorm_groups=1,
        conv_bias=False,
        name="resnet",
        **kwargs,
    ):
        if depth not in DEPTHS:
            raise ValueError(
                f"`depth` must be one of {sorted(DEPTHS)}. Received: "
                f"depth={depth!r}"
            )
        if not width_multiplier > 0:
            raise ValueError(
                "`width_multiplier` must be positive. Received: "
                f"width_multiplier={width_multiplier!r}"
            )
        if image_size is not None and image_size < 32:
            raise ValueError(
                "`image_size` must be at least 32 (the network downsamples "
                f"by 32). Received: image_size={image_size!r}"
            )

        block_type, blocks = DEPTHS[depth]
        placement = attention_placement.resolve(
            attention, dict(zip(STAGES, blocks))
        )

        # === Functional Model ===
        apply_block = (
            apply_bottleneck_block
            if block_type == "bottleneck"
            else apply_basic_block
        )
        inputs = keras.Input(shape=(image_size, image_size, 3), name="images")
        x = InputNormalization(normalization, name="input_normalization")(
            inputs
        )
        x = apply_stem(
            x, width_multiplier, sync_batchnorm, batchnorm_groups, conv_bias
        )
        pyramid_outputs = {}
        attention_outputs = {}
        for stage_index, (stage, num_blocks) in enumerate(zip(STAGES, blocks)):
            filters = scaled_filters(
                _STAGE_FILTERS[stage_index], width_multiplier
            )
            for block in range(num_blocks):
                first = block == 0
                stride = 2 if first and stage_index > 0 else 1
                # A bottleneck's first block always projects (64 -> 256
                # channels); a basic block only when it changes shape.
                conv_shortcut = first and (
                    block_type == "bottleneck" or stage_index > 0
                )
                x = apply_block(
                    x,
                    filters,
                    stride,
                    conv_shortcut,
                    name=f"{stage}_block{block + 1}",
                    sync=sync_batchnorm,
                    groups=batchnorm_groups,
                    bias=conv_bias,
                )
                if block + 1 in placement.get(stage, ()):
                    block_name = f"{stage}_block{block + 1}_nonlocal"
                    x, attention_weights = NonLocalBlock(
                        reduction=attention_reduction,
                        subsample=attention_subsample,
                        return_attention=True,
                        sync_batchnorm=sync_batchnorm,
                        batchnorm_groups=batchnorm_groups,
                        name=block_name,
                    )(x)
                    attention_outputs[block_name] = attention_weights
            pyramid_outputs[f"P{stage_index + 2}"] = x
        super().__init__(inputs=inputs, outputs=x, name=name, **kwargs)

        # === Config ===
        self.depth = depth
        self.width_multiplier = width_multiplier
        self.image_size = image_size
        self.normalization = normalization
        self.attention = attention
        self.attention_reduction = attention_reduction
        self.attention_subsample = attention_subsample
        self.sync_batchnorm = sync_batchnorm
        self.batchnorm_groups = batchnorm_groups
        self.conv_bias = conv_bias
        self.attention_placement = placement
        self.pyramid_outputs = pyramid_outputs
        self.attention_outputs = attention_outputs

    def get_config(self):
        return {
            "depth": self.depth,
            "width_multiplier": self.width_multiplier,
            "image_size": self.image_size,
            "normalization": self.normalization,
            "attention": self.attention,
            "attention_reduction": self.attention_reduction,
            "attention_subsample": self.attention_subsample,
            "sync_batchnorm": self.sync_batchnorm,
            "batchnorm_groups": self.batchnorm_groups,
            "conv_bias": self.conv_bias,
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        # A model saved before `conv_bias` existed has biases.
        return cls(**{"conv_bias": True, **config})
