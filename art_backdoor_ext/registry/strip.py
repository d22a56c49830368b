"""
STRIP (Gao et al., https://arxiv.org/abs/1902.06531) as a training-set filter row of the harness.

ART's ``STRIP`` transformer superimposes each input on ``num_samples`` clean images and abstains when the mean entropy
of the predictions is below a threshold set on clean data (a Gaussian fit, at the false-acceptance rate). It predicts
one image at a time and takes the entropy of the raw model outputs, which are logits for the reference models (giving
NaN). This row follows the same procedure, batched, on softmax probabilities, and applies it to the training set.
"""
from __future__ import annotations

import numpy as np

from art_backdoor_ext.estimators import get_adapter
from art_backdoor_ext.evaluation.api import ScenarioContext, register_defence
from art_backdoor_ext.utils import batches


def strip_entropy(classifier, x: np.ndarray, x_val: np.ndarray, num_samples: int = 20, seed: int = 0,
                  batch_size: int = 1024) -> np.ndarray:
    """Mean prediction entropy (bits) of each image of ``x`` blended 50/50 with ``num_samples`` images of ``x_val``."""
    rng = np.random.default_rng(seed)
    adapter = get_adapter(classifier)
    out = np.empty(len(x), np.float64)
    per_batch = max(1, batch_size // num_samples)
    for s in batches(len(x), per_batch):
        idx = rng.integers(0, len(x_val), size=(s.stop - s.start, num_samples))
        blended = 0.5 * x[s][:, None] + 0.5 * x_val[idx]
        scores = classifier.predict(blended.reshape((-1,) + x.shape[1:]).astype(np.float32), batch_size=batch_size)
        if not adapter._is_probability(scores):  # pylint: disable=protected-access
            scores = np.exp(scores - scores.max(axis=1, keepdims=True))
            scores /= scores.sum(axis=1, keepdims=True)
        ent = -(scores * np.log2(np.clip(scores, 1e-12, None))).sum(axis=1)
        out[s] = ent.reshape(-1, num_samples).mean(axis=1)
    return out


@register_defence("strip")
def _strip(ctx: ScenarioContext, num_samples: int = 20, false_acceptance_rate: float = 0.01, nb_val: int = 500):
    """
    STRIP on the training set. The defender's clean data is the first ``nb_val`` test images (the threshold is set on
    them); a training image is flagged when its entropy is below the threshold. STRIP is an input filter, not a
    model-level detector: ``detected`` is ``None``.
    """
    from scipy.stats import norm

    x_val = ctx.x_test[:nb_val]
    ent_val = strip_entropy(ctx.classifier, x_val, x_val, num_samples, seed=ctx.scenario.seed)
    threshold = norm.ppf(false_acceptance_rate, loc=ent_val.mean(), scale=ent_val.std())
    ent = strip_entropy(ctx.classifier, ctx.x_train, x_val, num_samples, seed=ctx.scenario.seed + 1)
    is_clean = (ent > threshold).astype(int)
    report = {"detected": None, "target_class": None, "suspected_classes": [], "entropy_threshold": float(threshold),
              "scores": -ent}  # per-image suspicion for threshold-free metrics: low entropy = suspicious
    return report, is_clean
