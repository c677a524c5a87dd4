"""The reference CycleGAN generator's structure (junyanz/pytorch-CycleGAN-and-pix2pix, ``models/networks.py``
``ResnetGenerator``), written again for tests: one ``nn.Sequential`` named ``model`` whose residual blocks hold
their own ``conv_block`` Sequential, so its state dict has the reference's key names and order
(``model.1.weight``, ``model.10.conv_block.1.weight``...). Options as the reference's: ``ngf``, ``n_blocks``,
``use_dropout``; ``running_stats`` builds the InstanceNorms of a file saved before PyTorch 0.4 (with running
statistics). Also the reference's PatchGAN layout and a U-Net-like nesting, as files of other architectures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn


def _norm(running_stats: bool) -> Callable[[int], nn.Module]:
    return lambda channels: nn.InstanceNorm2d(channels, affine=False, track_running_stats=running_stats)


class ReferenceResnetBlock(nn.Module):
    def __init__(self, dim: int, use_dropout: bool, norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        layers = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=True), norm(dim), nn.ReLU(True)]
        if use_dropout:
            layers.append(nn.Dropout(0.5))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=True), norm(dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv_block(x)


class ReferenceResnetGenerator(nn.Module):
    """[-1, 1] -> [-1, 1]; instance norm without affine parameters, so every conv has a bias."""

    def __init__(self, ngf: int = 64, n_blocks: int = 9, use_dropout: bool = False, running_stats: bool = False
                 ) -> None:
        super().__init__()
        norm = _norm(running_stats)
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7, bias=True), norm(ngf), nn.ReLU(True)]
        for mult in (1, 2):  # two stride-2 downsamplings
            layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1, bias=True),
                       norm(ngf * mult * 2), nn.ReLU(True)]
        layers += [ReferenceResnetBlock(ngf * 4, use_dropout, norm) for _ in range(n_blocks)]
        for mult in (4, 2):  # two stride-2 transposed convs back
            layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1,
                                          bias=True), norm(ngf * mult // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        for module in self.modules():  # the reference's 'normal' initialisation, biases random too: a real test
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
                nn.init.normal_(module.bias, 0.0, 0.02)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def translate(self, images: Tensor) -> Tensor:
        """[0, 1] in and out, as distst's ``CycleGAN.translate``."""
        with torch.no_grad():
            return (self.eval()(images * 2 - 1) + 1) / 2


class ReferencePatchGAN(nn.Module):
    """The reference's NLayerDiscriminator (3 layers, instance norm): a discriminator file's layout."""

    def __init__(self, ndf: int = 8) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for cin, cout, stride in ((ndf, ndf * 2, 2), (ndf * 2, ndf * 4, 2), (ndf * 4, ndf * 8, 1)):
            layers += [nn.Conv2d(cin, cout, 4, stride, 1), nn.InstanceNorm2d(cout), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * 8, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)


class _UnetLevel(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1), nn.ReLU(True), nn.ConvTranspose2d(cout, cin, 4, 2, 1))


class ReferenceUnetLike(nn.Module):
    """The key nesting of the reference's UnetGenerator (``model.model.0.weight``...), one level deep."""

    def __init__(self, ngf: int = 8) -> None:
        super().__init__()
        self.model = _UnetLevel(3, ngf)


def write_generator(path: Path, generator: nn.Module, prefix: str = "") -> Path:
    """``generator``'s state dict saved as the reference saves it (``torch.save(net.state_dict())``)."""
    torch.save({prefix + key: value for key, value in generator.state_dict().items()}, path)
    return path
