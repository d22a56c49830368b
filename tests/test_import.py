import subprocess
import sys


def test_import_loads_no_framework():
    code = (
        "import sys, art_backdoor_ext, art_backdoor_ext.datasets, art_backdoor_ext.metrics, "
        "art_backdoor_ext.evaluation, art_backdoor_ext.attacks.poisoning, art_backdoor_ext.estimators, "
        "art_backdoor_ext.defences.detector.poison, art_backdoor_ext.plotting\n"
        "bad = [m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "print(art_backdoor_ext.__version__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().count(".") == 2


def test_keras_model_first_then_pytorch_model_does_not_crash():
    """torch's triton import segfaults after TensorFlow; the Keras code paths load torch's first."""
    code = ("from art_backdoor_ext.models import make_classifier\n"
            "make_classifier('keras', input_shape=(8, 8, 1))\n"
            "make_classifier('pytorch', input_shape=(1, 8, 8))\n"
            "print('both built')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "both built" in out.stdout, out.stderr[-2000:]
