"""CycleGAN (Zhu et al., 2017) for unpaired photo -> painting translation: the GAN of the GAN lottery tickets
(Chen et al., ICLR 2021).

Two ResNet generators (``ab``: photo -> painting, ``ba``: painting -> photo; 7x7 conv, two stride-2 convs,
residual blocks with reflection padding and instance norm, two transposed convs, 7x7 conv, tanh) and two 70x70
PatchGAN discriminators (``a`` judges photos, ``b`` paintings); least-squares adversarial losses, cycle and
identity L1 losses; Adam (0.5, 0.999) with a constant, then linearly decaying learning rate; an image history
pool per discriminator. Written from the paper and the reference repository's description
(junyanz/pytorch-CycleGAN-and-pix2pix), not copied.

The loop's batches are (content, style) = (photos, paintings) in [0, 1]; images are mapped to [-1, 1] inside.
The image pools are buffers of the discriminator group (fixed size: ``model.pool_size`` images of
``model.pool_crop``, which defaults to ``data.crop``, plus a count and the pool's own random generator), so
checkpoints carry them and a resume is bitwise: DeepSpeed saves rank 0's module, and every rank's own pools go
with its own checkpoint file (``rank_state``). A model file holds them too (rank 0's), and loads strictly into a
model built from its own section.

The reference's own generator files (``latest_net_G.pth`` of a published model, ``latest_net_G_A.pth`` /
``latest_net_G_B.pth`` of a trained pair) load strictly through the weight keys ``model.generator_weights`` /
``generator_ab_weights`` / ``generator_ba_weights`` (``GENERATOR_WEIGHT_KEYS``): the reference numbers its
generator as one ``nn.Sequential``, and ``ResnetGenerator.reference_keys`` derives that numbering from our modules'
forward order, so the two layouts cannot drift apart.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn

from .. import registry
from ..config import Config, ModelSection, TrainConfig
from ..metrics import EXTRACTORS, build_extractor, needs_weights, set_scores
from ..weights import WeightsError, first_mismatch, load_checked, read_state_dict, without_prefix
from .base import DiststModel, Stage
from .plan import Plan, merge_plan, scale_plan

REFERENCE_BLOCKS = 9
GENERATOR_WIDTHS = {"stem": 64, "down1": 128, "down2": 256, "up1": 128, "up2": 64}  # down2: the residual width
DISCRIMINATOR_WIDTHS = {"conv1": 64, "conv2": 128, "conv3": 256, "conv4": 512}
GENERATORS = ("ab", "ba")  # photo -> painting, painting -> photo
DISCRIMINATORS = ("a", "b")  # judges photos, judges paintings
#: ``model.*`` keys of the reference's generator files and the direction each loads into. The reference's G_A maps
#: A -> B (photo -> painting: our ``ab``); its one-directional test model's ``latest_net_G.pth`` loads into ``ab``,
#: the direction a translation (``forward``) runs.
GENERATOR_WEIGHT_KEYS = {"generator_weights": "ab", "generator_ab_weights": "ab", "generator_ba_weights": "ba"}
# Buffers an InstanceNorm of a reference file from before PyTorch 0.4 carries; the reference drops them on load.
STALE_NORM_STATS = ("running_mean", "running_var", "num_batches_tracked")


class CycleGANSection(ModelSection):
    """``model.*`` for CycleGAN: the reference loss weights, history pool and schedule, and the FID verdict."""

    groups: ClassVar[tuple[str, ...]] = ("generator", "discriminator")
    default_prune_scope: ClassVar[tuple[str, ...]] = ("generator",)

    name: Literal["cyclegan"] = "cyclegan"
    blocks: int = Field(REFERENCE_BLOCKS, ge=1, le=64, description="residual blocks per generator (reference: 9)")
    adversarial_weight: float = Field(1.0, ge=0, description="least-squares GAN loss of each generator")
    cycle_weight: float = Field(10.0, ge=0, description="L1 cycle loss of each direction")
    identity_weight: float = Field(5.0, ge=0, description="L1 identity loss (the reference's 0.5 x cycle weight)")
    pool_size: int = Field(50, ge=0, description="generated images each discriminator's history pool holds")
    pool_crop: int | None = Field(None, ge=8, description="side of the pooled images; default: data.crop")
    decay_start: float = Field(0.5, ge=0, le=1, description="fraction of train.steps after which the learning "
                                                             "rate decays linearly to zero (paper: 100 of 200 epochs)")
    inception_weights: str | None = Field(None, description="local Inception v3 weights for FID/KID: pytorch-fid's "
                                                            "pt_inception-2015-12-05-6726825d.pth (paper-comparable)")
    feature_extractor: str = Field("inception", description="FID/KID feature extractor (distst.metrics registry)")
    fid_images: int = Field(500, ge=2, description="held-out photos translated and real paintings compared for "
                                                   "FID/KID (the first N of data.eval_content / data.eval_style)")
    generator_weights: str | None = Field(None, description="a published one-direction generator of the reference "
                                                            "(its test mode's latest_net_G.pth, e.g. photo -> Monet): "
                                                            "the ab generator, the one stylize and export translate "
                                                            "with")
    generator_ab_weights: str | None = Field(None, description="the reference's latest_net_G_A.pth (A -> B) of a "
                                                               "trained pair: the ab generator")
    generator_ba_weights: str | None = Field(None, description="the reference's latest_net_G_B.pth (B -> A) of a "
                                                               "trained pair: the ba generator")

    @model_validator(mode="after")
    def _one_ab_file(self) -> CycleGANSection:
        if self.generator_weights and self.generator_ab_weights:
            raise ValueError("model.generator_weights and model.generator_ab_weights both name the ab generator's "
                             "file: give one")
        return self

    @field_validator("feature_extractor")
    @classmethod
    def _registered_extractor(cls, name: str) -> str:
        if name not in EXTRACTORS:
            raise ValueError(f"model.feature_extractor={name!r}: unknown; registered: {', '.join(sorted(EXTRACTORS))}")
        return name

    def resolve(self, cfg: Config) -> None:
        if self.pool_crop is None:
            self.pool_crop = cfg.data.crop
        files = [f"model.{key}" for key in GENERATOR_WEIGHT_KEYS if getattr(self, key)]
        if self.init_from and files:  # training would take init_from's weights and silently drop the files
            raise ValueError(f"model.init_from and {', '.join(files)} both give the generators' starting weights: "
                             "give one")
        # A method that decides by the verdict (lottery tickets) decides by FID here: refuse at once what would
        # fail only after the dense level's training. Other methods (plain training, QAT) never compute FID.
        if self._needs_fid(cfg) and needs_weights(self.feature_extractor) and not self.inception_weights:
            raise ValueError(f"model.inception_weights: prune.method={cfg.prune.method} on cyclegan decides by FID, "
                             "which needs a local Inception file (pytorch-fid's "
                             "pt_inception-2015-12-05-6726825d.pth); or set model.feature_extractor=random_conv "
                             "for a smoke run whose FIDs compare with nothing")

    def held_out_images(self, cfg: Config) -> tuple[str, int]:
        return ("model.fid_images", self.fid_images) if self._needs_fid(cfg) else ("", 0)

    @staticmethod
    def _needs_fid(cfg: Config) -> bool:
        return registry.method_record(cfg.prune.method).decides_by_verdict


def linear_decay(steps: int, start_fraction: float) -> Callable[[int], float]:
    """1 until ``start_fraction * steps``, then linearly down to 0 at ``steps`` (the reference's schedule)."""
    start = int(round(steps * start_fraction))
    return lambda step: 1.0 if step < start else max(0.0, (steps - step) / max(1, steps - start))


def _norm_act(channels: int, act: nn.Module) -> list[tuple[str, nn.Module]]:
    # Instance norm without affine parameters or running statistics, as the reference.
    return [("norm", nn.InstanceNorm2d(channels)), ("act", act)]


class ResidualBlock(nn.Module):
    """Two reflection-padded 3x3 convs with instance norm; ``inner`` is the hidden width (the plan's block)."""

    def __init__(self, channels: int, inner: int) -> None:
        super().__init__()
        self.body = nn.Sequential(OrderedDict([
            ("pad1", nn.ReflectionPad2d(1)), ("conv1", nn.Conv2d(channels, inner, 3)),
            ("norm1", nn.InstanceNorm2d(inner)), ("act1", nn.ReLU()),
            ("pad2", nn.ReflectionPad2d(1)), ("conv2", nn.Conv2d(inner, channels, 3)),
            ("norm2", nn.InstanceNorm2d(channels)),
        ]))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """Images in [-1, 1] -> images in [-1, 1] of the same size (a multiple of 4)."""

    #: The parts in forward order: also the order the reference's one ``nn.Sequential`` numbers their modules in.
    PARTS = ("stem", "down1", "down2", "blocks", "up1", "up2", "head")

    def __init__(self, widths: Mapping[str, int], blocks: int) -> None:
        super().__init__()
        stem, down1, res, up1, up2 = (widths[k] for k in ("stem", "down1", "down2", "up1", "up2"))
        self.stem = nn.Sequential(OrderedDict([("pad", nn.ReflectionPad2d(3)), ("conv", nn.Conv2d(3, stem, 7)),
                                               *_norm_act(stem, nn.ReLU())]))
        self.down1 = nn.Sequential(OrderedDict([("conv", nn.Conv2d(stem, down1, 3, 2, 1)), *_norm_act(down1, nn.ReLU())]))
        self.down2 = nn.Sequential(OrderedDict([("conv", nn.Conv2d(down1, res, 3, 2, 1)), *_norm_act(res, nn.ReLU())]))
        self.blocks = nn.Sequential(*(ResidualBlock(res, widths[f"block{i}"]) for i in range(1, blocks + 1)))
        self.up1 = nn.Sequential(OrderedDict([("conv", nn.ConvTranspose2d(res, up1, 3, 2, 1, output_padding=1)),
                                              *_norm_act(up1, nn.ReLU())]))
        self.up2 = nn.Sequential(OrderedDict([("conv", nn.ConvTranspose2d(up1, up2, 3, 2, 1, output_padding=1)),
                                              *_norm_act(up2, nn.ReLU())]))
        self.head = nn.Sequential(OrderedDict([("pad", nn.ReflectionPad2d(3)), ("conv", nn.Conv2d(up2, 3, 7)),
                                               ("act", nn.Tanh())]))

    def forward(self, x: Tensor) -> Tensor:
        for name in self.PARTS:
            x = getattr(self, name)(x)
        return x

    def reference_modules(self) -> Iterator[tuple[str, str, nn.Module]]:
        """(reference name, our name, module) of every module in forward order. The reference's ``model`` numbers
        each module, a residual block taking one number and numbering its own modules in ``conv_block``; ours are
        the same modules in the same order (with dropout off), so the names follow from the structure."""
        index = 0
        for part in self.PARTS:
            for name, child in getattr(self, part).named_children():
                if isinstance(child, ResidualBlock):
                    for inner, (leaf_name, leaf) in enumerate(child.body.named_children()):
                        yield f"model.{index}.conv_block.{inner}", f"{part}.{name}.body.{leaf_name}", leaf
                else:
                    yield f"model.{index}", f"{part}.{name}", child
                index += 1

    def reference_keys(self) -> dict[str, str]:
        """Our state-dict keys by the reference's (``model.1.weight`` -> ``stem.conv.weight``...), in its order."""
        return {f"{ref}.{key}": f"{ours}.{key}" for ref, ours, module in self.reference_modules()
                for key in module.state_dict()}

    def load_reference(self, path: str) -> None:
        """Load a reference generator file strictly (``weights_only``); one that does not fit is refused in one
        line naming its first mismatching key, with what the file holds when it is a ResnetGenerator too."""
        state = without_prefix(read_state_dict(path), "module.")  # a DataParallel module saved whole
        stale = {f"{ref}.{stat}" for ref, _, module in self.reference_modules()
                 if isinstance(module, nn.InstanceNorm2d) for stat in STALE_NORM_STATS}
        state = {key: value for key, value in state.items() if key not in stale}
        own = self.state_dict()
        keys = self.reference_keys()
        problem = first_mismatch({ref: own[ours] for ref, ours in keys.items()}, state)
        if problem:
            raise WeightsError(f"{path} does not fit cyclegan's generator ({self._shape()}, the reference's "
                               f"ResnetGenerator layout): {problem}{_file_layout(state, self)}")
        load_checked(self, {ours: state[ref] for ref, ours in keys.items()}, path)

    def _shape(self) -> str:
        return f"ngf {self.stem.conv.out_channels}, {len(self.blocks)} blocks"


def _file_layout(state: Mapping[str, Tensor], generator: ResnetGenerator) -> str:
    """What a reference ResnetGenerator file holds when it differs from ``generator`` in ngf or block count (the
    settings that would fit it); else what its first key is."""
    first = state.get("model.1.weight")
    if first is None or first.dim() != 4:
        key = next(iter(state), None)
        return "" if key is None else f"; the file's first key is {key!r} {tuple(state[key].shape)}"
    blocks = len({key.split(".")[1] for key in state if ".conv_block." in key})
    dropout = any(".conv_block.6." in key for key in state)
    held = f"ngf {first.shape[0]}, {blocks} blocks" + (", dropout (use_dropout=True)" if dropout else "")
    if held == generator._shape():
        return ""
    return (f"; the file holds a ResnetGenerator with {held}"
            + ("" if dropout else f" (model.width={first.shape[0] / GENERATOR_WIDTHS['stem']:g}, "
                                  f"model.blocks={blocks} fit it)"))


class PatchDiscriminator(nn.Module):
    """The 70x70 PatchGAN: a grid of real/fake scores, one per overlapping 70x70 patch."""

    def __init__(self, widths: Mapping[str, int]) -> None:
        super().__init__()
        c1, c2, c3, c4 = (widths[f"conv{i}"] for i in range(1, 5))
        layers: list[tuple[str, nn.Module]] = [("conv1", nn.Conv2d(3, c1, 4, 2, 1)), ("act1", nn.LeakyReLU(0.2))]
        for i, (cin, cout, stride) in enumerate(((c1, c2, 2), (c2, c3, 2), (c3, c4, 1)), start=2):
            layers += [(f"conv{i}", nn.Conv2d(cin, cout, 4, stride, 1)), (f"norm{i}", nn.InstanceNorm2d(cout)),
                       (f"act{i}", nn.LeakyReLU(0.2))]
        layers.append(("score", nn.Conv2d(c4, 1, 4, 1, 1)))
        self.layers = nn.Sequential(OrderedDict(layers))

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class ImagePool(nn.Module):
    """The history of generated images a discriminator is shown (Shrivastava et al., 2017), as buffers.

    While filling, every image is stored and shown; once full, each image is, with probability 1/2, swapped with
    a random stored one (the stored one is shown), else shown itself. The draws come from the pool's own
    generator, whose state is a buffer too: the global RNG is also drawn from by whatever runs between a
    checkpoint's restore and the next step (a data iterator's seed), so only an own stream resumes bitwise.
    """

    def __init__(self, size: int, side: int | None) -> None:
        super().__init__()
        self.register_buffer("images", torch.zeros(size, 3, side or 0, side or 0))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        seed = int(torch.randint(2**62, ()))  # from the global RNG at build time: follows train.seed
        self.register_buffer("rng", torch.Generator().manual_seed(seed).get_state())

    def _draw(self, generator: torch.Generator, high: int | None = None) -> float:
        return float(torch.rand((), generator=generator)) if high is None else \
            int(torch.randint(high, (), generator=generator))

    @torch.no_grad()
    def query(self, images: Tensor) -> Tensor:
        capacity = self.images.shape[0]
        if capacity == 0:
            return images
        if self.images.shape[-2:] != images.shape[-2:]:
            if int(self.count) or self.images.numel():
                raise ValueError(f"image pool holds {tuple(self.images.shape[-2:])} images, got "
                                 f"{tuple(images.shape[-2:])} (model.pool_crop must be data.crop)")
            self.images = images.new_zeros(capacity, *images.shape[1:])  # a model built outside a job config
        generator = torch.Generator().set_state(self.rng.cpu())
        filled = int(self.count)  # read once per batch, not per image: each read waits on the device
        shown = []
        for image in images.to(self.images.dtype):
            if filled < capacity:
                self.images[filled] = image
                filled += 1
                shown.append(image)
            elif self._draw(generator) < 0.5:
                index = int(self._draw(generator, capacity))
                shown.append(self.images[index].clone())
                self.images[index] = image
            else:
                shown.append(image)
        self.rng.copy_(generator.get_state())
        self.count.fill_(filled)
        return torch.stack(shown).to(images.dtype)


class Generators(nn.ModuleDict):
    """The generator group: ``ab`` (photo -> painting) and ``ba`` (painting -> photo). Called as a module, so that
    hooks and MAC counts see the group."""

    def forward(self, images: Tensor, direction: str) -> Tensor:
        return self[direction](images)


class Discriminators(nn.Module):
    """The discriminator group: both PatchGANs and the pools of generated images they are shown."""

    def __init__(self, plan: Mapping[str, int], pool_size: int, pool_crop: int | None) -> None:
        super().__init__()
        for name in DISCRIMINATORS:
            widths = {layer: plan[f"{name}.{layer}"] for layer in DISCRIMINATOR_WIDTHS}
            self.add_module(name, PatchDiscriminator(widths))
        for name in DISCRIMINATORS:
            self.add_module(f"pool_{name}", ImagePool(pool_size, pool_crop))

    def forward(self, images: Tensor, name: str) -> Tensor:
        return getattr(self, name)(images)


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """No gradients for ``module``'s parameters inside (the generator stage must not touch the discriminators'
    gradients, which the discriminator stage accumulates next)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _init_normal(module: nn.Module) -> None:
    """The reference's 'normal' initialisation: conv weights N(0, 0.02), biases zero."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
        nn.init.zeros_(module.bias)


def _least_squares(score: Tensor, real: bool) -> Tensor:
    return F.mse_loss(score, torch.full_like(score, 1.0 if real else 0.0))


@registry.model(CycleGANSection, verdict_metric="fid", set_metrics=("fid", "kid", "kid_std", "fid_images"),
                weight_keys=("inception_weights", *GENERATOR_WEIGHT_KEYS), inputs="content")
class CycleGAN(DiststModel):
    input_multiple = 4  # two stride-2 convs, then two transposed ones
    min_size = 32  # the PatchGAN's last instance norm needs more than one position
    feature_names = ("output", *(f"discriminator.{d}/{io}" for d in DISCRIMINATORS for io in ("input", "output")))

    def __init__(self, cfg: CycleGANSection | None = None) -> None:
        cfg = cfg or CycleGANSection()
        super().__init__(cfg)
        generator = self.plan["generator"]
        self.generator = Generators({
            g: ResnetGenerator({k.removeprefix(f"{g}."): v for k, v in generator.items() if k.startswith(f"{g}.")},
                               cfg.blocks)
            for g in GENERATORS})
        self.discriminator = Discriminators(self.plan["discriminator"], cfg.pool_size, cfg.pool_crop)
        self.apply(_init_normal)
        self._fakes: tuple[Tensor, Tensor] | None = None
        #: The reference files the generators were loaded from, by direction (``init_weights``).
        self.weight_files: dict[str, str] = {}

    def init_weights(self, files: bool = True) -> None:
        """The reference's initialisation (at construction), then the generator files the section names: a
        published generator is where a translation, an export or a training run (fine-tuning, IMP) starts."""
        for key, direction in GENERATOR_WEIGHT_KEYS.items():
            path = getattr(self.cfg, key) if files else None
            if path:
                self.generator[direction].load_reference(path)
                self.weight_files[direction] = path

    def missing_inference_weights(self) -> dict[str, str]:
        """The parts a translation would run with random weights, each with the option that gives them: only the
        ab generator translates (the discriminators and ba generator are for training)."""
        if "ab" in self.weight_files:
            return {}
        return {"generator ab": "--weights generator_weights=latest_net_G.pth or generator_ab_weights=latest_net_G_A.pth"}

    # --- plan ------------------------------------------------------------------------------------------
    @classmethod
    def reference_plan(cls, blocks: int = REFERENCE_BLOCKS) -> Plan:
        """Per generator: stem, down1, down2 (the residual width), each block's hidden width, up1, up2; per
        discriminator: its four hidden convs."""
        generator = {}
        for g in GENERATORS:
            widths = dict(GENERATOR_WIDTHS, **{f"block{i}": GENERATOR_WIDTHS["down2"] for i in range(1, blocks + 1)})
            generator.update({f"{g}.{k}": v for k, v in widths.items()})
        return {"generator": generator,
                "discriminator": {f"{d}.{k}": v for d in DISCRIMINATORS for k, v in DISCRIMINATOR_WIDTHS.items()}}

    @classmethod
    def resolve_plan(cls, cfg: ModelSection) -> Plan:
        plan = merge_plan(scale_plan(cls.reference_plan(cfg.blocks), cfg.width), cfg.plan, cls.name)  # type: ignore[attr-defined]
        cls.check_plan(plan)
        return plan

    # --- what the trainer asks -------------------------------------------------------------------------
    def rank_state(self) -> dict[str, Tensor]:
        """The image pools: each rank pools the images it generated itself."""
        return {f"discriminator.{name}": buffer for name, buffer in self.discriminator.named_buffers()
                if name.startswith("pool_")}

    def groups(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator}

    def stages(self, train: TrainConfig) -> list[Stage]:
        decay = linear_decay(train.steps, self.cfg.decay_start)  # type: ignore[attr-defined]
        return [Stage("generator", ("generator",), lr=train.lr, betas=(0.5, 0.999), lr_lambda=decay),
                Stage("discriminator", ("discriminator",), lr=train.lr, betas=(0.5, 0.999), lr_lambda=decay)]

    def loss_weights(self) -> dict[str, float]:
        cfg: Any = self.cfg
        return {"adversarial_ab": cfg.adversarial_weight, "adversarial_ba": cfg.adversarial_weight,
                "cycle_photo": cfg.cycle_weight, "cycle_painting": cfg.cycle_weight,
                "identity_photo": cfg.identity_weight, "identity_painting": cfg.identity_weight,
                **{f"d_{d}_{kind}": 0.5 for d in DISCRIMINATORS for kind in ("real", "fake")}}

    def forward(self, content: Tensor, style: Tensor | None = None, alpha: float = 1.0) -> Tensor:
        """Photos in [0, 1] -> paintings in [0, 1] (``style`` and ``alpha`` are not used: the style is learnt)."""
        self.check_input(content)
        out = self.translate(content)
        self.features.record("output", out)
        return out

    def translate(self, images: Tensor, direction: str = "ab") -> Tensor:
        """Images in [0, 1] through one generator, to [0, 1] (tanh's range mapped back); no input checks."""
        return (self.generator(images * 2 - 1, direction) + 1) / 2

    def stage_losses(self, stage: str, batch: tuple[Tensor, ...], loss_net: nn.Module | None) -> dict[str, Tensor]:
        photo, painting = (t * 2 - 1 for t in batch)
        if stage == "generator":
            return self._generator_losses(photo, painting)
        if self._fakes is None:
            raise RuntimeError("the discriminator stage needs the generator stage's images: it runs first")
        fake_photo, fake_painting = self._fakes
        self._fakes = None
        d = self.discriminator
        real_a, fake_a = self._judge("a", photo, d.pool_a.query(fake_photo))
        real_b, fake_b = self._judge("b", painting, d.pool_b.query(fake_painting))
        return {"d_a_real": _least_squares(real_a, True), "d_a_fake": _least_squares(fake_a, False),
                "d_b_real": _least_squares(real_b, True), "d_b_fake": _least_squares(fake_b, False)}

    def _generator_losses(self, photo: Tensor, painting: Tensor) -> dict[str, Tensor]:
        g, d = self.generator, self.discriminator
        fake_painting, fake_photo = g(photo, "ab"), g(painting, "ba")
        self.features.record("output", (fake_painting + 1) / 2)
        with frozen(d):
            terms = {"adversarial_ab": _least_squares(d(fake_painting, "b"), True),
                     "adversarial_ba": _least_squares(d(fake_photo, "a"), True)}
        terms["cycle_photo"] = F.l1_loss(g(fake_painting, "ba"), photo)
        terms["cycle_painting"] = F.l1_loss(g(fake_photo, "ab"), painting)
        if self.cfg.identity_weight:  # type: ignore[attr-defined]
            terms["identity_photo"] = F.l1_loss(g(photo, "ba"), photo)
            terms["identity_painting"] = F.l1_loss(g(painting, "ab"), painting)
        self._fakes = (fake_photo.detach(), fake_painting.detach())
        return terms

    def _judge(self, name: str, real: Tensor, fake: Tensor) -> tuple[Tensor, Tensor]:
        """Scores of real and (pooled) generated images by discriminator ``name``, in one forward pass."""
        images = torch.cat([real, fake])
        scores = self.discriminator(images, name)
        self.features.record(f"discriminator.{name}/input", images)
        self.features.record(f"discriminator.{name}/output", scores)
        return scores[: len(real)], scores[len(real):]

    def errors(self, content: Tensor, style: Tensor, loss_net: nn.Module | None) -> dict[str, Tensor]:
        """Per-pair cycle errors (mean absolute error in [0, 1] image units): photo -> painting -> photo and
        painting -> photo -> painting. The GAN's verdict is FID (``set_metrics``), not these."""
        g = self.generator
        photo, painting = content * 2 - 1, style * 2 - 1
        return {"photo_cycle_error": (g(g(photo, "ab"), "ba") - photo).abs().mean(dim=(1, 2, 3)) / 2,
                "painting_cycle_error": (g(g(painting, "ba"), "ab") - painting).abs().mean(dim=(1, 2, 3)) / 2}

    @torch.no_grad()
    def set_metrics(self, held_out: Callable[[int], tuple[Tensor, Tensor]], batch_size: int = 16) -> dict[str, float]:
        """FID and KID of the held-out photos translated to paintings against held-out real paintings."""
        cfg: Any = self.cfg
        device = next(self.parameters()).device
        extractor = build_extractor(cfg.feature_extractor, cfg.inception_weights).to(device)
        photos, paintings = held_out(cfg.fid_images)
        was_training = self.training
        self.eval()
        fakes = torch.cat([self(photos[i:i + batch_size].to(device)).clamp(0, 1)
                           for i in range(0, len(photos), batch_size)])
        self.train(was_training)
        return {**set_scores(extractor, paintings, fakes, batch_size), "fid_images": float(len(photos))}
