"""Input validation and small helpers shared by attacks, defences and the harness."""
from __future__ import annotations

import logging
from typing import Iterable, List, Optional, Sequence, Union

import numpy as np

logger = logging.getLogger(__name__)


def to_labels(y: np.ndarray, nb_classes: Optional[int] = None, name: str = "y") -> np.ndarray:
    """
    Return integer labels from integer or one-hot labels, validating them.

    :param y: Labels, shape ``(N,)`` (integers) or ``(N, K)`` (one-hot or probabilities).
    :param nb_classes: When given, labels must lie in ``[0, nb_classes)``.
    :param name: Name used in error messages.
    :raises ValueError: For a wrong shape, non-integer values or labels out of range.
    """
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 2:
        if nb_classes is not None and y.shape[1] != nb_classes:
            raise ValueError(f"{name} is one-hot with {y.shape[1]} columns but the classifier has {nb_classes} classes.")
        return np.argmax(y, axis=1).astype(np.int64)
    if y.ndim != 1:
        raise ValueError(f"{name} must be integer labels of shape (N,) or one-hot of shape (N, K); got shape {y.shape}.")
    if y.size and not np.all(np.equal(np.mod(y, 1), 0)):
        raise ValueError(f"{name} must hold integer class labels; got non-integer values.")
    labels = y.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise ValueError(f"{name} holds negative labels (min {labels.min()}); labels must be class indices >= 0.")
    if nb_classes is not None and labels.size and labels.max() >= nb_classes:
        raise ValueError(f"{name} holds label {labels.max()} but the classifier has only {nb_classes} classes.")
    return labels


def check_images(x: np.ndarray, name: str = "x", min_ndim: int = 3) -> np.ndarray:
    """
    Validate a batch of images (``(N, ...)``, finite numbers) and return it as a float32 array (never the same object
    mutated later: callers copy before writing).
    """
    x = np.asarray(x)
    if x.ndim < min_ndim:
        raise ValueError(f"{name} must be a batch of images with at least {min_ndim} dimensions; got shape {x.shape}.")
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{name} must be numeric; got dtype {x.dtype}.")
    if x.size and not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinite values.")
    return x.astype(np.float32, copy=False)


def check_range(x: np.ndarray, low: float = 0.0, high: float = 1.0, name: str = "x",
                bound: str = "the classifier's clip_values") -> None:
    """
    ``ValueError`` naming ``x`` when its values leave ``[low, high]``, with the fix when the data look like 8-bit
    (0-255) or [-1, 1] images given to a model that expects [0, 1]. ``bound`` says where the range comes from.
    """
    if x.size == 0:
        return
    lo, hi = float(np.min(x)), float(np.max(x))
    tol = 1e-6 * max(1.0, abs(high - low))
    if lo >= low - tol and hi <= high + tol:
        return
    hint = ""
    if high <= 1.0 + tol and 1.5 < hi <= 255.0 + tol and lo >= -tol:
        hint = " They look like 8-bit images (0-255): scale your images to [0, 1] first (x / 255)."
    elif low >= -tol and lo >= -1.0 - tol and lo < -tol and hi <= 1.0 + tol:
        hint = " They look like images in [-1, 1]: map them to [0, 1] first ((x + 1) / 2)."
    raise ValueError(f"{name} has values in [{lo:.4g}, {hi:.4g}] but must lie in [{low:g}, {high:g}] ({bound})."
                     f"{hint}")


def check_xy(x: np.ndarray, y: np.ndarray, nb_classes: Optional[int] = None, x_name: str = "x",
             y_name: str = "y") -> tuple:
    """Validate images and labels together: same length, labels valid. Returns ``(x, labels)``."""
    x = check_images(x, x_name)
    labels = to_labels(y, nb_classes, name=y_name)
    if len(x) != len(labels):
        raise ValueError(f"{x_name} has {len(x)} images but {y_name} has {len(labels)} labels.")
    return x, labels


def as_class_list(classes: Union[None, int, str, Iterable[int]], nb_classes: int, exclude: Optional[int] = None,
                  name: str = "sources") -> List[int]:
    """
    Normalise a class selection: an int, a list of ints, or ``None``/``"all"`` for every class except ``exclude``.
    """
    if classes is None or (isinstance(classes, str) and classes == "all"):
        out = [c for c in range(nb_classes) if c != exclude]
    elif _is_int(classes):
        out = [int(classes)]
    elif isinstance(classes, str) or not isinstance(classes, Iterable):
        raise ValueError(f"{name} must be an int, a list of ints or 'all'; got {classes!r}.")
    else:
        classes = list(classes)
        bad = [c for c in classes if not _is_int(c)]
        if bad:
            raise ValueError(f"{name} must hold class indices (ints); got {bad!r} in {classes!r}.")
        out = [int(c) for c in classes]
    if not out:
        raise ValueError(f"{name} is empty.")
    bad = [c for c in out if not 0 <= c < nb_classes]
    if bad:
        raise ValueError(f"{name} {bad} out of range for {nb_classes} classes.")
    if exclude is not None and exclude in out:
        raise ValueError(f"{name} must not contain the target class {exclude}.")
    if len(set(out)) != len(out):
        raise ValueError(f"{name} contains duplicates: {out}.")
    return out


def batches(n: int, batch_size: int) -> Sequence[slice]:
    """Slices covering ``range(n)`` in chunks of ``batch_size``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def progress(iterable=None, verbose: bool = False, **kwargs):
    """A tqdm progress bar when ``verbose``, else the plain iterable (``total`` etc. are passed to tqdm)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not verbose, **kwargs)


def poison_labels(x: np.ndarray, y: Optional[np.ndarray], broadcast: bool = False) -> tuple:
    """
    Validate the inputs of a targeted poisoning attack's ``poison(x, y, broadcast)`` as ART's
    ``PoisoningAttackBackdoor`` does: ``y`` (target labels) is required; with ``broadcast`` one label is repeated for
    every image. Returns ``(x, y_attack)`` with ``y_attack`` a new array.
    """
    if y is None:
        raise ValueError("Target labels `y` must be given for this targeted attack (broadcast=True for one label).")
    x = np.asarray(x)
    if x.size == 0 or len(x) == 0:
        raise ValueError("Must input at least one image to poison.")
    y = np.asarray(y)
    if broadcast:
        return x, np.broadcast_to(y, (x.shape[0],) + y.shape).copy()
    if len(y) != len(x):
        raise ValueError(f"x and y have different lengths ({len(x)} and {len(y)}).")
    return x, np.copy(y)


# ---------------------------------------------------------------------------------------------- parameter checks
def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def check_int(name: str, value, low: Optional[int] = None, high: Optional[int] = None, hint: str = "") -> int:
    """
    ``value`` as an int, or a ``ValueError`` naming ``name`` when it is not an integer (bools are not) or lies outside
    ``[low, high]`` (either bound optional). ``hint`` is appended to the message (e.g. the paper's value).
    """
    ok = _is_int(value) and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        if low is not None and high is not None:
            want = f"an integer in [{low}, {high}]"
        elif low is not None:
            want = f"an integer >= {low}"
        elif high is not None:
            want = f"an integer <= {high}"
        else:
            want = "an integer"
        raise ValueError(f"{name} must be {want}{hint and f' ({hint})'}, got {value!r}.")
    return int(value)


def check_number(name: str, value, low: Optional[float] = None, high: Optional[float] = None,
                 low_open: bool = False, high_open: bool = False, hint: str = "") -> float:
    """
    ``value`` as a finite float, or a ``ValueError`` naming ``name`` when it is not a number or lies outside the
    interval (``low_open``/``high_open`` exclude the bound).
    """
    ok = _is_number(value) and np.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "-inf" if low is None else f"{low}"
        hi = "inf" if high is None else f"{high}"
        interval = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
        raise ValueError(f"{name} must be a finite number in {interval}{hint and f' ({hint})'}, got {value!r}.")
    return float(value)


def check_choice(name: str, value, choices: Sequence, hint: str = ""):
    """``value`` when it is one of ``choices``, else a ``ValueError`` naming ``name`` and the choices."""
    if not any(value is c or (type(value) is type(c) and value == c) for c in choices):
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}{hint and f' ({hint})'}, "
                         f"got {value!r}.")
    return value


def check_bool(name: str, value) -> bool:
    """``value`` when it is a bool, else a ``ValueError`` naming ``name``."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}.")
    return bool(value)


def check_seed(name: str, value, allow_none: bool = True) -> Optional[int]:
    """A seed: ``None`` (when allowed) or a non-negative integer; ``ValueError`` naming ``name`` otherwise."""
    if value is None and allow_none:
        return None
    if not _is_int(value) or value < 0:
        allowed = "None or a non-negative integer" if allow_none else "a non-negative integer"
        raise ValueError(f"{name} must be {allowed}, got {value!r}.")
    return int(value)


def check_layer_name(name: str, value) -> Optional[str]:
    """A layer given by name (or ``None`` for the default layer); ``ValueError`` for indices and other types."""
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name} must be a layer name (str) or None for the default layer, got {value!r}; layer "
                         "indices are unreliable in ART.")
    return value


def wilson_half_width(p: float, n: int, z: float = 1.96) -> float:
    """Half-width of the Wilson score interval (95% for ``z=1.96``) of a proportion ``p`` measured on ``n`` trials."""
    if n <= 0:
        return float("inf")
    denom = 1.0 + z * z / n
    return float(z * np.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denom)
