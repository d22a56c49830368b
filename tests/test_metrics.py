import numpy as np
import pytest

from art_backdoor_ext import metrics
from art_backdoor_ext.metrics import DefenceResult, filtering_rates


def test_filtering_rates_hand_computed():
    #          idx: 0  1  2  3  4  5  6  7
    y = np.array([7, 7, 7, 7, 1, 1, 2, 2])
    is_poison = np.array([1, 1, 0, 0, 0, 0, 0, 0], bool)
    is_clean = np.array([0, 1, 0, 1, 0, 1, 1, 1])
    r = filtering_rates(is_clean, is_poison, y, target=7)
    assert r.tpr == 0.5           # 1 of 2 poisoned flagged
    assert r.fpr_target == 0.5    # 1 of 2 clean 7s flagged
    assert r.fpr == 2 / 6         # images 2 and 4 of the 6 clean ones
    assert r.nb_flagged == 3
    r1 = filtering_rates(is_clean, is_poison, np.eye(10)[y], target=None)  # one-hot labels
    assert np.isnan(r1.fpr_target) and r1.tpr == 0.5


def test_filtering_rates_clean_set_gives_nan_tpr():
    r = filtering_rates([1, 1, 0], [False, False, False], [0, 1, 2], target=0)
    assert np.isnan(r.tpr) and r.fpr == pytest.approx(1 / 3)


@pytest.mark.parametrize("args", [([1, 1], [True], [0, 1]), ([1, 2], [True, False], [0, 1])])
def test_filtering_rates_bad_input(args):
    with pytest.raises(ValueError):
        filtering_rates(*args, target=0)


def test_asr_excludes_target_and_non_sources(monkeypatch):
    """ASR counts only source-class images (never the target class), after the trigger."""
    x = np.zeros((6, 1, 4, 4), np.float32)
    y = np.array([0, 0, 1, 1, 2, 2])
    seen = {}

    class FakeAdapter:  # a 3-class model that predicts 2 for 3 of the 4 source images
        nb_classes = 3

        @staticmethod
        def check_input(x_in, name="x"):
            return x_in

        @staticmethod
        def predict_labels(x_in, batch_size=512):
            seen["n"] = len(x_in)
            assert np.all(x_in[:, 0, 0, 0] == 1.0)  # trigger applied
            return np.array([2, 0, 2, 2]) if len(x_in) == 4 else np.full(len(x_in), 2)

    monkeypatch.setattr(metrics, "_adapter", lambda classifier: FakeAdapter)

    def trigger(z):
        z = z.copy()
        z[:, 0, 0, 0] = 1.0
        return z

    assert metrics.attack_success_rate(None, x, y, trigger, target=2) == pytest.approx(3 / 4)
    assert seen["n"] == 4  # the two images of class 2 are excluded
    assert metrics.attack_success_rate(None, x, y, trigger, target=2, sources=[1]) == 1.0
    assert seen["n"] == 2
    assert np.all(x == 0)  # input untouched
    with pytest.raises(ValueError):
        metrics.attack_success_rate(None, x, y, trigger, target=2, sources=[2])


def test_defence_result_json_safe():
    r = DefenceResult("x", np.bool_(True), np.int64(3), tpr=np.float64(0.5), extra={"a": np.arange(2)})
    d = r.as_dict()
    assert d["target_class"] == 3 and d["extra"]["a"] == [0, 1] and d["detected"] is True


def test_latent_separability_separated_and_mixed():
    from art_backdoor_ext.metrics import latent_separability

    rng = np.random.default_rng(0)
    is_poison = np.r_[np.ones(40, bool), np.zeros(160, bool)]
    apart = rng.normal(size=(200, 16)) + 6.0 * is_poison[:, None]
    sep = latent_separability(apart, is_poison)
    assert sep.ari > 0.95 and sep.probe_auroc > 0.99 and sep.ss_auroc > 0.95 and sep.ss_remaining < 0.1
    mixed = latent_separability(rng.normal(size=(200, 16)), is_poison)
    assert abs(mixed.ari) < 0.1 and abs(mixed.probe_auroc - 0.5) < 0.2 and mixed.ss_remaining > 0.5
    with pytest.raises(ValueError, match="two poisoned"):
        latent_separability(apart, np.zeros(200, bool))


def test_mad_anomaly_index_matches_the_definition_and_refuses_a_zero_mad():
    from art_backdoor_ext.metrics import mad_anomaly_index

    norms = np.array([40.0, 42.0, 38.0, 41.0, 39.0, 12.0])  # one anomalously small mask
    index = mad_anomaly_index(norms)
    median = np.median(norms)
    np.testing.assert_allclose(index, (norms - median) / (1.4826 * np.median(np.abs(norms - median))))
    assert index[5] < -2 and (index[:5] > -2).all()
    assert np.isnan(mad_anomaly_index([3.0, 3.0, 3.0, 7.0])).all()  # MAD 0: undefined, not a guess
    with pytest.raises(ValueError, match="values"):
        mad_anomaly_index([])
