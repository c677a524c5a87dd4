"""The one interface every distst model implements, and the style-transfer family built on it.

A model declares, and the trainer only asks:
- its named parameter **groups** (pruning scopes, counts, freezing): encoder / transform / decoder for style
  transfer, generator / discriminator for a GAN;
- its **channel plan** (output widths per resizable layer, ``plan.py``), which it is built from;
- its optimizer **stages** in step order (one for style transfer; a GAN alternates two), each stage's loss
  terms and their weights, and its **loss network** (a frozen VGG, or none);
- per-pair evaluation **errors**, and named intermediate **features** it records on request so that a
  method's regulariser sees them without a second forward pass.
"""

from __future__ import annotations

import contextlib
from abc import ABCMeta, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from .. import registry
from ..config import Config, ModelSection, TrainConfig
from ..weights import load_checked, read_state_dict
from .decoder import Decoder
from .plan import Plan, merge_plan, scale_plan
from .stylecache import StyleCache
from .vgg import LAST_CONV, VGGEncoder, frozen_copy, init_encoder


@dataclass
class Stage:
    """One optimizer and the groups it steps, in the model's declared step order."""

    name: str
    groups: tuple[str, ...]
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    #: Multiplier of ``lr`` at an optimizer step (LambdaLR).
    lr_lambda: Callable[[int], float] = field(default=lambda step: 1.0)
    #: Optimizer steps the stage takes per micro-batch, in order, each on the next ``1/repeat`` of it (consecutive
    #: chunks of every tensor): a GAN critic's n_critic steps per generator step. Each chunk is a whole step, so
    #: it needs ``deepspeed.gradient_accumulation_steps=1`` and a batch that ``repeat`` divides (``problem``).
    repeat: int = 1
    #: Called after each optimizer step the stage takes, once the engine has updated the weights (a moving
    #: average of them, say); state it changes must live in the model to be checkpointed.
    after_step: Callable[[], None] | None = None

    def optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=self.lr, betas=self.betas)

    def problem(self, batch_size: int, accumulation: int) -> str | None:
        """Why this stage cannot run with these data and DeepSpeed settings, or None."""
        if self.repeat > 1 and accumulation > 1:
            return (f"stage {self.name} takes {self.repeat} optimizer steps per micro-batch: it needs "
                    f"deepspeed.gradient_accumulation_steps=1 (got {accumulation})")
        if batch_size % self.repeat:
            return (f"stage {self.name} takes {self.repeat} optimizer steps per batch, on equal chunks: "
                    f"data.batch_size={batch_size} must be a multiple of {self.repeat}")
        return None

    def parts(self, batch: tuple[Tensor, ...]) -> list[tuple[Tensor, ...]]:
        """The micro-batch chunks of this stage's steps: the batch itself, or ``repeat`` consecutive chunks."""
        if self.repeat == 1:
            return [batch]
        size = batch[0].shape[0] // self.repeat
        return [tuple(t[i * size:(i + 1) * size] for t in batch) for i in range(self.repeat)]


def inverse_decay(decay: float) -> Callable[[int], float]:
    """lr / (1 + decay * step), the AdaIN/SANet references' schedule."""
    return lambda step: 1.0 / (1.0 + decay * step)


class FeatureRecorder:
    """Named intermediate tensors of the current forward pass, kept only when a method asked for them.

    Models call ``record`` at their semantic points (``content/relu4_1``, ``transform``, ``output``...);
    ``module:<qualified name>`` requests capture a submodule's outputs through a forward hook.
    """

    def __init__(self) -> None:
        self.wanted: set[str] = set()
        self.store: dict[str, list[Tensor]] = {}
        self._hooks: list[Any] = []

    def want(self, names: Iterable[str], model: nn.Module) -> None:
        for handle in self._hooks:
            handle.remove()
        self.wanted, self._hooks = set(names), []
        modules = dict(model.named_modules())
        for name in self.wanted:
            if name.startswith("module:"):
                path = name.removeprefix("module:")
                if path not in modules:
                    raise ValueError(f"feature {name!r}: {type(model).__name__} has no submodule {path!r}")
                self._hooks.append(modules[path].register_forward_hook(
                    lambda _m, _i, out, key=name: self.store.setdefault(key, []).append(out)))

    def record(self, name: str, value: Tensor) -> None:
        if name in self.wanted:
            self.store.setdefault(name, []).append(value)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Keep nothing recorded inside (a method's own extra forward passes: no method may take them for the
        step's); module hooks still fire, into a store that is dropped."""
        wanted, store = self.wanted, self.store
        self.wanted, self.store = set(), {}
        try:
            yield
        finally:
            self.wanted, self.store = wanted, store

    def take(self) -> dict[str, list[Tensor]]:
        """What was recorded since the last ``take`` (and forget it)."""
        out, self.store = self.store, {}
        return out


class DiststModel(nn.Module, metaclass=ABCMeta):
    """Base of every model: groups, plan, stages, losses, errors, features."""

    name: ClassVar[str]
    section: ClassVar[type[ModelSection]]
    # Height and width of inputs must be multiples of this (1: any size), and at least min_size.
    input_multiple: ClassVar[int] = 1
    min_size: ClassVar[int] = 16
    #: Names this model can ``record`` (module outputs are always available as ``module:<name>``).
    feature_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: ModelSection) -> None:
        super().__init__()
        self.cfg = cfg
        self.plan: Plan = self.resolve_plan(cfg)
        self.features = FeatureRecorder()

    def init_weights(self, files: bool = True) -> None:
        """Weights of a fresh model (``distst.models.create``): from the local files its section names (its
        record's ``weight_keys``) when ``files``. Default: the modules' own initialisation."""

    # --- channel plans -------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def reference_plan(cls) -> Plan:
        """The reference widths of every resizable layer, by group."""

    @classmethod
    def default_plan(cls, width: float) -> Plan:
        return scale_plan(cls.reference_plan(), width)

    @classmethod
    def check_plan(cls, plan: Plan) -> None:
        """Refuse plans the architecture cannot take (layers whose outputs are added or blended)."""

    @classmethod
    def resolve_plan(cls, cfg: ModelSection) -> Plan:
        plan = merge_plan(cls.default_plan(cfg.width), cfg.plan, cls.name)
        cls.check_plan(plan)
        return plan

    # --- what the trainer asks -----------------------------------------------------------------
    @abstractmethod
    def groups(self) -> dict[str, nn.Module]:
        """The named parts that pruning, counting and freezing address."""

    def channel_layers(self) -> dict[str, dict[str, nn.Module]]:
        """Modules whose output channels a channel plan sets and channel pruning removes, by group and plan
        layer name (a subset of the plan's layers). Default: none."""
        return {}

    def coupling_forward(self, size: int) -> Tensor | list[Tensor]:
        """One forward pass on random ``size`` x ``size`` inputs that exercises every channel coupling (traced by
        Torch-Pruning's dependency graph for physical slimming; every tensor returned is traced). Models without channel layers have none; channel
        pruning refuses them up front (``supports_channel_pruning``), so this default is never traced."""
        raise TypeError(f"{self.name} declares no channel layers: it cannot be channel-pruned")

    @classmethod
    def supports_channel_pruning(cls) -> bool:
        """Whether the model declares channel layers and a coupling forward (both overridden)."""
        return (cls.channel_layers is not DiststModel.channel_layers
                and cls.coupling_forward is not DiststModel.coupling_forward)

    @abstractmethod
    def stages(self, train: TrainConfig) -> list[Stage]:
        """Optimizer stages in step order."""

    def loss_network(self) -> nn.Module | None:
        """A frozen network the losses are computed with (never trained, saved or pruned), or None."""
        return None

    @abstractmethod
    def stage_losses(self, stage: str, batch: tuple[Tensor, ...], loss_net: nn.Module | None) -> dict[str, Tensor]:
        """Unweighted loss terms (scalars) of ``stage`` for one micro-batch."""

    @abstractmethod
    def loss_weights(self) -> dict[str, float]:
        """Weight of every loss term, from the model's config section."""

    @abstractmethod
    def errors(self, content: Tensor, style: Tensor, loss_net: nn.Module | None) -> dict[str, Tensor]:
        """Per-pair evaluation errors (shape N); their means are logged and summed into E."""

    def rank_state(self) -> dict[str, Tensor]:
        """State that differs from rank to rank (a GAN's image pools): DeepSpeed checkpoints the module from rank
        0 only, so the trainer saves this with each rank's own checkpoint file and gives it back on resume.
        The tensors themselves, by name (``load_rank_state`` copies into them); none by default."""
        return {}

    def load_rank_state(self, state: Mapping[str, Tensor]) -> None:
        """Restore what ``rank_state`` returned on this rank (after the engines restored rank 0's module)."""
        own = self.rank_state()
        if set(state) != set(own):
            raise ValueError(f"{self.name}: this rank's saved state has {sorted(state)}, the model {sorted(own)}")
        with torch.no_grad():
            for name, tensor in own.items():
                tensor.copy_(state[name])

    #: What decides whether a pruned level matches the dense one (lower is better): ``total_error`` (E, the
    #: sum of the per-pair errors' means) or a key of ``set_metrics`` (a GAN's FID). Set by ``@registry.model``.
    verdict_metric: ClassVar[str] = "total_error"
    #: The keys ``set_metrics`` returns (what a sweep may rank trials by). Set by ``@registry.model``.
    set_metric_names: ClassVar[tuple[str, ...]] = ()

    def set_metrics(self, held_out: Callable[[int], tuple[Tensor, Tensor]]) -> dict[str, float]:
        """Metrics over whole held-out sets (FID, KID...), once per finished IMP level; ``held_out(n)`` gives the
        first n held-out content and style images. None by default."""
        return {}

    def check_input(self, *images: Tensor) -> None:
        for image in images:
            if image.dim() != 4 or image.shape[1] != 3:
                raise ValueError(f"{self.name} expects N x 3 x H x W images in [0, 1], got shape {tuple(image.shape)}")
            h, w = image.shape[-2:]
            if min(h, w) < self.min_size:
                raise ValueError(f"{self.name} needs images of at least {self.min_size}x{self.min_size}, got {h}x{w}")
            m = self.input_multiple
            if h % m or w % m:
                raise ValueError(
                    f"{self.name} needs image height and width that are multiples of {m}, got {h}x{w}; "
                    f"resize or crop to e.g. {max(m, h // m * m)}x{max(m, w // m * m)}"
                )


# --- style transfer: encoder / transform / decoder ----------------------------------------------

class StyleTransferSection(ModelSection):
    """Keys every style-transfer model has (``model.*``)."""

    groups: ClassVar[tuple[str, ...]] = ("encoder", "transform", "decoder")
    default_prune_scope: ClassVar[tuple[str, ...]] = ("encoder", "transform", "decoder")

    vgg_weights: str | None = Field(None, description="local vgg_normalised.pth (or a converted torchvision VGG-19)")
    decoder_weights: str | None = Field(None, description="local decoder .pth in the reference layout")
    transform_weights: str | None = Field(None, description="local transform .pth (SANet's transformer_iter_*.pth)")
    encoder: Literal["auto", "frozen", "trainable"] = Field(
        "auto", description="frozen = reference set-up; trainable = 'plus' set-up with a separate frozen loss VGG; "
                            "auto = trainable when the method trains the whole network (IMP), else frozen")
    content_weight: float = Field(1.0, ge=0)
    style_weight: float = Field(10.0, ge=0)

    def resolve(self, cfg: Config) -> None:
        if self.encoder == "auto":
            self.encoder = "trainable" if registry.method_record(cfg.prune.method).trains_encoder else "frozen"


class StyleTransferModel(DiststModel):
    """A VGG encoder, a feature transform and a decoder; trained with one Adam against a frozen loss VGG."""

    encoder_depth: ClassVar[str]
    feature_names = ("content/relu1_1", "content/relu2_1", "content/relu3_1", "content/relu4_1", "content/relu5_1",
                     "style/relu1_1", "style/relu2_1", "style/relu3_1", "style/relu4_1", "style/relu5_1",
                     "transform", "output")

    def __init__(self, cfg: StyleTransferSection) -> None:
        super().__init__(cfg)
        # Built in this order (encoder, transform, decoder): the order their initialisations draw random numbers.
        self.encoder = self.build_encoder(self.plan)
        self.transform = self.build_transform(self.plan)
        self.decoder = self.build_decoder(self.plan)
        self._reference_encoder = self.plan == self.default_plan(cfg.width)
        #: The file the encoder's weights were loaded from (``init_weights`` sets it), if any.
        self.encoder_source: str | None = None

    #: What an exported style side caches for the content side (``distst export``); None: every encoder tap.
    style_cache: ClassVar[StyleCache | None] = None
    #: ``model.*`` keys naming the parts' reference weight files (their records' ``weight_keys``).
    WEIGHT_KEYS: ClassVar[tuple[str, ...]] = ("vgg_weights", "decoder_weights", "transform_weights")

    def init_weights(self, files: bool = True) -> None:
        """The encoder pretrained from ``model.vgg_weights`` (else He-initialised) and the other parts from their
        files (``part_weight_files``) when ``files``; ``model.encoder == 'frozen'`` (the reference set-up) leaves
        the encoder without gradients."""
        cfg = self.cfg
        vgg_weights = cfg.vgg_weights if files else None  # type: ignore[attr-defined]
        self.load_encoder(vgg_weights)
        self.encoder_source = vgg_weights
        for path, part in self.part_weight_files() if files else ():
            if path:
                # A part whose official files hold unused weights (MCCNet's h conv) drops them by name.
                load_checked(part, getattr(part, "reference_state", dict)(read_state_dict(path)), path)
        self.encoder.requires_grad_(cfg.encoder == "trainable")  # type: ignore[attr-defined]

    def load_encoder(self, vgg_weights: str | None) -> None:
        """Pretrained encoder weights from a local file in the reference layout, else a He initialisation."""
        init_encoder(self.encoder, vgg_weights)  # type: ignore[arg-type]

    def part_weight_files(self) -> list[tuple[str | None, nn.Module]]:
        """The (file, part) pairs ``init_weights`` loads strictly besides the encoder: by default the decoder from
        ``model.decoder_weights`` and the transform from ``model.transform_weights``."""
        cfg = self.cfg
        return [(cfg.decoder_weights, self.decoder), (cfg.transform_weights, self.transform)]  # type: ignore[attr-defined]

    def build_encoder(self, plan: Plan) -> nn.Module:
        """The encoder for ``plan``: called on images it returns the features at each of its ``tap_names``
        (``relu1_1``..., shallowest first); ``conv_layers()`` gives its resizable convs by plan layer name. By
        default the reference ``vgg_normalised`` VGG sliced at ``encoder_depth``."""
        return VGGEncoder(self.encoder_depth, self.cfg.width, plan["encoder"])

    @abstractmethod
    def build_transform(self, plan: Plan) -> nn.Module:
        """The feature transform for ``plan``."""

    def build_decoder(self, plan: Plan) -> nn.Module:
        return Decoder(plan["encoder"][LAST_CONV["relu4_1"]], plan["decoder"])

    def groups(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder, "transform": self.transform, "decoder": self.decoder}

    def channel_layers(self) -> dict[str, dict[str, nn.Module]]:
        """The encoder's and decoder's resizable convs by plan layer name (the decoder's RGB conv is not)."""
        decoder = {name: conv for name, conv in self.decoder.conv_layers().items() if name != "rgb"}
        return {"encoder": self.encoder.conv_layers(), "decoder": decoder}

    def coupling_forward(self, size: int) -> Tensor | list[Tensor]:
        """A forward pass in which every channel coupling shows: alpha < 1 adds the transform's output to the
        content features, which ties their channels."""
        image = torch.rand(1, 3, size, size)
        return self(image, image, alpha=0.5)

    def stages(self, train: TrainConfig) -> list[Stage]:
        return [Stage("main", ("encoder", "transform", "decoder"), lr=train.lr, lr_lambda=inverse_decay(train.lr_decay))]

    def loss_network(self) -> VGGEncoder:
        """The frozen loss VGG: a copy of the encoder as built (pretrained or He-initialised), before training.

        A model built from a narrower plan (a slimmed one), or one whose encoder was not loaded from
        ``model.vgg_weights`` (it starts from a model file), still measures its losses with the reference-width
        VGG: one is built for it, from ``model.vgg_weights`` when given.
        """
        vgg_weights = self.cfg.vgg_weights  # type: ignore[attr-defined]
        if self._reference_encoder and (not vgg_weights or self.encoder_source == vgg_weights):
            return frozen_copy(self.encoder)
        vgg = VGGEncoder(self.encoder_depth, self.cfg.width)
        init_encoder(vgg, vgg_weights)
        return frozen_copy(vgg)

    def loss_weights(self) -> dict[str, float]:
        return {"content": self.cfg.content_weight, "style": self.cfg.style_weight}  # type: ignore[attr-defined]

    @abstractmethod
    def stylize_features(self, content_feats: list[Tensor], style_feats: list[Tensor], alpha: float) -> Tensor:
        """The decoder's input from the encoder's features of content and style."""

    def encode(self, images: Tensor, role: str) -> list[Tensor]:
        feats = self.encoder(images)
        for tap, feat in zip(self.encoder.tap_names, feats, strict=True):
            self.features.record(f"{role}/{tap}", feat)
        return feats

    def forward(self, content: Tensor, style: Tensor, alpha: float = 1.0) -> Tensor:
        self.check_input(content, style)
        transformed = self.stylize_features(self.encode(content, "content"), self.encode(style, "style"), alpha)
        self.features.record("transform", transformed)
        output = self.decoder(transformed)
        self.features.record("output", output)
        return output

    def stage_losses(self, stage: str, batch: tuple[Tensor, ...], loss_net: nn.Module | None) -> dict[str, Tensor]:
        content, style = batch
        return self.loss_terms(content, style, loss_net)  # type: ignore[arg-type]

    @abstractmethod
    def loss_terms(self, content: Tensor, style: Tensor, loss_net: VGGEncoder) -> dict[str, Tensor]:
        """Unweighted training loss terms (scalars), computed with the frozen ``loss_net``."""
