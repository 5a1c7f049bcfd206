"""Weak/strong consistency on unlabelled images: FixMatch, FreeMatch and HR-Match.

Each step the trainer gives these methods two views of the same unlabelled batch: a weak one
(flips, 90-degree rotations, a small shift) and a strong one (the same kind of shift plus two
RandAugment operations and Cutout, ``rsdml.data.strong_augment``). The weak view's class
probabilities, where confident, become pseudo-labels that the strong view is trained to
predict. Labelled images keep the margin softmax of HR-S2DML.

The classifier is the margin head's: probabilities are softmax(s cos(theta)) with
s = ``--bnm-logit-scale`` (default 1/temperature = 20), and the cross-entropy on the strong view
uses the same scaled cosines without margin. With s = 20 and 30 classes a probability of 0.95
needs the top cosine about 0.3 above the others, so the threshold means "a clear angular
margin", not a plain linear head's calibration; docs/losses.md reports the measured mask rates.

HR-Match adds the high-rankness term (BNM) on the unlabelled predictions of one view
(``--hr-view``): confident pseudo-labels and a prediction matrix of high rank together.

With ``--propagation-weight`` the strong view also learns each unlabelled image's class from
label propagation over the training images' neighbour graph (``rsdml.training.propagation``),
which the trainer refreshes each epoch: where the classifier's own confident predictions are
few (one or two labels a class), the graph still labels most images.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from rsdml.config import TrainConfig
from rsdml.errors import RsdmlError
from rsdml.losses import BatchNuclearNormLoss, ViewContrastLoss
from rsdml.losses.margin_softmax import margin_cosines
from rsdml.losses.pseudo_label import PseudoLabelLoss, SelfAdaptiveThreshold, fairness_loss
from rsdml.training.methods.margin_softmax import NSMMargin
from rsdml.training.methods.params import FixMatchParams, FreeMatchParams, HRMatchParams

_DA_MOMENTUM = 0.99


class FixMatch(NSMMargin):
    """L = L_NSM(labelled) + ramp * w * PseudoLabel(strong | weak, threshold)."""

    name: ClassVar[str] = "fixmatch"
    params_class: ClassVar[type | None] = FixMatchParams
    uses_unlabeled: ClassVar[bool] = True
    uses_views: ClassVar[bool] = True
    stat_terms: ClassVar[frozenset[str]] = frozenset({"mask_rate"})

    def __init__(self, cfg: TrainConfig, num_classes: int, labeled_labels: Tensor) -> None:
        super().__init__(cfg, num_classes, labeled_labels)
        self.pseudo = PseudoLabelLoss()
        self.contrast = ViewContrastLoss()
        self.register_buffer("pl_hist", torch.zeros(num_classes, dtype=torch.long))
        prior = torch.bincount(labeled_labels.cpu(), minlength=num_classes).float()
        self.register_buffer("p_target", prior / prior.sum())
        #: running mean of the weak view's class probabilities (distribution alignment)
        self.register_buffer("p_model", self.p_target.clone())
        #: per training image (by its index in the inputs): the propagated class (-1: none)
        #: and the weight of its term (certainty x class balance); sized by the first refresh
        self.register_buffer("lp_target", torch.zeros(0, dtype=torch.long))
        self.register_buffer("lp_weight", torch.zeros(0))
        if self.teacher_momentum:  # the EMA teacher's class weights (rsdml.training.teacher)
            self.register_buffer("teacher_weight", self.nsm.weight.detach().clone())

    @property
    def teacher_momentum(self) -> float:
        return float(self.params.teacher_ema)

    @torch.no_grad()
    def update_teacher(self) -> None:
        if self.teacher_momentum:
            self.teacher_weight.lerp_(self.nsm.weight.detach(), 1.0 - self.teacher_momentum)

    def weak_proba(self, emb_w: Tensor) -> Tensor:
        """The weak view's class probabilities: the teacher's classifier when there is one."""
        teacher = self.teacher_weight if self.teacher_momentum else None
        return self.scaled_cosines(emb_w, teacher).softmax(dim=1)

    @property
    def needs_propagation(self) -> bool:
        return bool(self.params.propagation_weight)  # None (not resolved) counts as 0

    @property
    def propagation_every(self) -> int:
        return int(self.params.propagation_every)

    @property
    def has_propagated(self) -> bool:
        return len(self.lp_target) > 0

    @torch.no_grad()
    def set_propagated(self, index: Tensor, labels: Tensor, weight: Tensor) -> None:
        """The propagated classes and term weights of the images ``index`` (the trainer's)."""
        n = int(index.max()) + 1 if len(index) else 0
        dev = self.p_model.device
        target = torch.full((n,), -1, dtype=torch.long, device=dev)
        w = torch.zeros(n, device=dev)
        target[index.to(dev)] = labels.to(dev)
        w[index.to(dev)] = weight.to(dev, torch.float32)
        self.lp_target, self.lp_weight = target, w

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        for name in ("lp_target", "lp_weight"):  # sized by the data: take the saved size
            saved = state_dict.get(prefix + name)
            if saved is not None:
                setattr(self, name, torch.empty_like(saved, device=self.p_model.device))
        super()._load_from_state_dict(state_dict, prefix, *args)

    def scaled_cosines(self, emb: Tensor, weight: Tensor | None = None) -> Tensor:
        return self.cfg.logit_scale_u * self.nsm.cosines(emb, weight)

    def current_threshold(self, probs_weak: Tensor | None = None) -> float | Tensor:
        """The threshold(s) for this step (FreeMatch first updates its averages with the batch)."""
        return float(self.params.threshold)

    def pseudo_labels(self, probs: Tensor) -> tuple[Tensor, Tensor]:
        conf, target = probs.max(dim=1)
        tau = self._tau()
        return target, conf >= (tau[target] if isinstance(tau, Tensor) else tau)

    def _tau(self) -> float | Tensor:
        return float(self.params.threshold)

    def forward(self, emb_l: Tensor, labels_l: Tensor, index_l: Tensor,
                emb_u: Tensor | None = None, emb_w: Tensor | None = None,
                index_u: Tensor | None = None) -> dict[str, Tensor]:
        if emb_u is None or emb_w is None:
            raise ValueError(f"{self.name} needs the weak and the strong view of an unlabelled batch")
        nsm = self.nsm(emb_l, labels_l)
        with torch.no_grad():
            probs_w = self.weak_proba(emb_w.detach())
            if self.params.distribution_alignment:
                probs_w = self.align(probs_w)
        tau = self.current_threshold(probs_w)
        logits_s = self.scaled_cosines(emb_u)
        loss_c, mask, target = self.pseudo(logits_s, probs_w, tau)
        with torch.no_grad():
            self.pl_hist += torch.bincount(target[mask], minlength=self.num_classes)
        w = self.ramp * self.params.consistency_weight
        terms = {"total": nsm + w * loss_c, "nsm": nsm, "consistency": loss_c,
                 "mask_rate": mask.float().mean()}
        fair = self.fairness_term(logits_s, mask)
        if fair is not None:
            terms["total"] = terms["total"] + self.ramp * self.params.fairness_weight * fair
            terms["fairness"] = fair
        if self.params.instance_weight:  # None (not resolved by the runner) counts as 0
            inst = self.contrast(emb_u, emb_w)
            terms["total"] = terms["total"] + self.ramp * self.params.instance_weight * inst
            terms["instance"] = inst
        if self.needs_propagation and index_u is not None and self.has_propagated:
            prop = self.propagation_term(emb_u, index_u)
            terms["total"] = terms["total"] + self.ramp * self.params.propagation_weight * prop
            terms["propagation"] = prop
        return self.extra_terms(terms, emb_u, emb_w)

    def propagation_term(self, emb_s: Tensor, index_u: Tensor) -> Tensor:
        """sum_i w_i CE(strong view_i, propagated class_i) / batch (Iscen et al.'s eq. 9), with
        ``--propagation-margin`` on the propagated class's cosine."""
        index_u = index_u.to(self.lp_target.device)
        target, weight = self.lp_target[index_u], self.lp_weight[index_u]  # weight 0: no class
        target = target.clamp_min(0)
        cos = self.nsm.cosines(emb_s)
        if self.params.propagation_margin:
            cos = margin_cosines(cos, target, self.params.propagation_margin)
        ce = F.cross_entropy(self.cfg.logit_scale_u * cos, target, reduction="none")
        return (weight * ce).sum() / max(1, len(target))

    def fairness_term(self, logits_s: Tensor, mask: Tensor) -> Tensor | None:
        """FreeMatch's fairness term (None: the method has none)."""
        return None

    def extra_terms(self, terms: dict[str, Tensor], emb_s: Tensor, emb_w: Tensor) -> dict[str, Tensor]:
        return terms

    @torch.no_grad()
    def align(self, probs: Tensor) -> Tensor:
        """Distribution alignment: q * p_target / p_model, renormalised; p_model follows the
        batches' mean prediction (momentum 0.99)."""
        self.p_model.mul_(_DA_MOMENTUM).add_(probs.float().mean(dim=0), alpha=1 - _DA_MOMENTUM)
        q = probs * (self.p_target / self.p_model.clamp_min(1e-6))
        return q / q.sum(dim=1, keepdim=True)

    def epoch_stats(self) -> dict[str, Any]:
        hist = self.pl_hist.tolist()
        self.pl_hist.zero_()
        return {"pseudo_label_hist": hist}


class FreeMatch(FixMatch):
    """FixMatch with FreeMatch's self-adaptive, per-class thresholds."""

    name: ClassVar[str] = "freematch"
    params_class: ClassVar[type | None] = FreeMatchParams

    def __init__(self, cfg: TrainConfig, num_classes: int, labeled_labels: Tensor) -> None:
        super().__init__(cfg, num_classes, labeled_labels)
        self.adaptive = SelfAdaptiveThreshold(num_classes, self.params.freematch_ema)

    def current_threshold(self, probs_weak: Tensor | None = None) -> float | Tensor:
        if probs_weak is not None:
            self.adaptive.update(probs_weak)
        return self.adaptive.thresholds()

    def _tau(self) -> float | Tensor:
        return self.adaptive.thresholds()

    def fairness_term(self, logits_s: Tensor, mask: Tensor) -> Tensor | None:
        if not self.params.fairness_weight:
            return None
        return fairness_loss(logits_s, mask, self.adaptive.p, self.adaptive.hist)


class HRMatch(FixMatch):
    """FixMatch plus the high-rankness term: + ramp * lambda * BNM(P of the ``--hr-view``)."""

    name: ClassVar[str] = "hr-match"
    params_class: ClassVar[type | None] = HRMatchParams

    def __init__(self, cfg: TrainConfig, num_classes: int, labeled_labels: Tensor) -> None:
        super().__init__(cfg, num_classes, labeled_labels)
        self.bnm = BatchNuclearNormLoss()
        if self.teacher_momentum and self.weak_needs_grad:
            raise RsdmlError("--teacher-ema needs --hr-view strong: with --hr-view weak the "
                             "student embeds the weak view; drop one of the two")

    @property
    def weak_needs_grad(self) -> bool:
        return bool(self.params.hr_view == "weak")

    def extra_terms(self, terms: dict[str, Tensor], emb_s: Tensor, emb_w: Tensor) -> dict[str, Tensor]:
        hr = self.bnm(self.predict_proba(emb_w if self.weak_needs_grad else emb_s))
        return {**terms, "total": terms["total"] + self.reg_weight * hr, "hr": hr}
