"""BN-Inception-lite: the network of the paper's section 4.2, scaled to 28x28 images.

The paper's BN-Inception is GoogLeNet with batch norm before every nonlinearity, each 5x5
convolution replaced by two stacked 3x3 convolutions, and stride-2 reduction modules in
place of pooling layers between Inception modules. This is the same design at the size of
MNIST and 2 CPU cores (about 200K parameters and 15M multiply-adds per 28x28 image at
width 1; `minidl info --model bn_inception_lite` prints the exact figures):

    input (N, C_in, 28, 28)                       (32x32 RGB works too: 32 -> 16 -> 8)
    stem     conv 3x3 -> 16, max pool 2x2          28x28 -> 14x14
             conv 3x3 -> 32                        14x14
    inception (3a)  1x1 16 | 1x1 16 -> 3x3 24 | 1x1 16 -> 3x3 24 -> 3x3 24 | avg pool -> 1x1 16
                                                    -> 80 channels, 14x14
    reduction (3b)  1x1 32 -> 3x3 48 s2 | 1x1 32 -> 3x3 48 -> 3x3 48 s2 | max pool 3x3 s2
                                                    -> 48 + 48 + 80 = 176 channels, 7x7
    inception (4a)  1x1 64 | 1x1 48 -> 3x3 64 | 1x1 48 -> 3x3 64 -> 3x3 64 | max pool -> 1x1 32
                                                    -> 224 channels, 7x7
    global average pool, linear -> num_classes

Every convolution is followed by batch norm (bn=True, no conv bias: BN's beta takes its
role) or carries a bias (bn=False), then the activation ("relu" or "sigmoid"). There is no
dropout and no local response normalization. Branches are joined by `nn.Concat` along
channels. `width` scales every channel count (rounded, at least 1). Convolutions are
He-initialized (`kaiming_normal_`, fan_in, the activation's gain), their biases zero.
"""
from __future__ import annotations

from .. import nn

_ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid}


class ConvBNAct(nn.Sequential):
    """conv (no bias) -> BatchNorm2d -> activation, or conv (bias) -> activation."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1, *, bn: bool,
                 activation: str):
        layers = [nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=kernel_size // 2,
                            bias=not bn)]
        if bn:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(_ACTIVATIONS[activation]())
        super().__init__(*layers)
        self.out_channels = cout


class InceptionModule(nn.Concat):
    """Four branches on the same input, concatenated along channels:
    1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 -> 3x3 (the paper's replacement of 5x5) | pool -> 1x1."""

    def __init__(self, cin: int, c1: int, c3r: int, c3: int, cd3r: int, cd3: int,
                 pool_proj: int, pool: str = "avg", *, bn: bool, activation: str):
        def cba(i, o, k, s=1):
            return ConvBNAct(i, o, k, s, bn=bn, activation=activation)
        pool_layer = (nn.AvgPool2d(3, stride=1, padding=1) if pool == "avg"
                      else nn.MaxPool2d(3, stride=1, padding=1))
        super().__init__(
            cba(cin, c1, 1),
            nn.Sequential(cba(cin, c3r, 1), cba(c3r, c3, 3)),
            nn.Sequential(cba(cin, cd3r, 1), cba(cd3r, cd3, 3), cba(cd3, cd3, 3)),
            nn.Sequential(pool_layer, cba(cin, pool_proj, 1)),
            dim=1)
        self.out_channels = c1 + c3 + cd3 + pool_proj


class ReductionModule(nn.Concat):
    """Halves the map with stride-2 branches instead of a pooling layer between modules:
    1x1 -> 3x3 s2 | 1x1 -> 3x3 -> 3x3 s2 | max pool 3x3 s2 (passes the input's channels)."""

    def __init__(self, cin: int, c3r: int, c3: int, cd3r: int, cd3: int, *, bn: bool,
                 activation: str):
        def cba(i, o, k, s=1):
            return ConvBNAct(i, o, k, s, bn=bn, activation=activation)
        super().__init__(
            nn.Sequential(cba(cin, c3r, 1), cba(c3r, c3, 3, 2)),
            nn.Sequential(cba(cin, cd3r, 1), cba(cd3r, cd3, 3), cba(cd3, cd3, 3, 2)),
            nn.MaxPool2d(3, stride=2, padding=1),
            dim=1)
        self.out_channels = c3 + cd3 + cin


def bn_inception_lite(num_classes: int = 10, in_channels: int = 1, bn: bool = True,
                      activation: str = "relu", width: float = 1.0) -> nn.Sequential:
    """BN-Inception-lite (see the module docstring for the layer table).

    Args:
        num_classes: outputs of the classifier.
        in_channels: 1 for MNIST / Fashion-MNIST, 3 for CIFAR-10.
        bn: batch norm before every nonlinearity (the paper's BN-Inception); False gives
            the plain Inception baseline, with conv biases instead.
        activation: "relu" or "sigmoid" (the paper's BN-x5-Sigmoid variant).
        width: multiplies every channel count.

    Shapes: input (N, in_channels, H, W) with H, W >= 8 (28 or 32 as designed); output
    (N, num_classes) logits.

    Example:
        >>> import minidl
        >>> from minidl.models import bn_inception_lite
        >>> model = bn_inception_lite()
        >>> model(minidl.randn(2, 1, 28, 28)).shape
        (2, 10)
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"bn_inception_lite: activation must be one of "
                         f"{sorted(_ACTIVATIONS)}, got {activation!r}")
    if not width > 0:
        raise ValueError(f"bn_inception_lite: width must be positive, got {width}")
    if num_classes < 1 or in_channels < 1:
        raise ValueError(f"bn_inception_lite: need num_classes >= 1 and in_channels >= 1, got "
                         f"{num_classes} and {in_channels}")

    def c(n):
        return max(1, int(round(n * width)))
    kw = {"bn": bn, "activation": activation}
    stem = nn.Sequential(ConvBNAct(in_channels, c(16), 3, **kw), nn.MaxPool2d(2),
                         ConvBNAct(c(16), c(32), 3, **kw))
    i3a = InceptionModule(c(32), c(16), c(16), c(24), c(16), c(24), c(16), "avg", **kw)
    r3b = ReductionModule(i3a.out_channels, c(32), c(48), c(32), c(48), **kw)
    i4a = InceptionModule(r3b.out_channels, c(64), c(48), c(64), c(48), c(64), c(32), "max",
                          **kw)
    model = nn.Sequential(stem, i3a, r3b, i4a, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(i4a.out_channels, num_classes))
    # He initialization of every convolution (gain sqrt(2) for ReLU, 1 for sigmoid),
    # zero conv biases. PyTorch's default (kaiming_uniform_ with a=sqrt(5)) shrinks the
    # signal's second moment ~6x per ReLU layer: the 11-layer plain network would start
    # with vanishing activations and gradients, an unfair baseline for the ablation.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity=activation)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def last_inception_preactivation(model: nn.Sequential):
    """The activation module whose input the ablation records: the 1x1 branch of the last
    Inception module (its input is the pre-activation: BN output, or conv + bias)."""
    last = [m for m in model.modules() if isinstance(m, InceptionModule)][-1]
    return [m for m in last[0].modules() if isinstance(m, tuple(_ACTIVATIONS.values()))][0]
