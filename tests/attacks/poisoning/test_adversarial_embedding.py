"""
Tan & Shokri's adversarial backdoor embedding (issue 16): one small run per framework (mnist-5k, 3x3 corner square on
5% of the training set to class 7), shared by the module's tests.
"""
import numpy as np
import pytest

from art_backdoor_ext.attacks.poisoning import AdversarialBackdoorEmbedding, localised_trigger
from art_backdoor_ext.estimators import get_adapter
from art_backdoor_ext.metrics import accuracy, attack_success_rate, latent_separability
from art_backdoor_ext.models import make_classifier

TARGET = 7
PRETRAIN_EPOCHS = 5
GAME_EPOCHS = 3


def _run(framework, data):
    (x, y), (xt, yt) = data
    x0, y0 = x.copy(), y.copy()
    clf = make_classifier(framework, nb_classes=10, input_shape=x.shape[1:], seed=0)
    w0 = get_adapter(clf).get_weights()
    trigger = localised_trigger(size=3)
    attack = AdversarialBackdoorEmbedding(clf, trigger, TARGET, fraction=0.05, pretrain_epochs=PRETRAIN_EPOCHS,
                                          nb_epochs=GAME_EPOCHS, seed=0)
    embedded = attack.poison_estimator(x, y, x_val=xt, y_val=yt)
    x_p, y_p, is_poison = attack.get_training_data()

    def stats(model):
        mask = y_p == TARGET
        sep = latent_separability(get_adapter(model).get_features(x_p[mask]), is_poison[mask])
        return {"acc": accuracy(model, xt, yt), "asr": attack_success_rate(model, xt, yt, trigger, TARGET),
                "ari": sep.ari, "ss_remaining": sep.ss_remaining}

    return {"clf": clf, "w0": w0, "x0": x0, "y0": y0, "x": x, "y": y, "attack": attack, "embedded": embedded,
            "naive": stats(attack.naive_classifier_), "emb": stats(embedded)}


@pytest.fixture(scope="module")
def pytorch_run(mnist5k):
    return _run("pytorch", mnist5k)


@pytest.fixture(scope="module")
def keras_run(mnist5k_nhwc):
    return _run("keras", mnist5k_nhwc)


@pytest.fixture(params=["pytorch", "keras"])
def run(request):
    return request.getfixturevalue(f"{request.param}_run")


def test_keeps_accuracy_and_backdoor(run):
    naive, emb = run["naive"], run["emb"]
    assert emb["acc"] >= naive["acc"] - 0.02, (naive, emb)
    assert emb["asr"] >= 0.9, emb


def test_activation_clustering_no_longer_separates(run):
    naive, emb = run["naive"], run["emb"]
    assert naive["ari"] > 0.8, naive
    assert emb["ari"] < 0.5 * naive["ari"], (naive, emb)


def test_history_and_discriminator(run):
    attack = run["attack"]
    h = attack.history_
    assert len(h["ce"]) == GAME_EPOCHS and all(np.isfinite(h["d_loss"]))
    assert h["sigma"][0] == pytest.approx(0.1) and h["sigma"][1] == pytest.approx(0.01)
    assert 0.0 <= h["val_d_acc"][-1] <= 1.0
    assert attack.seconds_["embedding"] > 0


@pytest.mark.xfail(reason="issue 16 asks for D near chance on held-out latents; no setting of the game measured on "
                          "mnist-5k (lambda 0.3-3, 5-30 epochs, Adam 1e-4/1e-3, 1-5 D steps, the paper's, confusion "
                          "and flip objectives; with the mmd penalty D falls to ~0.73 at ~3 points of accuracy) got "
                          "there within 2 points of the naive accuracy: see "
                          "benchmarks/results/adversarial_embedding_sweep.md; 48 more runs judged by a fresh "
                          "discriminator: benchmarks/results/adversarial_embedding_operating_points.md", strict=False)
def test_discriminator_near_chance_on_held_out_latents(run):
    assert run["attack"].history_["val_d_acc"][-1] <= 0.65


def test_inputs_and_classifier_untouched(run):
    assert np.array_equal(run["x"], run["x0"]) and np.array_equal(run["y"], run["y0"])
    after = get_adapter(run["clf"]).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(run["w0"], after))
    assert run["embedded"] is not run["clf"]


def test_poison_applies_trigger(pytorch_run):
    attack = pytorch_run["attack"]
    x = pytorch_run["x"][:4]
    x_p, y_p = attack.poison(x, y=np.eye(10)[TARGET], broadcast=True)
    assert x_p.shape == x.shape and np.all(x_p[:, :, -3:-1, -3:-1] == 1.0) and y_p.shape == (4, 10)
    assert not np.shares_memory(x_p, x)


def test_head_retraining_moves_the_output_layer_only(run):
    """``head_epochs``: the same game (same seed) then the output layer retrained; the latents stay as the game left
    them, only the head's weights differ, and the time is reported."""
    x_p, y_p, is_poison = run["attack"].get_training_data()
    kw = dict(fraction=0.05, pretrain_epochs=0, nb_epochs=1, mmd=10.0, seed=0)
    game = AdversarialBackdoorEmbedding(run["embedded"], localised_trigger(size=3), TARGET, **kw)
    headed = AdversarialBackdoorEmbedding(run["embedded"], localised_trigger(size=3), TARGET, head_epochs=3, **kw)
    m1, m2 = game.embed(x_p, y_p, is_poison), headed.embed(x_p, y_p, is_poison)
    np.testing.assert_allclose(get_adapter(m1).get_features(x_p[:300]), get_adapter(m2).get_features(x_p[:300]),
                               rtol=1e-5, atol=1e-5)
    changed = [not np.allclose(a, b) for a, b in zip(get_adapter(m1).get_weights(), get_adapter(m2).get_weights())]
    k = sum(changed)
    assert k in (1, 2) and changed == [False] * (len(changed) - k) + [True] * k
    assert headed.seconds_["head"] > 0 and game.seconds_["head"] == 0


@pytest.mark.parametrize("kwargs,name", [
    ({"trigger": None}, "trigger"),
    ({"trigger": "square"}, "trigger"),
    ({"target": 10}, "target"),
    ({"target": -1}, "target"),
    ({"fraction": 0.0}, "fraction"),
    ({"fraction": 1.0}, "fraction"),
    ({"layer": "no_such_layer"}, "layer"),
    ({"layer": 3}, "layer"),
    ({"regularization": -1.0}, "regularization"),
    ({"nb_epochs": 0}, "nb_epochs"),
    ({"d_steps": 0}, "d_steps"),
    ({"reference": "everything"}, "reference"),
    ({"objective": "wgan"}, "objective"),
    ({"mmd": -1.0}, "mmd"),
    ({"mmd": "yes"}, "mmd"),
    ({"head_epochs": -1}, "head_epochs"),
    ({"head_epochs": 1.5}, "head_epochs"),
    ({"head_learning_rate": 0.0}, "head_learning_rate"),
])
def test_bad_input_names_the_argument(kwargs, name):
    clf = make_classifier("pytorch", nb_classes=10, seed=0)
    args = {"trigger": localised_trigger(size=3), "target": TARGET, **kwargs}
    with pytest.raises(ValueError, match=name):
        AdversarialBackdoorEmbedding(clf, **args)


def test_embed_rejects_a_set_without_poison():
    clf = make_classifier("pytorch", nb_classes=10, seed=0)
    attack = AdversarialBackdoorEmbedding(clf, localised_trigger(size=3), TARGET, pretrain_epochs=0)
    x = np.zeros((8, 1, 28, 28), np.float32)
    with pytest.raises(ValueError, match="is_poison"):
        attack.embed(x, np.full(8, TARGET), np.zeros(8, bool))


def test_plots(keras_run):
    import matplotlib.pyplot as plt

    from art_backdoor_ext.plotting import plot_embedding_history, plot_latent_projection

    attack = keras_run["attack"]
    fig = plot_embedding_history(attack.history_)
    assert len(fig.axes) == 2
    x_p, y_p, is_poison = attack.get_training_data()
    mask = y_p == TARGET
    feats = [(name, get_adapter(m).get_features(x_p[mask])) for name, m in
             (("naive", attack.naive_classifier_), ("embedded", keras_run["embedded"]))]
    fig2 = plot_latent_projection(feats, is_poison[mask])
    assert len(fig2.axes) == 2
    plt.close("all")
    with pytest.raises(ValueError, match="empty"):
        plot_embedding_history({})
