"""
Tan & Shokri's targeted embedding against pruning (issue 16, Eq. 4): one small run per framework (mnist-5k, 3x3 corner
square on 5% of the training set to class 7), shared by the module's tests.
"""
import numpy as np
import pytest

from art_backdoor_ext.attacks.poisoning import TargetedBackdoorEmbedding, localised_trigger
from art_backdoor_ext.attacks.poisoning.adversarial_embedding import apply_trigger
from art_backdoor_ext.estimators import get_adapter
from art_backdoor_ext.metrics import accuracy, attack_success_rate
from art_backdoor_ext.models import make_classifier

TARGET = 7


def _run(framework, data):
    (x, y), (xt, yt) = data
    x0, y0 = x.copy(), y.copy()
    clf = make_classifier(framework, nb_classes=10, input_shape=x.shape[1:], seed=0)
    w0 = get_adapter(clf).get_weights()
    trigger = localised_trigger(size=3)
    attack = TargetedBackdoorEmbedding(clf, trigger, TARGET, fraction=0.05, pretrain_epochs=6, nb_epochs=4, seed=0)
    model = attack.poison_estimator(x, y)
    src = yt != TARGET
    x_bd = apply_trigger(trigger, xt[src], TARGET, 10)

    def pruned_asr(m):  # the defence removes N_b: what is left of the backdoor?
        pruned = get_adapter(m).clone()
        get_adapter(pruned).prune_channels(attack.layer_, attack.pruned_channels_)
        return float(np.mean(get_adapter(pruned).predict_labels(x_bd) == TARGET)), accuracy(pruned, xt, yt)

    naive, targeted = attack.naive_classifier_, model
    return {"clf": clf, "w0": w0, "x0": x0, "y0": y0, "x": x, "y": y, "attack": attack, "model": model,
            "naive": {"acc": accuracy(naive, xt, yt), "asr": attack_success_rate(naive, xt, yt, trigger, TARGET),
                      "pruned": pruned_asr(naive)},
            "targeted": {"acc": accuracy(targeted, xt, yt),
                         "asr": attack_success_rate(targeted, xt, yt, trigger, TARGET), "pruned": pruned_asr(targeted)},
            "nb_activation": get_adapter(targeted).channel_activations(x[:500], attack.layer_)[
                attack.pruned_channels_],
            "nb_activation_naive": get_adapter(naive).channel_activations(x[:500], attack.layer_)[
                attack.pruned_channels_]}


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
    naive, targeted = run["naive"], run["targeted"]
    assert targeted["acc"] >= naive["acc"] - 0.02, (naive, targeted)
    assert targeted["asr"] >= 0.9, targeted


def test_the_channels_pruning_removes_are_silenced(run):
    attack = run["attack"]
    assert len(attack.pruned_channels_) > 0 and attack.layer_ == get_adapter(run["clf"]).resolve_conv_layer(None)
    assert run["nb_activation"].mean() < 0.2 * run["nb_activation_naive"].mean(), run["nb_activation"]
    h = attack.history_
    assert h["nb_activation"][-1] < h["nb_activation"][0] and all(np.isfinite(h["loss"]))


def test_backdoor_survives_the_pruning(run):
    # removing N_b costs the targeted model (almost) no accuracy and no ASR
    asr_pruned, acc_pruned = run["targeted"]["pruned"]
    assert asr_pruned >= 0.9 and acc_pruned >= run["targeted"]["acc"] - 0.01, run["targeted"]


def test_pruning_removes_the_naive_backdoor_but_not_the_targeted_one(pytorch_run):
    # the paper's Figure 4 at the attacker's 8% budget, where it shows on this PyTorch model (naive ASR 0.99 ->
    # 0.44-0.69 when N_b is pruned, targeted 0.99 -> 0.99; on the Keras model the naive backdoor already survives the pruning)
    assert pytorch_run["naive"]["pruned"][0] < 0.8, pytorch_run["naive"]
    assert pytorch_run["targeted"]["pruned"][0] >= 0.9, pytorch_run["targeted"]


def test_inputs_and_classifier_untouched(run):
    assert np.array_equal(run["x"], run["x0"]) and np.array_equal(run["y"], run["y0"])
    after = get_adapter(run["clf"]).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(run["w0"], after))
    assert run["model"] is not run["clf"] and get_adapter(run["clf"]).pruned_channels() == []


@pytest.mark.parametrize("kwargs,name", [
    ({"trigger": None}, "trigger"),
    ({"target": 10}, "target"),
    ({"fraction": 1.5}, "fraction"),
    ({"layer": "fc"}, "layer"),
    ({"layer": "no_such_layer"}, "layer"),
    ({"regularization": 0.0}, "regularization"),
    ({"scale": 1.0}, "scale"),
    ({"prune_acc_drop": 0.0}, "prune_acc_drop"),
    ({"nb_prune_images": 5}, "nb_prune_images"),
    ({"nb_epochs": 0}, "nb_epochs"),
    ({"learning_rate": -1e-3}, "learning_rate"),
    ({"seed": -1}, "seed"),
])
def test_bad_input_names_the_argument(kwargs, name):
    clf = make_classifier("pytorch", nb_classes=10, seed=0)
    args = {"trigger": localised_trigger(size=3), "target": TARGET, **kwargs}
    with pytest.raises(ValueError, match=name):
        TargetedBackdoorEmbedding(clf, **args)


def test_harness_runs_it_by_name(digits):
    from art_backdoor_ext.evaluation import Scenario, attack_trains_model, run_scenario

    assert attack_trains_model("targeted-embedding")
    sc = Scenario(dataset="digits", attack="targeted-embedding", target=1, fraction=0.1, nb_epochs=3,
                  attack_kwargs={"nb_epochs": 1, "batch_size": 32, "trigger": "localised"})
    res = run_scenario(sc, defences=["prune-only"], keep_context=True, data=digits)
    info = res.context.attack_info
    assert info["pruned_layer"] and len(info["pruned_channels"]) > 0 and len(info["history"]["ce"]) == 1
    with pytest.raises(ValueError, match="trigger"):
        run_scenario(Scenario(dataset="digits", attack="targeted-embedding", attack_kwargs={"trigger": "nonsense"}),
                     defences=[], data=digits)
