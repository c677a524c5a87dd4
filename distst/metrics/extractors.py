"""Feature extractors for FID/KID, by name: ``inception`` (2048-d pool features of Inception v3 from a local
weights file), ``random_conv`` (a fixed, seeded random conv net: offline smoke runs only, its numbers compare
with nothing), ``random_logits`` (the same with a random 10-class head, for the Inception Score's plumbing)
and any a user or a test registers (``register_extractor``). An extractor whose record says ``logits`` also
has ``logits(features) -> N x classes`` (the Inception Score's class predictions).

Two Inception files are accepted, told apart by their classifier (1008 or 1000 classes):

- pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``: the TensorFlow FID graph of TTUR (Heusel et al.),
  whose pooling differs from torchvision's in four blocks (average pools exclude the padding; the last block
  max-pools). FID from this file is comparable to published numbers (CycleGAN/GAN-ticket papers).
- torchvision's ``inception_v3_google-0cc3c7bd.pth`` (ImageNet classifier): works, but its FIDs are not
  comparable to papers (a different network); use it only to compare runs with each other.

Both take images in [0, 1], resized to 299 x 299 (bilinear) and mapped to [-1, 1].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..weights import WeightsError, load_checked, read_state_dict

ExtractorFactory = Callable[[str | None], nn.Module]


@dataclass(frozen=True)
class Extractor:
    """A feature extractor's record: its factory and whether it reads a local weights file."""

    name: str
    factory: ExtractorFactory
    #: It needs ``model.inception_weights``: a job that computes FID with it must name the file.
    needs_weights: bool = False
    #: Its module has ``logits(features)``: class scores from its features (what the Inception Score needs).
    logits: bool = False


EXTRACTORS: dict[str, Extractor] = {}

INCEPTION_FILES = ("pt_inception-2015-12-05-6726825d.pth (pytorch-fid's release: paper-comparable FID) or "
                   "torchvision's inception_v3_google-0cc3c7bd.pth")


def register_extractor(name: str, factory: ExtractorFactory, needs_weights: bool = False,
                       logits: bool = False) -> ExtractorFactory:
    """``factory(weights_path_or_None)`` builds the extractor: images N x 3 x H x W in [0, 1] -> N x D (and, with
    ``logits``, a ``logits(features)`` method). Called next to the factory's definition (built-ins) or by a
    plugin."""
    EXTRACTORS[name] = Extractor(name, factory, needs_weights, logits)
    return factory


def has_logits(name: str) -> bool:
    """Whether extractor ``name`` gives class logits (the Inception Score); False for an unknown name."""
    return name in EXTRACTORS and EXTRACTORS[name].logits


def needs_weights(name: str) -> bool:
    """Whether extractor ``name`` reads a local weights file (False for an unknown name: validation says so)."""
    return name in EXTRACTORS and EXTRACTORS[name].needs_weights


def build_extractor(name: str, weights: str | Path | None) -> nn.Module:
    if name not in EXTRACTORS:
        raise ValueError(f"unknown feature extractor {name!r}; registered: {', '.join(sorted(EXTRACTORS))}")
    return EXTRACTORS[name].factory(str(weights) if weights else None).eval().requires_grad_(False)


def _tf_pool_branch(block: type[nn.Module], pool: Callable[[Tensor], Tensor]) -> type[nn.Module]:
    """``block`` (a torchvision Inception block) whose pool branch pools as the TF FID graph does."""

    class TFPoolBlock(block):  # type: ignore[valid-type, misc]
        def _forward(self, x: Tensor) -> list[Tensor]:
            outputs = super()._forward(x)
            outputs[-1] = self.branch_pool(pool(x))  # torchvision's pool branch counts the padding
            return outputs

    TFPoolBlock.__name__ = f"TF{block.__name__}"
    return TFPoolBlock


def _avg_pool_without_padding(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _max_pool(x: Tensor) -> Tensor:
    return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


def inception_network(tf_fid: bool) -> nn.Module:
    """Inception v3 without auxiliary head: the TF FID variant (1008 classes) or torchvision's (1000)."""
    from torchvision.models import inception as tv

    if not tf_fid:
        return tv.Inception3(num_classes=1000, aux_logits=False, init_weights=False)
    blocks = [tv.BasicConv2d, _tf_pool_branch(tv.InceptionA, _avg_pool_without_padding), tv.InceptionB,
              _tf_pool_branch(tv.InceptionC, _avg_pool_without_padding), tv.InceptionD,
              _tf_pool_branch(tv.InceptionE, _avg_pool_without_padding), tv.InceptionAux]
    net = tv.Inception3(num_classes=1008, aux_logits=False, init_weights=False, inception_blocks=blocks)
    net.Mixed_7c = _tf_pool_branch(tv.InceptionE, _max_pool)(2048)
    return net


class InceptionFeatures(nn.Module):
    """2048-d average-pool features of an Inception v3; the classifier's weight is kept aside for ``logits``."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        # Not persistent: the extractor's state dict stays the network's, as before logits came.
        self.register_buffer("classifier", network.fc.weight.detach().clone(), persistent=False)
        network.fc = nn.Identity()
        self.network = network

    def logits(self, features: Tensor) -> Tensor:
        """Class logits without the classifier's bias, as the original Inception Score code (Salimans et al.:
        ``pool3 @ W`` of the 2015-12-05 graph's 1008-way softmax) and torch-fidelity's ``logits_unbiased``."""
        return features.to(self.classifier.dtype) @ self.classifier.T

    def forward(self, images: Tensor) -> Tensor:
        x = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
        return self.network(2 * x - 1)


def inception_features(weights: str | None) -> nn.Module:
    """The ``inception`` extractor from a local weights file (never downloaded)."""
    if not weights:
        raise WeightsError(f"FID needs a local Inception weights file: set model.inception_weights to "
                           f"{INCEPTION_FILES} (distst never downloads weights)")
    state = read_state_dict(weights)
    state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
    classes = state.get("fc.weight", torch.empty(0)).shape[:1]
    if tuple(classes) not in ((1008,), (1000,)):
        raise WeightsError(f"{weights} is not an Inception v3 state dict (no fc.weight with 1008 or 1000 classes); "
                           f"expected {INCEPTION_FILES}")
    network = inception_network(tf_fid=classes[0] == 1008)
    load_checked(network, state, str(weights))
    return InceptionFeatures(network)


def random_conv_features(weights: str | None) -> nn.Module:
    """A fixed random conv net (64-d average-pooled features, seeded, global RNG untouched): lets a run without
    Inception weights (the CPU demo job) go through the whole FID verdict; not comparable to anything."""
    generator = torch.Generator().manual_seed(2015)
    net = nn.Sequential(nn.Conv2d(3, 32, 3, stride=2), nn.ReLU(), nn.Conv2d(32, 64, 3, stride=2), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with torch.no_grad():
        for param in net.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) / max(1, param[0].numel()) ** 0.5)
    return net


class RandomLogits(nn.Module):
    """``random_conv``'s features with a fixed random 10-class head: tests and smoke runs of the Inception Score."""

    def __init__(self) -> None:
        super().__init__()
        self.features = random_conv_features(None)
        generator = torch.Generator().manual_seed(2016)
        self.register_buffer("classifier", torch.randn(10, 64, generator=generator) * 5)

    def forward(self, images: Tensor) -> Tensor:
        return self.features(images)

    def logits(self, features: Tensor) -> Tensor:
        # The features are all near 0.5 (ReLU, then average pooling): centred, so that the predicted class varies
        # from image to image rather than one class winning everywhere.
        return (features.to(self.classifier.dtype) - 0.5) @ self.classifier.T


def random_logits_features(weights: str | None) -> nn.Module:
    """The ``random_logits`` extractor (no weights file)."""
    return RandomLogits()


register_extractor("inception", inception_features, needs_weights=True, logits=True)
register_extractor("random_conv", random_conv_features)
register_extractor("random_logits", random_logits_features, logits=True)
