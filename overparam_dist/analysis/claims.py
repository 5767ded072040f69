"""The published claims the reproductions under configs/repro/ test: what each paper says, and what our scaled-down
setup changes. A sweep file names one with `reproduces:`; repro.py measures it and the report puts the two side by
side. The text lives here once: the report, the README gallery and the tests read it from here."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import ConfigError


@dataclass(frozen=True)
class Claim:
    key: str
    short: str  # "Lee et al. 2019"
    title: str  # the claim in a few words, for the figure
    paper: str
    claim: str
    setup: str  # ours, and what is scaled down from the paper


CLAIMS: dict[str, Claim] = {c.key: c for c in (
    Claim("allenzhu2018_critical_width", "Allen-Zhu, Li & Song 2018", "the critical width is polynomial in n and L",
          "Allen-Zhu, Li & Song 2018, A Convergence Theory for Deep Learning via Over-Parameterization",
          "Gradient descent fits n distinct samples once the width is polynomial in n and the depth L; the "
          "theorem's sufficient width is m ≥ Ω̃(n^24 L^12).",
          "The paper's FC net (A and B fixed, W_1..W_L trained, step lr/m) on its synthetic data (unit-norm inputs, "
          "random labels), squared loss, full-batch GD at train.lr=auto. A critical-width search over n and L finds "
          "m*, the smallest width that reaches 100% train accuracy within the step budget, and fits m* ∝ n^a L^b. "
          "Scaled down: n ≤ 32, L ≤ 4, a fixed step budget instead of the paper's loss ≤ ε."),
    Claim("lee2019_linear", "Lee et al. 2019", "wide nets evolve as linear models",
          "Lee, Xiao, Schoenholz, Bahri, Novak, Sohl-Dickstein & Pennington 2019, Wide Neural Networks of Any Depth "
          "Evolve as Linear Models Under Gradient Descent",
          "Under the NTK parameterization a wide net trained by gradient descent stays close to its linearisation "
          "around init at any depth: the relative change of the weights and of the NTK, and the distance to the "
          "linearised model, fall like m^-1/2.",
          "FC nets, model.param=ntk, every layer trained, synthetic regression targets, squared loss, full-batch GD "
          "at train.lr=auto, depths 1, 2 and 4. Scaled down: widths 128-2048 (the paper: up to 8192), n = 32 "
          "synthetic samples (the paper: CIFAR-10)."),
    Claim("du2018_two_layer", "Du et al. 2018", "linear convergence, neurons stay near init",
          "Du, Zhai, Poczos & Singh 2018, Gradient Descent Provably Optimizes Over-parameterized Neural Networks",
          "With one trained ReLU layer of width m, gradient descent converges linearly, |u(k) − y|² ≤ "
          "(1 − ηλ_0/2)^k |u(0) − y|² with λ_0 = λ_min(H∞); every neuron stays within O(m^-1/2) of its init, so "
          "fewer activation patterns change as m grows.",
          "model.param=ntk, depth 1, only W_1 trained (model.train_outer=false): the trained layer sees the fixed "
          "random features relu(Ax) instead of the raw inputs (the paper trains the first layer). Scalar regression "
          "targets, λ_0 = λ_min(K∞) on the whole training set, step train.lr=auto (n/λ_max: far larger than the "
          "paper's O(λ_0/n²)); in our step convention the bound reads (1 − lr·λ_0/(2n))^k."),
    Claim("zhang2017_random_labels", "Zhang et al. 2017", "random labels are fitted, more slowly",
          "Zhang, Bengio, Hardt, Recht & Vinyals 2017, Understanding Deep Learning Requires Rethinking "
          "Generalization",
          "Networks fit random labels: at every label-noise level from 0 to 1 training reaches 100% train "
          "accuracy, the time to fit grows with the noise, and the held-out accuracy falls to chance.",
          "The paper's FC net on scikit-learn's 8x8 digits (the paper: CIFAR-10 and ImageNet with CNNs), squared "
          "loss on one-hot labels, full-batch GD at train.lr=auto, label noise 0, 0.2, …, 1.0 (the fraction of "
          "labels replaced by uniform ones); test/acc on 1000 held-out digits outside the training subset."),
    Claim("arora2019_fine_grained", "Arora et al. 2019", "label complexity and the eigen-projection prediction",
          "Arora, Du, Hu, Li & Wang 2019, Fine-Grained Analysis of Optimization and Generalization for "
          "Overparameterized Two-Layer Neural Networks",
          "The label complexity sqrt(2 yᵀ(H∞)⁻¹ y / n) of their generalisation bound grows with the fraction of "
          "random labels, and the training loss follows the eigen-projection prediction |(I − ηH)^k y|², so labels "
          "aligned with the kernel's top eigenvectors (true labels) are fitted faster.",
          "model.param=ntk, depth 1, all layers trained, on scikit-learn's digits (n = 128, 10 one-hot outputs; "
          "the paper: two MNIST / CIFAR classes), label noise 0 to 1. ntk/label_complexity uses the empirical K_0 "
          "on all 10 outputs and ntk/label_complexity_inf K∞; the prediction ntk/lin_loss uses K_0 and the "
          "residual at init r_0 = f_0 − y (the paper takes H∞ and f_0 ≈ 0)."),
    Claim("jacot2018_kernel", "Jacot et al. 2018", "the NTK converges to K∞ and stays constant",
          "Jacot, Gabriel & Hongler 2018, Neural Tangent Kernel: Convergence and Generalization in Neural Networks",
          "As the width grows, the NTK at initialisation converges to a deterministic limit K∞ and stays constant "
          "during training; at small width it is random and moves.",
          "FC nets, model.param=ntk, depth 2, synthetic data, full-batch GD at train.lr=auto; K_0 against the "
          "closed-form K∞ and K_t against K_0 on the training set. Scaled down: widths 64-2048 (the paper: up "
          "to 10000), n = 32."),
)}


def check_claim(key: object, where: str) -> str | None:
    """`reproduces:` of a sweep file: None, or one of CLAIMS (else one ConfigError line)."""
    if key is None or key in CLAIMS:
        return key  # type: ignore[return-value]
    raise ConfigError(f"{where} = {key!r}: allowed values are {', '.join(CLAIMS)}")
