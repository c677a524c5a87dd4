"""SNGAN (Miyato et al., 2018) for unconditional 32x32 generation: the CIFAR-10 GAN of the GAN lottery tickets
(Chen et al., ICLR 2021), as their reference code (VITA-Group/GAN-LTH, ``src/SNGAN``) sets it up. Written from
that code's description and the papers, not copied.

- Generator (no spectral norm; 4,276,739 parameters): z (128) -> ``l1`` to 4 x 4 x 256 -> three residual up-blocks
  (BN, ReLU, nearest x2, 3x3 conv, BN, ReLU, 3x3 conv; shortcut: nearest x2, 1x1 conv) -> BN, ReLU, 3x3 conv to
  RGB, tanh. The state-dict keys are the reference's (``l1``, ``block2..4.{b1,c1,b2,c2,c_sc}``, ``b5``, ``c5``).
- Discriminator (128 channels, spectral norm on every layer; 1,053,824 parameters): an optimised first block
  (conv, ReLU, conv, 2x2 average pool; shortcut: pool, 1x1 conv), a down block, two plain blocks, ReLU, global
  sum pooling, a linear score without bias.
- Hinge losses; Adam 2e-4 (0, 0.9) for both; ``n_critic`` = 5 discriminator steps (64 real images each) per
  generator step (128 noise vectors); Xavier-uniform conv weights, BN weights N(1, 0.02); the generator
  evaluated is an exponential moving average (0.999) of the trained one, updated after each generator step.

How it sits in the one loop (no line of the loop knows it): a loop step is one generator step. Its batch is
(content, style); the content images are the real images (``data.batch_size`` = n_critic x the discriminator
batch, e.g. 5 x 64 = 320), cut into n_critic consecutive chunks by the discriminator stage's ``repeat``; the style
images are not used (point ``data.style`` at the same shards). The model draws its noise itself, from a
generator whose state is a buffer of the generator group, like CycleGAN's image pools: checkpointed with it,
and per rank (``rank_state``: each rank draws its own noise). The moving average is a set of buffers of the
generator group too, so checkpoints, rewinds and model files carry it.

Spectral norm is ``torch.nn.utils.parametrizations``' own power iteration (``_SpectralNorm``, what
``parametrizations.spectral_norm`` registers), called in the layer's forward on the layer's ``weight``, which
stays a plain Parameter: the original, unnormalised weight. That is what IMP ranks, masks and rewinds
(``prune.discriminator=prune``) with no special case, and a masked zero stays zero through the power iteration
and the division by sigma. Registered as a parametrization (or with the older hook-based ``spectral_norm``),
``weight`` would be a computed tensor and ``distst.prune.masks`` would mask a copy that the next forward
recomputes from the unmasked original.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn
from torch.nn.utils.parametrizations import _SpectralNorm

from .. import registry
from ..config import Config, ModelSection, TrainConfig
from ..metrics import EXTRACTORS, build_extractor, has_logits, inception_score, needs_weights
from ..metrics.fid import extract, frechet_distance, gaussian_stats
from ..metrics.reference import reference_stats, stats_key
from .base import DiststModel, Stage
from .cyclegan import frozen
from .plan import Plan, require_equal

SIDE = 32  # generated images are 32 x 32
BOTTOM = 4  # the generator's first feature map: 4 x 4, doubled by each of three blocks
GENERATOR_WIDTHS = {"l1": 256, "block2": 256, "block3": 256, "block4": 256}
DISCRIMINATOR_WIDTHS = {"block1": 128, "block2": 128, "block3": 128, "block4": 128}
BETAS = (0.0, 0.9)
EVAL_SEED = 0  # the fixed noise of the images a run shows (samples, evaluation)
SET_SEED = 1  # the noise of the images set_metrics scores


class SNGANSection(ModelSection):
    """``model.*`` for SNGAN: the reference's training set-up and the FID / Inception Score evaluation."""

    groups: ClassVar[tuple[str, ...]] = ("generator", "discriminator")
    default_prune_scope: ClassVar[tuple[str, ...]] = ("generator",)

    name: Literal["sngan"] = "sngan"
    z_dim: int = Field(128, ge=1, description="noise dimensions")
    n_critic: int = Field(5, ge=1, description="discriminator steps per generator step, each on the next "
                                               "data.batch_size / n_critic real images (paper: 5 x 64)")
    generator_batch: int = Field(128, ge=1, description="noise vectors per generator step (paper: 128)")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="decay of the generator's moving average, the "
                                                             "generator evaluated")
    inception_weights: str | None = Field(None, description="local Inception v3 weights for FID and the Inception "
                                                            "Score: pytorch-fid's pt_inception-2015-12-05-6726825d.pth")
    feature_extractor: str = Field("inception", description="FID / Inception Score extractor, one with class "
                                                            "logits (distst.metrics registry)")
    fid_images: int = Field(50_000, ge=2, description="generated images scored, and real ones (the first N of "
                                                      "data.eval_content, default data.content) compared (paper: 50k)")
    is_splits: int = Field(10, ge=1, description="parts the Inception Score is averaged over (paper: 10)")
    fid_stats: str | None = Field(None, description="folder caching the real images' FID statistics, keyed by a "
                                                    "hash of the images and the extractor; default: fid_stats/ "
                                                    "beside the held-out shards when they are local files")

    @field_validator("feature_extractor")
    @classmethod
    def _extractor_with_logits(cls, name: str) -> str:
        if name not in EXTRACTORS:
            raise ValueError(f"model.feature_extractor={name!r}: unknown; registered: {', '.join(sorted(EXTRACTORS))}")
        if not has_logits(name):
            with_logits = sorted(n for n in EXTRACTORS if has_logits(n))
            raise ValueError(f"model.feature_extractor={name}: has no class logits, which the Inception Score "
                             f"needs; one of {', '.join(with_logits)}")
        return name

    @model_validator(mode="after")
    def _splits_fit(self) -> SNGANSection:
        if self.is_splits > self.fid_images:
            raise ValueError(f"model.is_splits={self.is_splits} exceeds model.fid_images={self.fid_images}")
        return self

    def resolve(self, cfg: Config) -> None:
        data = cfg.data
        if data.crop != SIDE or (data.eval_size or SIDE) != SIDE:
            raise ValueError(f"data.crop / data.eval_size: sngan generates {SIDE}x{SIDE} images, so the real ones "
                             f"are {SIDE}x{SIDE} too (got crop {data.crop}, eval_size {data.eval_size})")
        if self._needs_fid(cfg) and needs_weights(self.feature_extractor) and not self.inception_weights:
            raise ValueError(f"model.inception_weights: prune.method={cfg.prune.method} on sngan decides by FID, "
                             "which needs a local Inception file (pytorch-fid's pt_inception-2015-12-05-6726825d.pth);"
                             " or set model.feature_extractor=random_logits for a smoke run")
        if self.fid_stats is None:
            self.fid_stats = _beside_shards(data.eval_content or data.content)

    def held_out_images(self, cfg: Config) -> tuple[str, int]:
        return ("model.fid_images", self.fid_images) if self._needs_fid(cfg) else ("", 0)

    @staticmethod
    def _needs_fid(cfg: Config) -> bool:
        return registry.method_record(cfg.prune.method).decides_by_verdict


def _beside_shards(pattern: str) -> str | None:
    """``fid_stats/`` in the folder of local shards; None for the bundled samples or remote URLs."""
    if pattern.startswith("sample:") or "://" in pattern:
        return None
    return str(Path(pattern).parent / "fid_stats")


# --- layers -------------------------------------------------------------------------------------------

class Projection(nn.Module):
    """``x W^T + b`` with ``nn.Linear``'s parameters and initialisation, but not an ``nn.Linear``: IMP masks the layer
    types ``distst.prune.masks.PRUNABLE`` lists, and SNGAN's tickets prune conv weights only, as the reference."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        nn.Linear.reset_parameters(self)  # type: ignore[arg-type]  # reads only weight and bias

    def effective_weight(self) -> Tensor:
        return self.weight

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.effective_weight(), self.bias)


class SpectralNorm(nn.Module):
    """A layer's spectral normalisation: one power iteration per training forward (none in eval mode), ``u`` and
    ``v`` as buffers; ``restart`` starts them from the layer's current weight (after initialisation)."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.restart(weight)

    def restart(self, weight: Tensor) -> None:
        self.iteration = _SpectralNorm(weight.detach(), n_power_iterations=1, dim=0, eps=1e-12)
        self.iteration.train(self.training)

    def forward(self, weight: Tensor) -> Tensor:
        return self.iteration(weight)


class SNConv2d(nn.Conv2d):
    """A conv whose ``weight`` Parameter is the original weight, divided by its spectral norm in forward."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spectral = SpectralNorm(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.spectral(self.weight), self.bias)


class SNProjection(Projection):
    """A ``Projection`` with spectral norm (the discriminator's score)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias)
        self.spectral = SpectralNorm(self.weight)

    def effective_weight(self) -> Tensor:
        return self.spectral(self.weight)


def _up(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


class UpBlock(nn.Module):
    """BN, ReLU, nearest x2, 3x3 conv, BN, ReLU, 3x3 conv; plus the shortcut: nearest x2, 1x1 conv."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.b1, self.c1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.b2, self.c2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.c_sc = nn.Conv2d(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.c2(F.relu(self.b2(self.c1(_up(F.relu(self.b1(x)))))))
        return h + self.c_sc(_up(x))


class Generator(nn.Module):
    """Noise N x z_dim -> images N x 3 x 32 x 32 in [-1, 1]."""

    def __init__(self, widths: Mapping[str, int], z_dim: int) -> None:
        super().__init__()
        bottom = widths["l1"]
        self.l1 = Projection(z_dim, BOTTOM * BOTTOM * bottom)
        self.block2 = UpBlock(bottom, widths["block2"])
        self.block3 = UpBlock(widths["block2"], widths["block3"])
        self.block4 = UpBlock(widths["block3"], widths["block4"])
        self.b5, self.c5 = nn.BatchNorm2d(widths["block4"]), nn.Conv2d(widths["block4"], 3, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.l1(z).view(len(z), -1, BOTTOM, BOTTOM)
        h = self.block4(self.block3(self.block2(h)))
        return torch.tanh(self.c5(F.relu(self.b5(h))))


class DownBlock(nn.Module):
    """The first block ``optimized`` (conv, ReLU, conv, pool; shortcut: pool, 1x1 conv) or a plain one (ReLU, conv,
    ReLU, conv, [pool]; shortcut: 1x1 conv then [pool] when the width changes or it pools, else the identity)."""

    def __init__(self, cin: int, cout: int, downsample: bool, optimized: bool = False) -> None:
        super().__init__()
        self.downsample, self.optimized = downsample, optimized
        self.c1, self.c2 = SNConv2d(cin, cout, 3, padding=1), SNConv2d(cout, cout, 3, padding=1)
        self.c_sc = SNConv2d(cin, cout, 1) if optimized or downsample or cin != cout else None

    def _pool(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, 2) if self.downsample else x

    def forward(self, x: Tensor) -> Tensor:
        h = self.c2(F.relu(self.c1(x if self.optimized else F.relu(x))))
        if self.c_sc is None:
            return h + x
        shortcut = self.c_sc(self._pool(x)) if self.optimized else self._pool(self.c_sc(x))
        return self._pool(h) + shortcut


class Discriminator(nn.Module):
    """Images N x 3 x 32 x 32 in [-1, 1] -> scores N x 1."""

    def __init__(self, widths: Mapping[str, int]) -> None:
        super().__init__()
        w = [widths[f"block{i}"] for i in range(1, 5)]
        self.block1 = DownBlock(3, w[0], downsample=True, optimized=True)
        self.block2 = DownBlock(w[0], w[1], downsample=True)
        self.block3 = DownBlock(w[1], w[2], downsample=False)
        self.block4 = DownBlock(w[2], w[3], downsample=False)
        self.l5 = SNProjection(w[3], 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = self.block4(self.block3(self.block2(self.block1(x))))
        return self.l5(F.relu(h).sum(dim=(2, 3)))


# --- the groups: what the optimizers step and the checkpoints hold --------------------------------------

def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class NoiseSource(nn.Module):
    """Gaussian noise from the module's own generator, its state a buffer: a resume continues the stream exactly
    (the global RNG is also drawn from between a restore and the next step). Each rank seeds its own stream at its
    first draw (seed + rank); ``rank_state`` saves every rank's, since DeepSpeed saves rank 0's module only."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        seed = int(torch.randint(2**62, ()))  # from the global RNG at build time: follows train.seed
        self.register_buffer("seed", torch.tensor(seed))
        self.register_buffer("draws", torch.zeros((), dtype=torch.long))
        self.register_buffer("state", torch.Generator().manual_seed(seed).get_state())

    def draw(self, count: int, like: Tensor) -> Tensor:
        """``count`` x dim noise on ``like``'s device, in its dtype."""
        generator = torch.Generator()
        if int(self.draws) == 0:
            generator.manual_seed(int(self.seed) + _rank())
        else:
            generator.set_state(self.state.cpu())
        z = torch.randn(count, self.dim, generator=generator)
        self.state.copy_(generator.get_state())
        self.draws.add_(1)
        return z.to(like.device, like.dtype)


def fixed_noise(count: int, dim: int, seed: int) -> Tensor:
    """The same ``count`` noise vectors for the same seed: what evaluations and samples show."""
    return torch.randn(count, dim, generator=torch.Generator().manual_seed(seed))


def _shadow_name(param: str) -> str:
    return param.replace(".", "__")  # buffer names cannot hold dots


class GeneratorGroup(nn.Module):
    """The generator group: the trained generator ``net``, its moving average ``ema`` (buffers, one per parameter)
    and the ``noise`` source. Only ``net`` has parameters: counts, the optimizer and IMP see the generator alone."""

    def __init__(self, widths: Mapping[str, int], z_dim: int, decay: float) -> None:
        super().__init__()
        self.decay = decay
        self.net = Generator(widths, z_dim)
        self.noise = NoiseSource(z_dim)
        self.ema = nn.Module()
        for name, param in self.net.named_parameters():
            self.ema.register_buffer(_shadow_name(name), param.detach().clone())
        self.register_load_state_dict_post_hook(_shadow_follows_masks)

    def shadow(self) -> dict[str, Tensor]:
        """The moving average, by the generator's parameter names."""
        return {name: getattr(self.ema, _shadow_name(name)) for name, _ in self.net.named_parameters()}

    @torch.no_grad()
    def reset_ema(self) -> None:
        for name, param in self.net.named_parameters():
            getattr(self.ema, _shadow_name(name)).copy_(param)

    @torch.no_grad()
    def update_ema(self) -> None:
        """``ema <- decay * ema + (1 - decay) * weight`` for every parameter (after each generator step)."""
        shadow = self.shadow()
        for name, param in self.net.named_parameters():
            shadow[name].mul_(self.decay).add_(param.detach().to(shadow[name].dtype), alpha=1 - self.decay)

    def generate(self, z: Tensor) -> Tensor:
        """Images from the moving average's weights (with the trained generator's BN statistics, as the reference)."""
        return torch.func.functional_call(self.net, self.shadow(), (z,), strict=False)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


@torch.no_grad()
def _shadow_follows_masks(group: nn.Module, _incompatible: Any) -> None:
    """After a load: the average is zero wherever a conv weight is exactly zero. A pruned level starts from rewound
    weights with the masks applied to the parameters only (``distst.prune.lottery``), but the evaluated generator is
    the average; on a resume or a dense start it changes nothing (the weights it would zero are zero already)."""
    shadow = group.shadow()  # type: ignore[operator]
    for name, param in group.net.named_parameters():  # type: ignore[union-attr]
        if param.dim() == 4:
            shadow[name].mul_(param != 0)


class Critic(nn.Module):
    """The discriminator group: one spectrally normalised discriminator ``net`` (a child, so that
    ``prune.discriminator=distill`` finds and records it as ``discriminator.net``)."""

    def __init__(self, widths: Mapping[str, int]) -> None:
        super().__init__()
        self.net = Discriminator(widths)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)


def _init(module: nn.Module) -> None:
    """The reference's ``xavier_uniform`` set-up: conv weights Xavier-uniform (gain 1), BN weights N(1, 0.02) and
    biases 0; conv biases and the linear layers keep PyTorch's defaults."""
    if isinstance(module, nn.Conv2d):
        nn.init.xavier_uniform_(module.weight)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


# --- losses -------------------------------------------------------------------------------------------

def hinge_real(scores: Tensor) -> Tensor:
    """The discriminator's hinge loss on real images: mean(relu(1 - D(x)))."""
    return F.relu(1.0 - scores).mean()


def hinge_fake(scores: Tensor) -> Tensor:
    """The discriminator's hinge loss on generated images: mean(relu(1 + D(G(z))))."""
    return F.relu(1.0 + scores).mean()


def hinge_generator(scores: Tensor) -> Tensor:
    """The generator's hinge loss: -mean(D(G(z)))."""
    return -scores.mean()


@registry.model(SNGANSection, verdict_metric="fid",
                set_metrics=("fid", "inception_score", "inception_score_std", "fid_images"),
                weight_keys=("inception_weights",), inputs="noise")
class SNGAN(DiststModel):
    min_size = SIDE
    feature_names = ("output", "discriminator.net/input", "discriminator.net/output")

    def __init__(self, cfg: SNGANSection | None = None) -> None:
        cfg = cfg or SNGANSection()
        super().__init__(cfg)
        self.generator = GeneratorGroup(self.plan["generator"], cfg.z_dim, cfg.ema_decay)
        self.discriminator = Critic(self.plan["discriminator"])
        self.apply(_init)
        for module in self.modules():
            if isinstance(module, SNConv2d | SNProjection):
                module.spectral.restart(module.weight)  # u, v from the initialised weights
        self.generator.reset_ema()  # the average starts at the initial generator

    # --- plan ------------------------------------------------------------------------------------------
    @classmethod
    def reference_plan(cls) -> Plan:
        """The generator's 4x4 width (``l1``) and each up-block's; each discriminator block's."""
        return {"generator": dict(GENERATOR_WIDTHS), "discriminator": dict(DISCRIMINATOR_WIDTHS)}

    @classmethod
    def check_plan(cls, plan: Plan) -> None:
        for block in ("block3", "block4"):  # plain blocks: an identity shortcut adds their input
            require_equal(plan, ("discriminator", "block2"), ("discriminator", block),
                          "the discriminator's plain blocks add their input to their output")

    # --- what the trainer asks -------------------------------------------------------------------------
    def groups(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator}

    def rank_state(self) -> dict[str, Tensor]:
        """The noise stream: each rank draws its own."""
        return {f"generator.noise.{name}": buffer for name, buffer in self.generator.noise.named_buffers()}

    def stages(self, train: TrainConfig) -> list[Stage]:
        cfg: Any = self.cfg
        return [Stage("discriminator", ("discriminator",), lr=train.lr, betas=BETAS, repeat=cfg.n_critic),
                Stage("generator", ("generator",), lr=train.lr, betas=BETAS, after_step=self.generator.update_ema)]

    def loss_weights(self) -> dict[str, float]:
        return {"d_real": 1.0, "d_fake": 1.0, "g_hinge": 1.0}

    def stage_losses(self, stage: str, batch: tuple[Tensor, ...], loss_net: nn.Module | None) -> dict[str, Tensor]:
        """The discriminator stage: the hinge terms on this chunk's real images (the batch's content) and as many
        generated ones; the generator stage: its hinge term on ``generator_batch`` generated images."""
        real = batch[0] * 2 - 1
        noise = self.generator.noise
        if stage == "discriminator":
            with torch.no_grad():
                fake = self.generator(noise.draw(len(real), real))
            # Two passes, as the reference: each training forward takes one power iteration.
            return {"d_real": hinge_real(self._judge(real)), "d_fake": hinge_fake(self._judge(fake))}
        if stage != "generator":
            raise ValueError(f"sngan has stages discriminator and generator, not {stage!r}")
        fake = self.generator(noise.draw(self.cfg.generator_batch, real))  # type: ignore[attr-defined]
        self.features.record("output", (fake + 1) / 2)
        with frozen(self.discriminator):  # no gradient into the discriminator, whose stage comes first
            return {"g_hinge": hinge_generator(self.discriminator(fake))}

    def _judge(self, images: Tensor) -> Tensor:
        scores = self.discriminator(images)
        self.features.record("discriminator.net/input", images)
        self.features.record("discriminator.net/output", scores)
        return scores

    def _samples(self, count: int, like: Tensor) -> Tensor:
        """The moving average's images in [0, 1] from the fixed evaluation noise."""
        cfg: Any = self.cfg
        return (self.generator.generate(fixed_noise(count, cfg.z_dim, EVAL_SEED).to(like.device, like.dtype)) + 1) / 2

    def forward(self, content: Tensor, style: Tensor | None = None, alpha: float = 1.0) -> Tensor:
        """One generated 32x32 image in [0, 1] per ``content`` image (only their count is used: a noise model has no
        input image), from the moving average and fixed noise, so that samples compare across steps."""
        out = self._samples(len(content), content)
        self.features.record("output", out)
        return out

    def errors(self, content: Tensor, style: Tensor, loss_net: nn.Module | None) -> dict[str, Tensor]:
        """Per-image discriminator hinge terms on held-out real images and as many generated ones (how well the
        discriminator tells them apart). The verdict is FID (``set_metrics``), not these."""
        fake = self._samples(len(content), content) * 2 - 1
        return {"d_real_error": F.relu(1 - self.discriminator(content * 2 - 1)).flatten(),
                "d_fake_error": F.relu(1 + self.discriminator(fake)).flatten()}

    @torch.no_grad()
    def set_metrics(self, held_out: Callable[[int], tuple[Tensor, Tensor]], batch_size: int = 100) -> dict[str, float]:
        """FID of ``fid_images`` generated images (the moving average's, from fixed noise) against as many held-out
        real ones (their statistics cached: ``model.fid_stats``), and their Inception Score."""
        cfg: Any = self.cfg
        like = next(self.parameters())
        extractor = build_extractor(cfg.feature_extractor, cfg.inception_weights).to(like.device)
        real = held_out(cfg.fid_images)[0]
        key = stats_key(real, cfg.feature_extractor, cfg.inception_weights)
        mu, sigma = reference_stats(extractor, real, cfg.fid_stats, key)
        was_training = self.training
        self.eval()
        generator = torch.Generator().manual_seed(SET_SEED)
        fakes = torch.cat([
            (self.generator.generate(torch.randn(min(batch_size, cfg.fid_images - start), cfg.z_dim,
                                                 generator=generator).to(like.device, like.dtype)) + 1).div(2).clamp(0, 1)
            for start in range(0, cfg.fid_images, batch_size)])
        self.train(was_training)
        features = extract(extractor, fakes)
        score, spread = inception_score(extractor.logits(torch.from_numpy(features).to(like.device)).cpu(),
                                        cfg.is_splits)
        return {"fid": frechet_distance(mu, sigma, *gaussian_stats(features)), "inception_score": score,
                "inception_score_std": spread, "fid_images": float(cfg.fid_images)}
