"""Issue 3: imperceptible patterns A-F, the invisible-backdoor attack and Zhong et al.'s adversarial trigger."""
import numpy as np
import pytest

from art_backdoor_ext.attacks.poisoning import (
    PoisoningAttackAdversarialTrigger,
    PoisoningAttackInvisibleBackdoor,
    add_pattern,
    make_pattern,
    pattern_trigger,
    poison_dataset,
)
from art_backdoor_ext.evaluation import Scenario

CLEAN = Scenario(attack=None, nb_epochs=5)  # shared with tests/test_models.py


def _levels(p):
    return np.round(np.abs(p[p != 0]) * 255).astype(int)


def test_global_patterns_match_paper():
    a = make_pattern("A", (1, 28, 28))[0]
    b = make_pattern("B", (28, 28))
    i, j = np.indices((28, 28))
    np.testing.assert_array_equal(a != 0, (i + j) % 2 == 0)  # one of each pair of neighbours
    np.testing.assert_allclose(a[a != 0], 2 / 255)
    np.testing.assert_array_equal(b != 0, (i % 2 == 0) & (j % 2 == 0))  # Zhong et al.: i and j both even, from 0
    np.testing.assert_allclose(b[b != 0], 3 / 255)
    np.testing.assert_array_equal(make_pattern("chessboard", (1, 28, 28)), make_pattern("A", (1, 28, 28)))
    np.testing.assert_array_equal(make_pattern("static", (28, 28)), b)


def test_chessboard_patch_is_the_papers_mnist_attack():
    # RE paper, supplementary Section 19 / Fig. 14: a 6x6 chessboard patch of 25/255 at the bottom-right corner
    p = make_pattern("A", (1, 28, 28), magnitude=25 / 255, patch=6)[0]
    assert np.count_nonzero(p) == 18 and np.all(p[:22] == 0) and np.all(p[:, :22] == 0)
    np.testing.assert_allclose(p[22:, 22:], np.where((np.add.outer(np.arange(22, 28), np.arange(22, 28)) % 2) == 0,
                                                     25 / 255, 0), atol=1e-7)
    # magnitude alone rescales the image-wide pattern, on the 8-bit grid; other kinds keep their shapes
    np.testing.assert_allclose(make_pattern("B", (28, 28), magnitude=9 / 255), make_pattern("B", (28, 28)) * 3)
    c = make_pattern("C", (28, 28), seed=2, magnitude=0.5)
    np.testing.assert_array_equal(c > 0, make_pattern("C", (28, 28), seed=2) > 0)
    assert np.isclose(c.max(), 128 / 255)
    for bad in (dict(magnitude=0.0), dict(magnitude=1.5), dict(patch=0), dict(patch=29)):
        with pytest.raises(ValueError):
            make_pattern("A", (1, 28, 28), **bad)
    with pytest.raises(ValueError, match="patch"):
        make_pattern("C", (1, 28, 28), patch=6)


def test_local_patterns_match_paper():
    c = make_pattern("C", (3, 32, 32), seed=1)
    assert (c != 0).sum() == 3 * 5 and set(_levels(c)) == {70}  # a plus sign in all channels
    np.testing.assert_array_equal(c[0], c[2])
    r, k = np.nonzero(c[0])
    assert r.max() - r.min() == 2 and k.max() - k.min() == 2 and (c[0][r.min() + 1, k.min():k.min() + 3] != 0).all()
    d = make_pattern("D", (3, 32, 32), seed=1)
    assert (d[1:] == 0).all() and (d[0] != 0).sum() == 9 and set(_levels(d)) == {80}  # first channel only
    r, k = np.nonzero(d[0])
    assert r.max() - r.min() == 2 and k.max() - k.min() == 2
    f = make_pattern("L", (32, 32, 3), seed=1)
    assert (f != 0).sum() == 3 * 5 and set(_levels(f)) == {70}
    e = make_pattern("E", (3, 32, 32), seed=3)
    assert (e != 0).sum() == 4 and len(np.unique(np.nonzero(e)[0])) == 1  # four pixels of one channel
    assert all(80 <= v <= 96 for v in _levels(e))
    np.testing.assert_allclose(e * 255, np.round(e * 255), atol=1e-4)
    # random locations: fixed by the seed, different across seeds, identical across layouts
    np.testing.assert_array_equal(make_pattern("F", (1, 28, 28), seed=5), make_pattern("F", (1, 28, 28), seed=5))
    assert any(not np.array_equal(make_pattern("C", (28, 28), seed=s), make_pattern("C", (28, 28), seed=0))
               for s in (1, 2, 3))
    for kind in "ABCDEF":
        np.testing.assert_array_equal(make_pattern(kind, (3, 32, 32), seed=7),
                                      np.moveaxis(make_pattern(kind, (32, 32, 3), seed=7), -1, 0))


def test_add_pattern_grid_clipping_layouts_no_mutation(rng):
    x = rng.random((6, 1, 28, 28)).astype(np.float32)
    x[:, :, :4] = 1.0  # saturated rows must clip
    x_copy = x.copy()
    trig = pattern_trigger("C", (1, 28, 28), seed=0)
    out = trig(x)
    np.testing.assert_array_equal(x, x_copy)
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out * 255, np.round(out * 255), atol=1e-4)
    assert out.min() >= 0 and out.max() <= 1
    expected = np.round(np.clip(x + trig.pattern, 0, 1) * 255) / 255
    np.testing.assert_allclose(out, expected, atol=1e-6)
    # same result in NHWC, NHW and one image at a time
    np.testing.assert_allclose(np.moveaxis(trig(np.moveaxis(x, 1, -1)), -1, 1), out, atol=1e-6)
    np.testing.assert_allclose(trig(x[:, 0]), out[:, 0], atol=1e-6)
    np.testing.assert_allclose(trig(np.moveaxis(x[0], 0, -1))[..., 0], out[0, 0], atol=1e-6)
    # negative perturbation (pattern E) clips at 0
    neg = add_pattern(np.zeros((2, 28, 28), np.float32), -np.ones((28, 28), np.float32) * 0.3)
    assert (neg == 0).all()


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        make_pattern("Z", (1, 28, 28))
    with pytest.raises(ValueError):
        make_pattern("C", (28,))
    with pytest.raises(ValueError):
        make_pattern("D", (1, 28, 28), size=40)
    with pytest.raises(ValueError):
        add_pattern(np.zeros((2, 1, 28, 28)), np.zeros((1, 32, 32)))
    with pytest.raises(ValueError):
        pattern_trigger("A")  # no image shape
    with pytest.raises(ValueError):
        PoisoningAttackInvisibleBackdoor(np.full((28, 28), 2.0))  # not a perturbation in [-1, 1]
    with pytest.raises(ValueError):
        PoisoningAttackInvisibleBackdoor("static").poison(np.zeros((2, 1, 28, 28)))  # no target labels


def test_invisible_backdoor_attack(mnist5k):
    (x, y), _ = mnist5k
    attack = PoisoningAttackInvisibleBackdoor()  # Zhong et al.'s static trigger by default
    x_p, y_p = attack.poison(x[:5], y=np.eye(10)[7], broadcast=True)
    np.testing.assert_array_equal(attack.pattern, make_pattern("static", (1, 28, 28)))
    assert y_p.shape == (5, 10) and (y_p.argmax(1) == 7).all()
    np.testing.assert_allclose(x_p, add_pattern(x[:5], attack.pattern), atol=1e-6)
    assert np.abs(x_p - x[:5]).max() <= 3 / 255 + 1e-6
    # plugs into poison_dataset (3SC) and ART's PoisoningAttackBackdoor
    data = poison_dataset(x, y, PoisoningAttackInvisibleBackdoor("E", seed=2), target=7, sources=[1, 2, 3],
                          n_per_source=20)
    assert data.nb_poison == 60 and (data.y[data.is_poison] == 7).all()
    from art.attacks.poisoning import PoisoningAttackBackdoor

    art_x, _ = PoisoningAttackBackdoor(pattern_trigger("square", (1, 28, 28))).poison(x[:3], y=np.eye(10)[[7] * 3])
    np.testing.assert_allclose(art_x, add_pattern(x[:3], make_pattern("D", (1, 28, 28))), atol=1e-6)


def test_adversarial_trigger_bounded_and_raises_target_probability(scenario_ctx):
    ctx = scenario_ctx(CLEAN)  # a clean compact CNN: the surrogate (read only)
    source, target = 1, 7
    x_src = ctx.x_clean[ctx.y_clean == source][:96]
    x_src_copy = x_src.copy()
    attack = PoisoningAttackAdversarialTrigger(ctx.classifier, target=target, norm_bound=1.0, max_passes=1,
                                               max_iter=20, batch_size=32, quantise=False)
    v = attack.generate_pattern(x_src)
    np.testing.assert_array_equal(x_src, x_src_copy)
    assert v.shape == (1, 28, 28) and np.linalg.norm(v) <= 1.0 + 1e-5 and np.linalg.norm(v) > 0.5
    held_out = ctx.x_test[ctx.y_test == source]
    before = attack.target_probability(held_out, with_pattern=False).mean()
    after = attack.target_probability(held_out).mean()
    assert after > before + 0.01 and after > 2 * before
    x_p, y_p = attack.poison(held_out[:4], y=np.full(4, target))
    assert (y_p == target).all() and np.abs(x_p - np.clip(held_out[:4] + v, 0, 1)).max() < 1e-5
    with pytest.raises(ValueError):
        PoisoningAttackAdversarialTrigger(ctx.classifier, norm_bound=0)
    with pytest.raises(ValueError):
        PoisoningAttackAdversarialTrigger(ctx.classifier, target=7).poison(held_out[:2], y=np.full(2, 7))


def test_pattern_attacks_of_the_harness_add_their_pattern(digits):
    # each pattern attack of the harness returns a trigger whose .pattern is what it adds (before clipping/rounding)
    from art_backdoor_ext.evaluation import AttackContext, get_attack

    (x, y), (xt, yt) = digits
    x = np.round(x * 255) / 255  # on the 8-bit grid, so that the triggers' rounding leaves other pixels alone
    ctx = AttackContext(x, y, xt, yt, 10, 1, [2, 3], "pytorch", 0)
    for name in ["static", "chessboard", "chessboard-patch"] + [f"pattern-{c}" for c in "ABCDEF"]:
        trigger = get_attack(name)(ctx)
        assert trigger.pattern.shape == x.shape[1:], name
        assert np.abs(trigger.pattern).max() > 0, name
        moved = trigger(x[:20]) - x[:20]
        touched = trigger.pattern != 0
        assert np.all(moved[:, ~touched] == 0), name  # nothing outside the pattern changes
