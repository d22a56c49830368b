"""
The first comparison (``make demo``): a few threat scenarios on the bundled MNIST subset, every defence on each, and a
one-screen summary of which defence caught what.

Scenarios (target class 7, the reference CNN of ``--framework``/``--width``, one model per scenario):

* ``badnets``: a visible 3x3 corner square on 5% of the training set (ART's ``PoisoningAttackBackdoor``);
* ``pattern-C``: the RE paper's imperceptible pattern C, 3 source classes (1, 2, 3) with 50 poisoned images each;
* ``isolated-pixels``: a blur-fragile sparse trigger (4 isolated +0.35 pixels), 3 source classes, 50 each;
* ``clean``: no attack, to count false alarms.

Defences: ART's Activation Clustering (``ac``), Spectral Signatures (``ss``) and STRIP (``strip``, ART's procedure
batched), and this package's reverse-engineering detector (``re``; ``re-paper``: the paper's rule on the same
patterns), cluster impurity (``ci``), Neural Cleanse (``nc``, this package's implementation for both frameworks) and
fine-pruning. A cell of the summary says whether the defence caught the backdoor (and how well
it filtered), missed it, or raised a false alarm; a footnote marker points to what the defence itself warned about or
what its report says makes the bare number misleading (e.g. a cleansing that removes a large share of a clean class, a
detection of the wrong class, a defence used outside its stated threat model). The full table, with every row's
warnings and caveats, goes to ``<out>.md`` / ``<out>.json``.

Usage: python benchmarks/demo.py [--scenarios badnets clean ...] [--defences ac ss ...] [--epochs 10]
       [--framework pytorch|keras] [--width compact|wide] [--seed 0] [--out benchmarks/results/demo] [--aegis]
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
import resource
import textwrap
import time
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

from art_backdoor_ext.evaluation import (
    DefenceResult,
    Scenario,
    ScenarioResult,
    get_defence,
    load_results,
    prepare_scenario,
    run_defences,
    save_results,
)

logger = logging.getLogger("demo")

DEFAULT_DEFENCES = ["ac", "ss", "ss-oracle", "strip", "re", "re-paper", "ci", "nc", "fine-pruning"]
# re-paper keeps the paper's rule and cleansing; the cleansing check only adds a diagnostic (is_clean is unchanged)
DEFAULT_KWARGS: Dict[str, Dict[str, Any]] = {"re-paper": {"min_relative_margin": 0.5}}
ART_DEFENCES = {"ac", "ss", "ss-oracle", "strip"}
SOURCES_3SC = [1, 2, 3]


@dataclasses.dataclass(frozen=True)
class DemoScenario:
    """One column of the summary: a threat (``kind``) and the harness scenario's settings."""

    key: str
    title: str
    subtitle: str
    kind: str  # "patch" (visible, localised), "pattern" (imperceptible additive), "sparse" (blur-fragile), "clean"
    settings: Dict[str, Any]


SCENARIOS: Dict[str, DemoScenario] = {s.key: s for s in [
    DemoScenario("badnets", "visible patch", "BadNets 3x3, 5%", "patch", {"attack": "badnets"}),
    DemoScenario("pattern-C", "imperceptible", "pattern C, 3SC", "pattern",
                 {"attack": "pattern-C", "sources": SOURCES_3SC}),
    DemoScenario("isolated-pixels", "blur-fragile", "4 pixels, 3SC", "sparse",
                 {"attack": "isolated-pixels", "sources": SOURCES_3SC}),
    DemoScenario("clean", "clean model", "no attack", "clean", {"attack": None}),
]}

AEGIS_COLUMN = DemoScenario("badnets-robust", "visible patch", "robust model", "patch", {})

THREAT_MODELS: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    # defence -> (its stated threat model, the demo's scenario kinds inside it); unlisted defences claim no restriction
    "re": ("small additive patterns", ("pattern", "sparse")),
    "re-paper": ("small additive patterns", ("pattern", "sparse")),
    "ci": ("blur-fragile triggers", ("sparse",)),
    "ci-raw": ("blur-fragile triggers", ("sparse",)),
}
ROW_NOTES = {
    "re-paper": "re-paper = RE with the paper's rule (Gamma test alone, Eq. 12 cleansing); its estimated patterns are "
                "re's, and RE's cleansing check runs as a diagnostic",
    "ci-raw": "ci-raw = CI on raw features (the paper)",
    "nc": "nc = Neural Cleanse (this package's, both frameworks)",
}
PER_IMAGE_FILTERS = {"ss", "ss-oracle", "strip"}  # name no class: judged on their filtering alone

# verdict thresholds (the legend states them)
CAUGHT_TPR, CAUGHT_FPR = 0.8, 0.05  # a per-image filter "caught" the poison
PARTIAL_TPR = 0.5  # below: "missed"
COSTLY_FPR = 0.2  # a cell that removes more than this share of clean images (all, or of the target class) gets a note
REMOVED_ASR = 0.2  # fine-pruning "removed" the backdoor when the ASR after is at most this


def demo_of(scenario: Scenario) -> DemoScenario:
    """The summary column of a (saved) scenario: by its attack, or the robust AEGIS column."""
    if scenario.robust and scenario.attack == "badnets":
        return AEGIS_COLUMN
    return SCENARIOS.get(scenario.attack if scenario.poisoned else "clean",
                         DemoScenario(str(scenario.attack), str(scenario.attack), "", "other", {}))


def build_scenario(demo: DemoScenario, args: argparse.Namespace) -> Scenario:
    settings = dict(demo.settings)
    if demo.kind != "clean":
        settings["target"] = args.target
        if "sources" in settings:
            settings["n_per_source"] = args.n_per_source
        else:
            settings["fraction"] = args.fraction
    return Scenario(dataset="mnist-5k", framework=args.framework, width=args.width, robust=args.robust,
                    nb_epochs=args.epochs, seed=args.seed, **settings)


# ------------------------------------------------------------------------------------------------------ running
class _LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def capture_warnings():
    """Collect this package's ``UserWarning``\\ s and logged warnings (they still reach the log)."""
    handler = _LogCapture()
    package_logger = logging.getLogger("art_backdoor_ext")
    package_logger.addHandler(handler)
    messages: List[str] = []
    try:
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            yield messages
    finally:
        package_logger.removeHandler(handler)
        for rec in records:
            if issubclass(rec.category, UserWarning) and "art_backdoor_ext" in str(rec.filename):
                logger.warning("%s", rec.message)
                messages.append(str(rec.message))
        messages.extend(handler.messages)


def run_demo_scenario(demo: DemoScenario, scenario: Scenario, defences: Sequence[str],
                      defence_kwargs: Optional[Dict[str, Dict[str, Any]]] = None) -> ScenarioResult:
    """Train the scenario's model and run each defence on it, keeping each defence's warnings; an error is a row."""
    start = time.perf_counter()
    ctx = prepare_scenario(scenario)
    rows: List[DefenceResult] = []
    for name in defences:
        kwargs = (defence_kwargs or {}).get(name)
        with capture_warnings() as messages:
            try:
                row = run_defences(ctx, [name], {name: kwargs} if kwargs else None)[0]
            except Exception as err:  # pylint: disable=broad-except  # one failing row must not hide the others
                logger.exception("Defence %s failed on %s.", name, scenario.name)
                row = DefenceResult(name, None, None, notes=f"error: {type(err).__name__}: {err}",
                                    extra={"error": True})
        row.extra["warnings"] = list(dict.fromkeys(messages))
        rows.append(row)
        logger.info("%s on %s: %.1fs.", name, demo.key, row.seconds)
    result = ScenarioResult(scenario, ctx.clean_accuracy, ctx.asr, ctx.train_seconds, rows)
    for row in rows:
        verdict, caveats = judge(row, result, demo.kind)
        row.extra.update(verdict=verdict, caveats=caveats)
    logger.info("Scenario %s done in %.1fs.", demo.key, time.perf_counter() - start)
    return result


# ------------------------------------------------------------------------------------------------------ verdicts
def _nan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _rates(row: DefenceResult) -> str:
    return f"({row.tpr:.2f}/{row.fpr:.2f})"


def judge(row: DefenceResult, result: ScenarioResult, kind: str) -> Tuple[str, List[str]]:
    """
    The summary cell of one (scenario, defence) and the caveats that make its bare numbers misleading: the defence's
    own warnings, report fields (an unreliable cleansing, a dismissed class, a wrong class), clean images removed, and
    a threat model that excludes the scenario.
    """
    report = row.report or {}
    poisoned = result.scenario.poisoned
    target = result.scenario.target
    caveats: List[str] = []
    if row.extra.get("error"):
        return "error", [row.notes]
    if get_defence(row.defence).kind == "transformer":
        if poisoned:
            before, after = result.asr, row.asr
            word = "removed" if after <= REMOVED_ASR else "reduced" if after < before - 0.1 else "missed"
            cell = f"{word} (ASR {before:.2f}->{after:.2f})"
        else:
            cell = f"ok (acc {result.clean_accuracy:.2f}->{row.clean_accuracy:.2f})"
        if result.clean_accuracy - row.clean_accuracy > 0.05:
            caveats.append(f"clean accuracy fell from {result.clean_accuracy:.3f} to {row.clean_accuracy:.3f}")
    elif row.defence in PER_IMAGE_FILTERS or row.detected is None:
        if poisoned:
            word = ("caught" if row.tpr >= CAUGHT_TPR and row.fpr <= CAUGHT_FPR else
                    "partial" if row.tpr >= PARTIAL_TPR else "missed")
            cell = f"{word} {_rates(row)}"
        else:
            word = "ok" if row.fpr <= CAUGHT_FPR else "false alarm"
            cell = f"{word} (FPR {row.fpr:.2f})"
    elif poisoned:
        if not row.detected:
            cell = "missed"
        elif row.target_class == target:
            cell = f"caught {target} {_rates(row)}"
            if row.tpr < PARTIAL_TPR:
                caveats.append(f"names class {target} but its filter catches only {row.tpr:.0%} of the poison")
        else:
            cell = f"wrong class {row.target_class}"
            caveats.append(f"reports a backdoor into class {row.target_class}; the attack's target is {target}")
    else:
        cell = "ok" if not row.detected else f"false alarm ({row.target_class})"
    costly = []
    if not _nan(row.fpr_target) and row.fpr_target > COSTLY_FPR:
        costly.append(f"{row.fpr_target:.0%} of the clean images of class {target}")
    if not _nan(row.fpr) and row.fpr > COSTLY_FPR:
        costly.append(f"{row.fpr:.0%} of all clean training images")
    if costly:
        caveats.append("removes " + " and ".join(costly))
    if report.get("cleansing_reliable") is False and not any("cleansing unreliable" in w
                                                            for w in row.extra.get("warnings", [])):
        caveats.append(f"cleansing unreliable: {report.get('cleansing_notes', '')}")
    dismissed = report.get("dismissed_classes") or []
    if dismissed and not row.detected:
        ratios = report.get("norm_ratios") or {}
        what = ", ".join(f"{c} (pattern {ratios[c]:.2f} of its source's median)" if c in ratios else str(c)
                         for c in dismissed)
        caveats.append(f"the Gamma test named class {what}, dismissed by the effect-size rule (max_norm_ratio="
                       f"{report.get('max_norm_ratio')}): not a small additive pattern")
    if "ART used layer" in (row.notes or ""):
        caveats.append(row.notes)
    caveats.extend(f"warned: {w}" for w in row.extra.get("warnings", []))
    if row.defence in THREAT_MODELS and kind != "clean" and kind not in THREAT_MODELS[row.defence][1]:
        cell += "°"
    return cell, caveats


# ------------------------------------------------------------------------------------------------------ summary
def format_summary(results: Sequence[ScenarioResult], demos: Sequence[DemoScenario], width: int = 118) -> str:
    """The one-screen matrix (a row per defence, a column per scenario), its legend and its numbered caveats."""
    defences: List[str] = []
    for res in results:
        defences += [r.defence for r in res.rows if r.defence not in defences]
    notes: List[str] = []
    grid: Dict[Tuple[str, int], str] = {}
    for j, res in enumerate(results):
        for row in res.rows:
            cell = row.extra.get("verdict") or "?"
            for caveat in row.extra.get("caveats", []):
                text = f"{row.defence} on {demos[j].key}: {caveat}"
                if text not in notes:
                    notes.append(text)
                cell += f"[{notes.index(text) + 1}]" if f"[{notes.index(text) + 1}]" not in cell else ""
            grid[row.defence, j] = cell
    heads = [[d.title, d.subtitle,
              f"acc {r.clean_accuracy:.2f}" + ("" if not r.scenario.poisoned else f" ASR {r.asr:.2f}")]
             for d, r in zip(demos, results)]
    labels = {d: d + (" (ART)" if d in ART_DEFENCES else "") for d in defences}
    first = max([len(v) for v in labels.values()] + [8]) + 2
    cols = [max([len(h) for h in heads[j]] + [len(grid.get((d, j), "-")) for d in defences]) + 2
            for j in range(len(results))]
    lines = []
    for i in range(3):
        lines.append(("" if i else "defence").ljust(first) + "".join(h[i].ljust(c) for h, c in zip(heads, cols)))
    lines.append("-" * (first + sum(cols)))
    for d in defences:
        lines.append(labels[d].ljust(first) + "".join(grid.get((d, j), "-").ljust(c) for j, c in enumerate(cols)))
    models: Dict[str, List[str]] = {}
    for d in defences:
        if d in THREAT_MODELS:
            models.setdefault(THREAT_MODELS[d][0], []).append(d)
    threat = "; ".join(f"{', '.join(names)} = {what}" for what, names in models.items())
    legend = [
        f"caught t (TPR/FPR): named the target class t; TPR = share of the poison it removes, FPR = share of the clean "
        f"images it removes. missed: no detection. wrong class c: detected a backdoor into another class. ok / false "
        f"alarm (c): on the clean model. SS and STRIP name no class: caught = TPR >= {CAUGHT_TPR}, "
        f"FPR <= {CAUGHT_FPR}; partial = TPR >= {PARTIAL_TPR}. Fine-pruning: ASR before->after, removed = ASR <= "
        f"{REMOVED_ASR}. "
        f"ss runs ART's default (expected_pp_poison=0.33); ss-oracle is told the true poison share of class t "
        f"(oracle knowledge no defender has).",
        f"°: outside the defence's stated threat model ({threat})." if threat else "",
        "Rows: " + "; ".join(ROW_NOTES[d] for d in defences if d in ROW_NOTES) + "."
        if any(d in ROW_NOTES for d in defences) else "",
        "[n]: a caveat below (the defence's own warnings and what its report says)." if notes else "",
    ]
    lines.append("")
    for text in filter(None, legend):
        lines += textwrap.wrap(text, width)
    for i, text in enumerate(notes, 1):
        lines += textwrap.wrap(" ".join(text.split()), width, initial_indent=f"[{i}] ", subsequent_indent="    ",
                               max_lines=2, placeholder=" ...")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ main
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS),
                        help="threat scenarios to run (default: all)")
    parser.add_argument("--defences", nargs="+", default=DEFAULT_DEFENCES,
                        help=f"registered defence names (default: {' '.join(DEFAULT_DEFENCES)})")
    parser.add_argument("--fraction", type=float, default=0.05, help="fraction poisoned by the visible patch")
    parser.add_argument("--n-per-source", type=int, default=50, help="poisoned images per source class (3SC)")
    parser.add_argument("--target", type=int, default=7)
    parser.add_argument("--framework", default="pytorch", choices=["pytorch", "keras"])
    parser.add_argument("--width", default="compact", choices=["compact", "wide"])
    parser.add_argument("--robust", action="store_true", help="L2 PGD adversarial training")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/demo")
    parser.add_argument("--aegis", action="store_true",
                        help="also train an L2-robust model on the visible-patch data and run AEGIS on it")
    parser.add_argument("--render", metavar="JSON",
                        help="print the summary of a run saved earlier (<out>.json) instead of running anything")
    args = parser.parse_args(argv)
    if args.render:
        results = load_results(args.render)
        print(format_summary(results, [demo_of(r.scenario) for r in results]))
        return

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from art_backdoor_ext.estimators import load_torch_before_tensorflow

    load_torch_before_tensorflow()
    for name in args.defences:
        get_defence(name)  # unknown names fail before any training
    start = time.perf_counter()
    demos = [SCENARIOS[k] for k in dict.fromkeys(args.scenarios)]
    results, shown = [], []
    for demo in demos:
        logger.info("Scenario %s (%s, %s).", demo.key, demo.title, demo.subtitle)
        kwargs = {k: v for k, v in DEFAULT_KWARGS.items() if k in args.defences}
        results.append(run_demo_scenario(demo, build_scenario(demo, args), args.defences, kwargs))
        shown.append(demo)
    if args.aegis:
        base = build_scenario(SCENARIOS["badnets"], args)
        robust = dataclasses.replace(base, robust=True, nb_epochs=5, robust_kwargs={"max_iter": 5})
        demo = AEGIS_COLUMN
        results.append(run_demo_scenario(demo, robust, ["aegis"],
                                         {"aegis": {"nb_seeds": 100, "max_train_per_class": 200}}))
        shown.append(demo)
    total = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    load = os.getloadavg()[0]

    summary = format_summary(results, shown)
    header = (f"make demo: mnist-5k, {args.width} {args.framework} CNN{' (robust)' if args.robust else ''}, "
              f"{args.epochs} epochs, seed {args.seed}, target class {args.target}; {total:.0f}s in all "
              f"({usage.ru_utime + usage.ru_stime:.0f}s CPU; load average {load:.1f} on {os.cpu_count()} CPUs)")
    save_results(results, args.out)
    with open(args.out + ".md", encoding="utf-8") as f:
        table = f.read()
    with open(args.out + ".md", "w", encoding="utf-8") as f:
        f.write(f"# {header}\n\n```\n{summary}\n```\n\n## Full table\n\n{table}\n")
        f.write("## Verdicts, notes, warnings and caveats\n\n"
                "| scenario | defence | verdict | notes | warnings and caveats |\n|---|---|---|---|---|\n")
        for res in results:
            for row in res.rows:
                cav = "; ".join(row.extra.get("caveats", [])).replace("|", "/")
                f.write(f"| {res.scenario.name} | {row.defence} | {row.extra.get('verdict')} | "
                        f"{(row.notes or '').replace('|', '/')} | {cav} |\n")
    print(f"\n{header}\n")
    print(summary)
    print(f"\nFull table: {args.out}.md / .json")


if __name__ == "__main__":
    main()
