"""Metric keys: the one place they are spelled. The same keys go to metrics.jsonl, W&B and results.csv."""

TRAIN_LOSS = "train/loss"
TRAIN_ACC = "train/acc"
TRAIN_GRAD_NORM = "train/grad_norm"
TEST_LOSS = "test/loss"  # the training loss function on data.test_n held-out samples (data.py)
TEST_ACC = "test/acc"  # accuracy on them, for label targets
TRAIN_LR = "train/lr"  # effective step size of the hidden layers (paper: train.lr / width)

TIME_PREFIX = "time/"  # timings: logged per row, left out of summary.json (they describe a moment)
TIME_STEP = "time/step_s"
TIME_SAMPLES = "time/samples_per_s"
TIME_METRICS = "time/metrics_s"

DRIFT_WEIGHT_REL = "drift/weight_rel"  # ||theta_t - theta_0||_F / ||theta_0||_F over trained params
# ||theta_t - theta_0||_F itself: the quantity the theory bounds by O(1/sqrt(m)). With paper init
# ||theta_0||_F grows like sqrt(m), so the relative drift falls like 1/m where this falls like 1/sqrt(m).
DRIFT_WEIGHT_ABS = "drift/weight_abs"
# Fraction of (probe sample, unit) ReLU signs that differ from init, over the units of trained layers only: a
# frozen layer (paper's A) can never flip, and counting it would dilute the value by depth.
DRIFT_ACT_FLIP = "drift/act_flip"
# max over the hidden units r of trained weights of |w_r(t) - w_r(0)|_2, w_r a unit's incoming weights (a row;
# biases not included; the read-out's rows are not neurons: they are under drift/neuron_max/output only): the
# per-neuron distance Du, Zhai, Poczos & Singh (2018) bound by O(m^-1/2) under the ntk parameterization. Per layer
# under drift/neuron_max/<layer>.
DRIFT_NEURON_MAX = "drift/neuron_max"
# Layers whose spectral norm in this row stopped at the iteration cap before its error estimate reached the
# tolerance (metrics/drift.py): 0 on a trustworthy row.
DRIFT_SPEC_UNCONVERGED = "drift/weight_spec_unconverged"


def drift_weight_rel(layer: str) -> str:
    return f"{DRIFT_WEIGHT_REL}/{layer}"


def drift_weight_spec(layer: str) -> str:
    return f"drift/weight_spec/{layer}"


def drift_neuron_max(layer: str) -> str:
    return f"{DRIFT_NEURON_MAX}/{layer}"


def drift_act_flip(layer: str) -> str:
    return f"{DRIFT_ACT_FLIP}/{layer}"


# Feature movement (features.py), from the same probe forward as the flips: h_l the input of ReLU layer l (its
# pre-activation) on the probe set, dh_l = h_l(t) - h_l(0); tp shards sum their squares and counts over tp.
# ||dh||_F / ||h(0)||_F pooled over the trained layers: sqrt(sum_l ||dh_l||_F^2) / sqrt(sum_l ||h_l(0)||_F^2)
FEATURE_DELTA_REL = "feature/delta_rel"
# Per layer only: sqrt(mean over (probe sample, unit[, position]) of dh_l^2), the RMS coordinate size of the
# change (mup's coordinate check quantity)
FEATURE_DELTA_RMS = "feature/delta_rms"


def feature_delta_rms(layer: str) -> str:
    return f"{FEATURE_DELTA_RMS}/{layer}"


# ||dh_l||_F / ||h_l(0)||_F per layer, frozen layers included; not logged where ||h_l(0)||_F = 0
def feature_delta_rel(layer: str) -> str:
    return f"{FEATURE_DELTA_REL}/{layer}"


NTK_REL_DRIFT = "ntk/rel_drift"
NTK_LAMBDA_MIN = "ntk/lambda_min"
NTK_LAMBDA_MAX = "ntk/lambda_max"
NTK_LAMBDA_MIN_INF = "ntk/lambda_min_inf"  # of the infinite-width kernel on the probe set, where known: once
NTK_TRACE = "ntk/trace"
NTK_LABEL_COMPLEXITY = "ntk/label_complexity"  # sqrt(2 vec(Y)^T Theta_0^-1 vec(Y) / n): once, at init
NTK_LABEL_COMPLEXITY_INF = "ntk/label_complexity_inf"  # the same from K_inf, where it is known
NTK_INIT_GAP = "ntk/init_gap"
# |r_t - r_t^lin| / |r_0|: the training residual against the linearised model's (Lee et al. 2019), linearization.py
NTK_LIN_GAP = "ntk/lin_gap"
# 1/(2n) |r_t^lin|^2: the training loss the linearised model predicts for step t, its residual projected on the
# eigenvectors of Theta_0 (Arora, Du, Hu, Li & Wang 2019's eigen-projection prediction), linearization.py
NTK_LIN_LOSS = "ntk/lin_loss"
# |f_t(X*) - f_t^lin(X*)| / |f_0(X*) - Y*| on the held-out samples X*: the net's test outputs against those of its
# linearisation trained the same way (the kernel-regression prediction at step t), linearization.py
NTK_TEST_LIN_GAP = "ntk/test_lin_gap"

# Sharpness, with metrics.hessian (hessian.py): Hessian H of the trial's training loss over the whole training set
# w.r.t. the raw trained parameters. Its largest algebraic eigenvalue (H has negative ones too), by Lanczos:
HESSIAN_LAMBDA_MAX = "hessian/lambda_max"
# lambda_max(P^1/2 H P^1/2), P = diag of each parameter's effective step (lr included): gradient descent's stability
# edge is 2 (Cohen et al. 2021's lr * sharpness -> 2); under one step eta for every parameter, eta * lambda_max
HESSIAN_EDGE_RATIO = "hessian/edge_ratio"
# lambda_max of the Gauss-Newton part J^T H_out J / n (mse: lambda_max(Theta)/n, Theta the full nC x nC NTK)
HESSIAN_LAMBDA_MAX_GN = "hessian/lambda_max_gn"
# Lanczos runs of this row that stopped at the iteration cap before the tolerance: 0 on a trustworthy row
HESSIAN_UNCONVERGED = "hessian/unconverged"

CONV_RATE = "conv/rate"
CONV_STEPS_TO_FIT = "conv/steps_to_fit"
# Steps between the points at which a fit can be seen: 1 under full-batch GD (every step is evaluated), else
# metrics.every (mini-batch SGD evaluates the whole training set only on logged rows). Summary only.
CONV_STEPS_TO_FIT_RESOLUTION = "conv/steps_to_fit_resolution"

# The regime of a trial (regime.py): the edge ratio lr * lambda_max(Theta)/n of the step-weighted GD kernel at init
# (step 0) and at the end, and in the summary the regime word and its inputs.
REGIME_EDGE_RATIO = "regime/edge_ratio"
REGIME = "regime"  # summary: lazy | rich | catapult | edge_of_stability | diverged | dead
# outside the regime the metrics describe: in no fit or verdict
REGIME_FLAGGED = ("catapult", "edge_of_stability", "diverged", "dead")
REGIME_WHY = "regime_why"  # summary: the rule that decided it, with its numbers
REGIME_EDGE_RATIO_INIT = "regime/edge_ratio_init"  # summary
REGIME_KERNEL_MOVE = "regime/kernel_move"  # summary: |Theta_T - Theta_0|_F / |Theta_0|_F on the same samples
REGIME_LOSS_RISE = "regime/loss_rise"  # summary: max loss over the run / loss at init (> 1: the loss rose first)
REGIME_DEAD_LAYERS = "regime/dead_layers"  # summary: hidden ReLU layers with no unit active on the training set
# summary, with metrics.hessian: the share of the second half's rows with hessian/edge_ratio / 2 within regime.EOS_BAND
REGIME_EOS_SHARE = "regime/eos_share"
REGIME_FEATURE_MOVE = "regime/feature_move"  # summary: feature/delta_rel at the last logged row
