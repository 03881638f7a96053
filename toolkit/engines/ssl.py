"""Pretraining of a classification trunk without labels, run by MONAI: SimCLR (default), SimSiam, or
distillation of an ImageNet classifier into the trunk (``distill``).

The trunk is a ``toolkit.networks.create_network`` classifier with its head removed (timm's
``reset_classifier(0)``), so the weights it learns load into the same architecture with a new
head. `SSLNetwork` adds the projection MLP (and SimSiam's predictor); `ContrastiveIteration`
is the ``iteration_update`` of MONAI's ``SupervisedTrainer``: two augmented views of each image
(``toolkit.transforms.ssl_views``) -> one forward pass over both -> the objective -> a step. The
trainer's handlers (checkpoints, ``StatsHandler``, TensorBoard, learning-rate schedule) work as in
classification.

Why SimCLR by default on a 2-core CPU (measured speeds in ``../shared/perf-notes.md``):
- each step costs two encoder passes per image for every method; BYOL adds a third (the
  momentum target) and an extra copy of the network, which a CPU budget cannot spare;
- SimCLR needs negatives, so it wants large batches; on a CPU the batch is limited by time, not
  memory (images/s barely change with the batch), so a batch of 64-128 (126-254 negatives, the
  regime of SimCLR's small-batch results) costs the same per image as a batch of 16;
- it has no collapse mode: SimSiam (no negatives, no momentum encoder, fine with small batches)
  can collapse to a constant embedding, which a short CPU run has no budget to detect and
  retry. SimSiam stays available (``method="simsiam"``) for small batches; both report
  ``embedding_spread`` (1 = embeddings spread like random directions, 0 = collapsed).

The NT-Xent loss is MONAI's ``ContrastiveLoss`` (checked: each of the 2B embeddings against its
pair, the denominator over the other 2B-1, which is SimCLR's loss for a batch of pairs).

``distill`` brings ImageNet knowledge into an architecture that has no offline ImageNet weights
(ResNet-18 / -50 here): a frozen ImageNet classifier (the packaged EfficientNet-Lite0) is the
teacher, and the trunk plus a linear head over the teacher's 1,000 classes learns to match its
output on the pooled unlabelled images. The recipe is function matching (Beyer et al., "Knowledge
distillation: A good teacher is patient and consistent", CVPR 2022): teacher and student see the
same augmented view (consistent), the loss is the KL divergence of the student's to the teacher's
class distribution at temperature 1, and it works on images outside ImageNet. Chosen for a 2-core
CPU: the teacher costs one inference pass per view, no projection head or negatives are needed,
and it converges in the few epochs a CPU can afford better than a contrastive method, because every
image carries a full 1,000-way target. The two views of each image are two such samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.losses import ContrastiveLoss
from torch import nn

from toolkit.engines.distillation import distillation_term
from toolkit.networks import create_network

__all__ = [
    "METHODS",
    "ContrastiveIteration",
    "SSLNetwork",
    "SimCLRLoss",
    "SimSiamLoss",
    "TeacherMatchingLoss",
    "embedding_spread",
    "ssl_loss",
    "ssl_network",
    "trunk_of",
]

METHODS = ("simclr", "simsiam", "distill")
# the temperature each method's loss uses unless one is given
DEFAULT_TEMPERATURE = {"simclr": 0.2, "simsiam": None, "distill": 1.0}


def _mlp(sizes: Sequence[int], last_norm: bool) -> nn.Sequential:
    """Linear -> BatchNorm -> ReLU blocks; the last Linear optionally followed by BatchNorm (SimSiam)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        last = i == len(sizes) - 2
        layers.append(nn.Linear(n_in, n_out, bias=last and not last_norm))
        if not last:
            layers += [nn.BatchNorm1d(n_out), nn.ReLU(inplace=True)]
        elif last_norm:
            layers.append(nn.BatchNorm1d(n_out, affine=False))
    return nn.Sequential(*layers)


class SSLNetwork(nn.Module):
    """A trunk (pooled features) + projection MLP (+ SimSiam's predictor), or for ``distill`` a linear
    head over the teacher's classes and the frozen ``teacher`` itself.

    ``forward`` returns ``{"z": projections}``; SimSiam adds ``"p"``: predictions; ``distill`` gives
    the student's logits as ``"z"`` and the teacher's logits of the same images as ``"t"``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        method: str = "simclr",
        projection_dim: int = 128,
        hidden_dim: int = 512,
        teacher: nn.Module | None = None,
    ):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if (method == "distill") != (teacher is not None):
            raise ValueError(f"method {method!r}: a teacher is needed for 'distill' and only for it")
        features = getattr(encoder, "num_features", None)
        if not isinstance(features, int):
            raise ValueError(f"{type(encoder).__name__} has no num_features: not a timm trunk")
        self.method = method
        self.encoder = encoder
        self.teacher = teacher
        if method == "distill":  # the student's own head in the teacher's label space
            classes = getattr(getattr(teacher, "network", teacher), "num_classes", None)
            if not isinstance(classes, int) or classes < 2:
                raise ValueError(
                    f"the teacher {type(teacher).__name__} has no num_classes: not a timm classifier"
                )
            self.projector = nn.Linear(features, classes)
            self.predictor = None
        elif method == "simclr":  # SimCLR: 2-layer MLP, the loss normalises z
            self.projector = _mlp([features, hidden_dim, projection_dim], last_norm=False)
            self.predictor = None
        else:  # SimSiam: 3-layer projector ending in BN, bottleneck predictor (Chen & He 2021)
            self.projector = _mlp([features, hidden_dim, hidden_dim, projection_dim], last_norm=True)
            self.predictor = _mlp(
                [projection_dim, max(projection_dim // 4, 8), projection_dim], last_norm=False
            )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"z": self.projector(self.encoder(x))}
        if self.predictor is not None:
            out["p"] = self.predictor(out["z"])
        if self.teacher is not None:
            out["t"] = self.teacher(x)
        return out


def ssl_network(
    name: str,
    in_channels: int = 3,
    method: str = "simclr",
    projection_dim: int = 128,
    hidden_dim: int = 512,
    teacher: nn.Module | None = None,
    **model_kwargs,
) -> SSLNetwork:
    """`SSLNetwork` around the trunk of ``create_network(name, ...)`` (random initialisation);
    ``teacher``: the frozen classifier ``distill`` matches (``toolkit.bundle.teacher.imagenet_teacher``)."""
    classifier = create_network(name, num_classes=1, in_channels=in_channels, pretrained=None, **model_kwargs)
    if not hasattr(classifier, "reset_classifier"):
        raise ValueError(
            f"{name!r}: self-supervised pretraining needs a 2-D timm network (no reset_classifier)"
        )
    classifier.reset_classifier(0)  # the head becomes Identity: forward() returns pooled features
    return SSLNetwork(classifier, method, projection_dim, hidden_dim, teacher=teacher)


def trunk_of(network: nn.Module) -> nn.Module:
    """The encoder of an `SSLNetwork`, unwrapping DistributedDataParallel."""
    network = getattr(network, "module", network)
    if not isinstance(network, SSLNetwork):
        raise TypeError(f"expected an SSLNetwork, got {type(network).__name__}")
    return network.encoder


class SimCLRLoss(nn.Module):
    """NT-Xent on the projections of two views (MONAI's ``ContrastiveLoss``)."""

    def __init__(self, temperature: float = 0.2):
        super().__init__()
        self.temperature = float(temperature)
        self.contrastive = ContrastiveLoss(temperature=temperature)

    def forward(self, out1: dict, out2: dict) -> torch.Tensor:
        return self.contrastive(out1["z"], out2["z"])


class SimSiamLoss(nn.Module):
    """Symmetric negative cosine similarity of each view's prediction with the other's stopped projection.

    Written here: MONAI and timm have no SimSiam loss. Minimum -1.
    """

    def forward(self, out1: dict, out2: dict) -> torch.Tensor:
        if "p" not in out1 or "p" not in out2:
            raise ValueError(
                "SimSiamLoss needs the predictor output 'p': build the network with method='simsiam'"
            )
        d12 = F.cosine_similarity(out1["p"], out2["z"].detach(), dim=1).mean()
        d21 = F.cosine_similarity(out2["p"], out1["z"].detach(), dim=1).mean()
        return -(d12 + d21) / 2


class TeacherMatchingLoss(nn.Module):
    """Function matching: ``T**2 * KL(teacher || student)`` on the teacher's classes, averaged over the
    two views, each seen by both networks (``distillation_term``'s soft mode)."""

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        if float(temperature) <= 0:
            raise ValueError(f"distillation temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, out1: dict, out2: dict) -> torch.Tensor:
        if "t" not in out1 or "t" not in out2:
            raise ValueError(
                "TeacherMatchingLoss needs the teacher's logits 't': build the network with a teacher"
            )
        terms = [distillation_term(o["z"], o["t"].float(), "soft", self.temperature) for o in (out1, out2)]
        return (terms[0] + terms[1]) / 2


def ssl_loss(method: str = "simclr", temperature: float | None = None) -> nn.Module:
    """The objective of ``method``: `SimCLRLoss`, `SimSiamLoss` or `TeacherMatchingLoss`;
    ``temperature`` None = the method's default (`DEFAULT_TEMPERATURE`)."""
    if method in DEFAULT_TEMPERATURE and temperature is None:
        temperature = DEFAULT_TEMPERATURE[method]
    if method == "simclr":
        return SimCLRLoss(temperature)
    if method == "simsiam":
        return SimSiamLoss()
    if method == "distill":
        return TeacherMatchingLoss(temperature)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


@torch.no_grad()
def embedding_spread(z: torch.Tensor) -> float:
    """Mean per-dimension std of the L2-normalised embeddings, times sqrt(dim): about 1 when they point
    in random directions, 0 when collapsed to one point (SimSiam paper's collapse check)."""
    if z.shape[0] < 2:
        return float("nan")
    return float(F.normalize(z.float(), dim=1).std(dim=0).mean() * math.sqrt(z.shape[1]))


class ContrastiveIteration:
    """``iteration_update`` for MONAI's ``SupervisedTrainer``: one optimisation step on two views.

    The trainer supplies ``network`` (an `SSLNetwork`), ``optimizer``, ``loss_function`` (`ssl_loss`),
    ``device``, ``amp`` / ``scaler``. Both views go through the network as one batch (one pass, shared
    BatchNorm statistics, as SimCLR's global BN). Returns ``{"loss", "embedding_spread"}``, which
    ``StatsHandler`` / TensorBoard / the progress bar read like a classifier's ``"loss"``.
    """

    def __init__(self, view_keys: Sequence[str] = ("view1", "view2"), channels_last: bool = True):
        if len(view_keys) != 2:
            raise ValueError(f"two view keys are needed, got {view_keys!r}")
        self.view_keys = tuple(view_keys)
        self.channels_last = channels_last

    def _views(self, engine, batchdata) -> torch.Tensor:
        missing = [k for k in self.view_keys if k not in batchdata]
        if missing:
            raise KeyError(
                f"batch has no {missing}: the dataset transform must make two views "
                f"(toolkit.transforms.ssl_views.two_view_transforms); keys: {sorted(batchdata)}"
            )
        views = torch.cat([torch.as_tensor(batchdata[k]) for k in self.view_keys])
        views = views.to(engine.state.device, non_blocking=engine.non_blocking)
        if self.channels_last and views.ndim == 4:
            views = views.contiguous(memory_format=torch.channels_last)
        return views

    def __call__(self, engine, batchdata) -> dict:
        views = self._views(engine, batchdata)
        n = views.shape[0] // 2
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        use_amp = bool(engine.amp and engine.scaler is not None)
        with torch.autocast(device_type=views.device.type, enabled=use_amp):
            out = engine.network(views)
            out1 = {k: v[:n] for k, v in out.items()}
            out2 = {k: v[n:] for k, v in out.items()}
            loss = engine.loss_function(out1, out2)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"self-supervised loss is {loss.item()} at iteration {engine.state.iteration}: "
                "lower the learning rate or raise the temperature"
            )
        if use_amp:
            engine.scaler.scale(loss).backward()
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            engine.optimizer.step()
        return {"loss": loss.detach(), "embedding_spread": embedding_spread(out1["z"].detach())}
