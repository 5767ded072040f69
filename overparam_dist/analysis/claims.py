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
          "theorem's sufficient width is m ≥ Ω̃(n^24 L^12). That is an upper bound: the width that suffices, not the "
          "width that is needed.",
          "The paper's FC net (A and B fixed, W_1..W_L trained, step lr/m) on its synthetic data (unit-norm inputs, "
          "random labels), squared loss, full-batch GD at train.lr=auto; a trial fits when its loss reaches 5% of its "
          "value at init within 12000 steps. Per cell (n, L) = {16, 64, 256} × {1, 2, 8} and per seed (5), a "
          "critical-width search brackets the width where the fit starts, on a grid of ratio 2^(1/4); P(fit) against "
          "log m gives m*_50 (interval-censored logistic, bootstrap interval) and m*_50 ∝ n^a L^b is fitted over the "
          "cells. The verdicts test what can fail: that m*_50 is finite in every cell with exponents the width grid "
          "did not cut off (polynomial, as far as finite sizes tell), that it lies at or above the counting width "
          "sqrt(nC/L), and that the budget does not bind; no exponent measured here can cross the theorem's 24."),
    Claim("lee2019_linear", "Lee et al. 2019", "wide nets evolve as linear models",
          "Lee, Xiao, Schoenholz, Bahri, Novak, Sohl-Dickstein & Pennington 2019, Wide Neural Networks of Any Depth "
          "Evolve as Linear Models Under Gradient Descent",
          "Under the NTK parameterization a wide net trained by gradient descent stays close to its linearisation "
          "around init at any depth: the relative change of the weights and of the NTK, and the distance to the "
          "linearised model, fall like m^-1/2.",
          "FC nets, model.param=ntk, every layer trained, synthetic regression targets, squared loss, full-batch GD "
          "at one step for every width (train.lr_kernel=infinite), depths 1, 2 and 4, inputs scaled to |x|² = d (the "
          "scale of the paper's standardised inputs), 5 seeds. Scaled down: widths 128-4096 (the paper: up to "
          "8192), n = 32 synthetic samples (the paper: CIFAR-10)."),
    Claim("du2018_two_layer", "Du et al. 2018", "linear convergence, neurons stay near init",
          "Du, Zhai, Poczos & Singh 2018, Gradient Descent Provably Optimizes Over-parameterized Neural Networks",
          "With one trained ReLU layer of width m, gradient descent converges linearly, |u(k) − y|² ≤ "
          "(1 − ηλ_0/2)^k |u(0) − y|² with λ_0 = λ_min(H∞); every neuron stays within O(m^-1/2) of its init, so "
          "fewer activation patterns change as m grows.",
          "Their net: one hidden layer on the raw inputs (model.depth=0), only its weights trained, the read-out fixed "
          "at random signs (model.train_input_only), model.param=ntk, inputs at |x|² = d so each pre-activation has "
          "unit scale as theirs, scalar regression targets, n = 32, 5 seeds, widths 64-4096. λ_0 = λ_min(K∞) on the "
          "whole training set (K∞ here is their H∞ in our scale). The step is train.lr=auto (n/λ_max: far larger "
          "than the paper's O(λ_0/n²), which train.lr=lambda_min gives); in our step convention the bound reads "
          "(1 − lr·λ_0/(2n))^k."),
    Claim("zhang2017_random_labels", "Zhang et al. 2017", "random labels are fitted, more slowly",
          "Zhang, Bengio, Hardt, Recht & Vinyals 2017, Understanding Deep Learning Requires Rethinking "
          "Generalization",
          "Networks fit random labels: at every label-noise level from 0 to 1 training reaches 100% train "
          "accuracy, the time to fit grows with the noise, and the held-out accuracy falls to chance.",
          "The paper's FC net (width 256) on n = 256 of scikit-learn's 8x8 digits (the paper: CIFAR-10 and ImageNet "
          "with CNNs), squared loss on one-hot labels, full-batch GD at train.lr=auto, label noise 0, 0.2, …, 1.0 (the "
          "fraction of labels replaced by uniform ones), 5 seeds. The time to fit is the first step at which the loss "
          "is at most 5% of its value at init (a statistic of the whole set, where 100% accuracy is decided by the "
          "last few points); test/acc on 1000 held-out digits outside the training subset."),
    Claim("arora2019_fine_grained", "Arora et al. 2019", "label complexity and the eigen-projection prediction",
          "Arora, Du, Hu, Li & Wang 2019, Fine-Grained Analysis of Optimization and Generalization for "
          "Overparameterized Two-Layer Neural Networks",
          "The label complexity sqrt(2 yᵀ(H∞)⁻¹ y / n) of their generalisation bound grows with the fraction of "
          "random labels, and the training loss follows the eigen-projection prediction |(I − ηH)^k y|², so labels "
          "aligned with the kernel's top eigenvectors (true labels) are fitted faster.",
          "model.param=ntk, depth 1, all layers trained, on scikit-learn's digits (n = 128, 10 one-hot outputs; "
          "the paper: two MNIST / CIFAR classes), inputs scaled to |x|² = d, label noise 0 to 1, 5 seeds. "
          "ntk/label_complexity uses the "
          "empirical K_0 on all 10 outputs and ntk/label_complexity_inf K∞; the prediction ntk/lin_loss uses K_0 and "
          "the residual at init r_0 = f_0 − y (the paper takes H∞ and f_0 ≈ 0). The gap between loss and prediction "
          "is measured in units of |y|²/2n, the loss of f = 0 where the paper's training starts."),
    Claim("lewkowycz2020_catapult", "Lewkowycz et al. 2020", "the catapult phase between η_crit and η_max",
          "Lewkowycz, Bahri, Dyer, Sohl-Dickstein & Gur-Ari 2020, The Large Learning Rate Phase of Deep Learning: the "
          "Catapult Mechanism",
          "With the squared loss and full-batch GD, wide nets are lazy for a step η < 2n/λ_0 (lr·λ_0/n < η_crit = 2); "
          "between η_crit and η_max (about 4 for their two-layer linear model, about 12 for ReLU nets) the loss "
          "first rises, the kernel's top eigenvalue falls until it is below 2n/η, and the net then converges (the "
          "catapult); above η_max training diverges.",
          "FC nets, model.param=ntk, depth 1, n = 32 synthetic regression targets on |x|² = d inputs, full-batch GD, "
          "the step set by train.lr_scale under train.lr=auto (lr·λ_max(Θ_0)/n = lr_scale where Θ_0 sets it; the "
          "x axis is each trial's measured value), 12 steps from 0.5 to 16 × widths 256, 1024, 2048 × 3 seeds, 100 "
          "steps, every one logged. A trial's phase comes from its behaviour (analysis/catapult.py), never from its "
          "step."),
    Claim("cohen2021_edge_of_stability", "Cohen et al. 2021", "the edge of stability: sharpness hovers at 2/η",
          "Cohen, Kaur, Li, Kolter & Talwalkar 2021, Gradient Descent on Neural Networks Typically Occurs at the Edge "
          "of Stability",
          "Full-batch gradient descent at a fixed step η on a net that is not lazy first sharpens: the top eigenvalue "
          "of the training loss's Hessian rises (progressive sharpening) until it reaches 2/η, and then hovers at "
          "2/η (at or just above it) for the rest of training, while the loss keeps falling over long times, "
          "non-monotonically.",
          "FC ReLU nets under model.param=standard (nn.Linear's init, one step for every parameter), width 128, depth "
          "2, on 1024 of scikit-learn's digits with one-hot targets, squared loss, full-batch GD for 2000 steps at "
          "η = 0.5, 1 and 2 (the paper: CIFAR-10 subsets, widths 200, steps 2/30 to 2/100, tanh and ReLU), 5 seeds. "
          "hessian/lambda_max by Lanczos on Hessian-vector products every 10 steps (metrics/hessian.py). The "
          "verdict: the median of η·λ_max/2 over the second half lies within the stated band [0.8, 1.25] (within "
          "25% of 2/η) for every step size, as an interval over seeds; a run that stays lazy (sharpness near its "
          "initial value, far below 2/η) contradicts it."),
    Claim("yang2021_feature_learning", "Yang & Hu 2021", "features move Θ(1) under mup, as m^-1/2 under ntk",
          "Yang & Hu 2021, Tensor Programs IV: Feature Learning in Infinite-Width Neural Networks",
          "At a fixed step, the change of every layer's features in the first steps falls as m^-1/2 under the NTK "
          "parameterisation (the kernel regime: features do not learn in the limit), stays Θ(1) under the maximal "
          "update parameterisation mup (features learn at every width), and under the standard parameterisation "
          "the step must shrink with the width or training blows up.",
          "FC ReLU nets of depth 2 on 256 of scikit-learn's digits (one-hot targets, squared loss), full-batch GD at "
          "train.lr = 1 for every parameterisation (mup: Tensor Programs V's per-layer SGD steps, models/init.py), "
          "5 steps, each logged: the coordinate check's layout. Widths 64 to 4096 × standard, ntk, mup × 3 seeds. "
          "The change is the RMS coordinate of h_l(t) − h_l(0), h_l the input of ReLU layer l on 64 probe samples; "
          "each seed's slope in log width at the last step is judged per layer (ntk: the interval excludes 0 and "
          "meets −0.5 ± 0.2; mup: it lies within ±0.2 of 0); for standard, the step's edge ratio lr·λ_max(Θ_0)/n "
          "against m^1."),
    Claim("jacot2018_kernel", "Jacot et al. 2018", "the NTK converges to K∞ and stays constant",
          "Jacot, Gabriel & Hongler 2018, Neural Tangent Kernel: Convergence and Generalization in Neural Networks",
          "As the width grows, the NTK at initialisation converges to a deterministic limit K∞ and stays constant "
          "during training; at small width it is random and moves.",
          "FC nets, model.param=ntk, depth 2, synthetic data scaled to |x|² = d (the paper's standardised inputs), "
          "full-batch GD at train.lr=auto, 5 seeds; K_0 against the closed-form K∞ and K_t against K_0 on the "
          "training set, and Figure 1: the kernel Θ(x_0, x(γ)) along a circle through x_0 at init and after "
          "training, at the smallest and the largest width, against K∞. Scaled down: widths 64-4096 (the paper: up "
          "to 10000), n = 32, depth 2 (Figure 1: depth 4)."),
)}


def check_claim(key: object, where: str) -> str | None:
    """`reproduces:` of a sweep file: None, or one of CLAIMS (else one ConfigError line)."""
    if key is None or key in CLAIMS:
        return key  # type: ignore[return-value]
    raise ConfigError(f"{where} = {key!r}: allowed values are {', '.join(CLAIMS)}")
