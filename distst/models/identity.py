"""Style transfer trained with identity losses (SANet, MCCNet): the shared pass, losses and errors.

One pass stylises each content with its style and each image with itself (the identity pairs), and measures
everything with the frozen loss VGG to relu5_1: content (normalised relu4_1 and relu5_1), style (every tap),
identity on images (identity1) and on features (identity2). A model supplies only ``transform_features``.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import torch
from pydantic import Field
from torch import Tensor, nn

from .base import StyleTransferModel, StyleTransferSection
from .stats import blend, mean_variance_norm, per_sample_l2, style_error, style_loss
from .vgg import VGGEncoder, frozen_copy, init_encoder

CONTENT_TAPS = (3, 4)  # relu4_1 and relu5_1 of the loss VGG


class IdentitySection(StyleTransferSection):
    """The identity-loss weights (their defaults are each model's reference values)."""

    identity1_weight: float = Field(50.0, ge=0, description="identity loss on images")
    identity2_weight: float = Field(1.0, ge=0, description="identity loss on features")


@dataclass
class IdentityPass:
    """Everything the identity-trained models' losses and errors are made of, for one batch of pairs."""

    output: Tensor
    out_feats: list[Tensor]
    content_feats: list[Tensor]
    style_feats: list[Tensor]
    identity_content: Tensor
    identity_style: Tensor
    identity_content_feats: list[Tensor]
    identity_style_feats: list[Tensor]
    #: The encoder's features of the style images (a model's extra terms may reuse them); None in ``forward_pass``.
    style_enc: list[Tensor] | None
    #: The encoder's features of the content images, likewise.
    content_enc: list[Tensor] | None = None


class IdentityTrainedModel(StyleTransferModel):
    """A style-transfer model whose training adds the identity losses."""

    @abstractmethod
    def transform_features(self, content_enc: list[Tensor], style_enc: list[Tensor]) -> Tensor:
        """The decoder's input (full style) from the encoder's features of content and style."""

    def loss_weights(self) -> dict[str, float]:
        return {**super().loss_weights(),
                "identity1": self.cfg.identity1_weight, "identity2": self.cfg.identity2_weight}  # type: ignore[attr-defined]

    def identity_pass(self, content: Tensor, style: Tensor, loss_net: VGGEncoder) -> IdentityPass:
        self.check_input(content, style)
        content_enc, style_enc = self.encode(content, "content"), self.encode(style, "style")
        identity_content = self.decoder(self.transform_features(content_enc, content_enc))
        identity_style = self.decoder(self.transform_features(style_enc, style_enc))
        with torch.no_grad():
            content_feats, style_feats = loss_net(content), loss_net(style)
        transformed = self.transform_features(content_enc, style_enc)
        self.features.record("transform", transformed)
        output = self.decoder(transformed)
        self.features.record("output", output)
        measured = self._measured(content_feats, style_feats, output, identity_content, identity_style, loss_net,
                                  style_enc)
        measured.content_enc = content_enc
        return measured

    def forward_pass(self, content: Tensor, style: Tensor, loss_net: VGGEncoder) -> IdentityPass:
        """The same pass through whole forward calls, ``self(content, style)``, ``self(content, content)`` and
        ``self(style, style)`` (equal at alpha 1): it encodes each image again, but a forward answered by an
        exported graph (``distst.export.errors``) is then measured by the same errors as the model."""
        output, identity_content, identity_style = self(content, style), self(content, content), self(style, style)
        with torch.no_grad():
            content_feats, style_feats = loss_net(content), loss_net(style)
        return self._measured(content_feats, style_feats, output, identity_content, identity_style, loss_net, None)

    @staticmethod
    def _measured(content_feats: list[Tensor], style_feats: list[Tensor], output: Tensor, identity_content: Tensor,
                  identity_style: Tensor, loss_net: VGGEncoder, style_enc: list[Tensor] | None) -> IdentityPass:
        return IdentityPass(
            output=output,
            out_feats=loss_net(output),
            content_feats=content_feats,
            style_feats=style_feats,
            identity_content=identity_content,
            identity_style=identity_style,
            identity_content_feats=loss_net(identity_content),
            identity_style_feats=loss_net(identity_style),
            style_enc=style_enc,
        )

    @staticmethod
    def identity_losses(p: IdentityPass, content: Tensor, style: Tensor) -> dict[str, Tensor]:
        mse = nn.functional.mse_loss
        content_loss = sum(mse(mean_variance_norm(p.out_feats[i]), mean_variance_norm(p.content_feats[i]))
                           for i in CONTENT_TAPS)
        identity2 = sum(mse(a, b) for a, b in zip(p.identity_content_feats, p.content_feats, strict=True))
        identity2 = identity2 + sum(mse(a, b) for a, b in zip(p.identity_style_feats, p.style_feats, strict=True))
        return {
            "content": content_loss,
            "style": style_loss(p.out_feats, p.style_feats),
            "identity1": mse(p.identity_content, content) + mse(p.identity_style, style),
            "identity2": identity2,
        }

    def loss_terms(self, content: Tensor, style: Tensor, loss_net: VGGEncoder) -> dict[str, Tensor]:
        return self.identity_losses(self.identity_pass(content, style, loss_net), content, style)

    def errors(self, content: Tensor, style: Tensor, loss_net: VGGEncoder) -> dict[str, Tensor]:
        p = self.forward_pass(content, style, loss_net)
        content_error = sum(per_sample_l2(mean_variance_norm(p.out_feats[i]) - mean_variance_norm(p.content_feats[i]))
                            for i in CONTENT_TAPS)
        identity = per_sample_l2(p.identity_content - content) + per_sample_l2(p.identity_style - style)
        for ours, refs in ((p.identity_content_feats, p.content_feats), (p.identity_style_feats, p.style_feats)):
            identity = identity + sum(per_sample_l2(a - b) for a, b in zip(ours, refs, strict=True))
        return {"content_error": content_error, "style_error": style_error(p.out_feats, p.style_feats),
                "identity_error": identity}


class Relu41IdentityModel(IdentityTrainedModel):
    """An identity-trained model whose transform reads relu4_1 only (MCCNet, MANet): ``transform(content4_1,
    style4_1)``.

    The encoder runs to relu4_1, all the transform reads; the references' relu5_1 serves only their losses, so
    only the frozen loss VGG goes on to relu5_1: the network that is trained, pruned, counted and shipped has no
    dead layers.
    """

    encoder_depth = "relu4_1"
    #: The frozen loss VGG's depth: content loss at relu4_1 and relu5_1, style and identity losses at all five taps.
    loss_depth = "relu5_1"
    input_multiple = 8  # the identity losses compare decoder outputs with the inputs pixel for pixel
    min_size = 16

    def loss_network(self) -> VGGEncoder:
        """A frozen VGG to relu5_1: the pretrained ``model.vgg_weights`` when given; else He-initialised, with the
        layers up to relu4_1 taken from the encoder as built when it has the reference plan (the random features
        the encoder computes are then the ones the losses measure, as with the other models' loss VGG)."""
        vgg_weights = self.cfg.vgg_weights  # type: ignore[attr-defined]
        vgg = VGGEncoder(self.loss_depth, self.cfg.width)
        init_encoder(vgg, vgg_weights)
        if not vgg_weights and self._reference_encoder:
            vgg.load_state_dict({**vgg.state_dict(), **self.encoder.state_dict()})
        return frozen_copy(vgg)

    def stylize_features(self, content_feats: list[Tensor], style_feats: list[Tensor], alpha: float) -> Tensor:
        """As the references' test scripts: alpha blends with the transform's content-on-content output, not the
        raw content features (alpha=0 decodes transform(content, content))."""
        stylized = self.transform(content_feats[-1], style_feats[-1])
        if alpha == 1.0:
            return stylized
        return blend(stylized, self.transform(content_feats[-1], content_feats[-1]), alpha)

    def transform_features(self, content_enc: list[Tensor], style_enc: list[Tensor]) -> Tensor:
        return self.transform(content_enc[-1], style_enc[-1])
