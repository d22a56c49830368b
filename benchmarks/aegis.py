"""
AEGIS benchmark: does AEGIS find backdoors in adversarially robust models, without flagging clean ones, and where
does it stop working?

Default mode (issue 14; writes ``benchmarks/results/aegis.{md,json}`` and ``aegis_boundary.png``): the grids
``benchmarks/grids/aegis_validation.yaml`` (robust compact CNNs, L2 PGD eps 1.0, 7 steps, 8 epochs; clean, distributed
5% and localised 5% backdoors towards class 7; ``--models`` training seeds) and the boundary grids ``aegis_boundary_*``
/ ``aegis_short*`` (seed 0: lower poisoning rates, other training radii, shorter training), each run through
:func:`art_backdoor_ext.grid.run_grid` (models and results cached under ``--cache``, an interrupted run resumes,
``--backend ray`` spreads it). AEGIS runs once per model with its defaults; the harness row's details carry every
decision rule's outcome from that one run (the default masking rule, Algorithm 1's literal rule, and the alternatives
in :mod:`art_backdoor_ext.registry.aegis`), the training sub-clusters, and ART's AC and SS (oracle) on the same model.

``--issue6`` (writes ``aegis_issue6.*`` and the cluster plots ``aegis_<model>_class<c>{,_exemplars}.png``): the
earlier issue-6 tables (the paper's Tables 5, 6, 11 and 12 at small scale: localised / distributed 1%, Zhong et al.'s
static and adversarial triggers, eps 0.5) and RQ3 (the RE defence on a standard vs a robust model); this mode keeps
the defence object for its plots and is a plain loop over ``prepare_scenario``.

Usage: python benchmarks/aegis.py [--quick] [--models N] [--no-boundary] [--no-baselines] [--cache DIR]
[--cached-only]; python benchmarks/aegis.py --issue6 [--quick] [--epochs N] [--no-rq3]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time

import numpy as np

from art_backdoor_ext.evaluation import ATTACKS, DEFENCES, Scenario, prepare_scenario
from art_backdoor_ext.grid import load_spec, run_grid
from art_backdoor_ext.registry.aegis import ISOLATED_MAX_TRANSLATED, PATTERN_MIN_COSINE, RULES

TARGET = 7
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def aegis_on(ctx, params):
    from art_backdoor_ext.defences.detector.poison.aegis import AEGISDefence

    start = time.perf_counter()
    defence = AEGISDefence(ctx.classifier, ctx.x_train, ctx.y_train, **params)
    report, is_clean = defence.detect_poison()
    return defence, report, np.asarray(is_clean), time.perf_counter() - start


def save_plots(defence, label, classes):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for c in classes:
        for kind, fn in (("", defence.plot_clusters), ("_exemplars", defence.plot_cluster_exemplars)):
            fig = fn(c)
            path = os.path.join(RESULTS, f"aegis_{label}_class{c}{kind}.png")
            fig.savefig(path, dpi=110)
            plt.close(fig)
            paths.append(path)
    return paths


def issue6_tables(argv=None):
    """The issue-6 tables (paper Tables 5, 6, 11, 12 at small scale, RQ3); writes results/aegis_issue6.*."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--issue6", action="store_true")
    parser.add_argument("--quick", action="store_true", help="localised + clean models only, 100 seeds")
    parser.add_argument("--epochs", type=int, default=None, help="robust training epochs")
    parser.add_argument("--robust-steps", type=int, default=5, help="PGD steps of robust training")
    parser.add_argument("--invisible-fraction", type=float, default=0.1)
    parser.add_argument("--no-rq3", action="store_true")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    os.makedirs(RESULTS, exist_ok=True)

    epochs = args.epochs or 5
    robust = dict(nb_epochs=epochs, robust=True, robust_kwargs={"max_iter": args.robust_steps})
    params = dict(nb_seeds=100, max_train_per_class=200) if args.quick else dict(nb_seeds=200)
    models = [("localised", 0.01), ("clean", None)] if args.quick else [
        ("localised", 0.01), ("distributed", 0.01), ("static", args.invisible_fraction),
        ("adversarial", args.invisible_fraction), ("clean", None)]

    cache = {}

    def scenario(sc):
        # the RQ3 robust model is the localised robust model of the main table: train it once
        key = repr(sc)
        if key not in cache:
            cache[key] = prepare_scenario(sc)
        return cache[key]

    rows, plots = [], []
    for attack, fraction in models:
        if attack != "clean" and attack not in ATTACKS:
            rows.append({"model": attack, "error": "attack not registered"})
            continue
        sc = Scenario(attack=None if attack == "clean" else attack, target=TARGET, fraction=fraction, **robust)
        ctx = scenario(sc)
        defence, report, is_clean, seconds = aegis_on(ctx, params)
        target = TARGET if attack != "clean" else None
        fp = [c for c in report["suspected_classes"] if c != target]
        flagged = is_clean == 0
        pc = report["per_class"]
        # the literal rule of Algorithm 1 (every cluster counts) from the same run, and how many poisoned training
        # images of the target class sit in a cluster made mostly of translated images
        all_clusters = {c: pc[c]["nb_clusters_all"] for c in pc}
        suspected_all = [c for c in pc if all_clusters[c] > defence.cluster_threshold]
        poison_with_translated = None
        if target is not None:
            labels = defence.cluster_labels_[target]
            idx = defence.train_indices_[target]
            trans = defence.is_translated_[target]
            major = [lab for lab in np.unique(labels) if trans[labels == lab].mean() > 0.5]
            in_trans = np.isin(labels[: len(idx)], major)
            poison_with_translated = int((in_trans & ctx.is_poison[idx]).sum())
        rows.append({
            "model": attack, "poison_fraction": fraction, "train_seconds": ctx.train_seconds,
            "clean_accuracy": ctx.clean_accuracy, "asr": ctx.asr, "nb_clusters": report["nb_clusters"],
            "detected": report["detected"], "target_class": report["target_class"],
            "target_right": (report["target_class"] == target) if target is not None else None,
            "false_positive_classes": fp, "robustness_flip_rate": report["robustness_flip_rate"],
            "translation_success": report["translation_success"], "aegis_seconds": seconds,
            "flagged_images": int(flagged.sum()), "flagged_poison": int((flagged & ctx.is_poison).sum()),
            "nb_poison": int(ctx.is_poison.sum()), "per_class": report["per_class"],
            "cluster_rule": report["cluster_rule"], "nb_clusters_all": all_clusters,
            "suspected_all_rule": suspected_all, "poison_with_translated": poison_with_translated,
            "seconds_translation": report["seconds_translation"], "seconds_clustering": report["seconds_clustering"],
        })
        plots += save_plots(defence, attack, sorted({TARGET, 0, 1}))
        print(f"{attack}: acc {ctx.clean_accuracy:.3f} ASR {ctx.asr:.3f} clusters {report['nb_clusters']} "
              f"detected {report['detected']} target {report['target_class']} ({seconds:.1f}s)", flush=True)

    rq3 = []
    if not args.no_rq3:
        if "re" not in DEFENCES:
            rq3.append({"error": "RE defence not registered"})
        else:
            for is_robust in (False, True):
                sc = Scenario(attack="localised", target=TARGET, fraction=0.01,
                              **(robust if is_robust else dict(nb_epochs=10)))
                ctx = scenario(sc)
                start = time.perf_counter()
                report, is_clean = DEFENCES["re"][1](ctx)
                is_clean = np.asarray(is_clean)
                rq3.append({"model": "robust" if is_robust else "standard", "clean_accuracy": ctx.clean_accuracy,
                            "asr": ctx.asr, "detected": report.get("detected"),
                            "target_class": report.get("target_class"), "notes": report.get("notes", ""),
                            "tpr": float(np.mean(is_clean[ctx.is_poison] == 0)),
                            "seconds": time.perf_counter() - start})
                print(f"RQ3 RE on {'robust' if is_robust else 'standard'}: {rq3[-1]}", flush=True)

    lines = [f"AEGIS (issue 6) on robust compact CNNs, mnist-5k, target {TARGET}, {epochs} robust epochs "
             f"(L2 PGD eps 0.5, {args.robust_steps} steps); AEGIS params {params} (other parameters: defaults, "
             "cluster_rule 'translated' at the time; now run with the default).", "",
             "Clusters per class: default rule (training clusters count as one, each translated-majority cluster "
             "counts); 'all' = every mean-shift cluster (Algorithm 1 literally), from the same run. Seconds measured "
             "on 2 CPU cores shared with other jobs (inflated).", "",
             "| model | poison | acc | ASR | clusters per class (0-9) | detected | target | target right | FP classes "
             "| 'all' rule: clusters (0-9) | 'all' rule: suspected | poisoned imgs in a translated cluster | flip@1.0 "
             "| train s | AEGIS s (PGD s) |",
             "|" + "---|" * 15]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['error']} |" + " |" * 13)
            continue
        counts = ",".join(str(r["nb_clusters"][c]) for c in sorted(r["nb_clusters"]))
        acounts = ",".join(str(r["nb_clusters_all"][c]) for c in sorted(r["nb_clusters_all"]))
        pw = "-" if r["poison_with_translated"] is None else f"{r['poison_with_translated']}/{r['nb_poison']}"
        lines.append(f"| {r['model']} | {r['poison_fraction'] or 0:.0%} | {r['clean_accuracy']:.3f} | {r['asr']:.3f} "
                     f"| {counts} | {'yes' if r['detected'] else 'no'} | {r['target_class']} | "
                     f"{'-' if r['target_right'] is None else ('yes' if r['target_right'] else 'no')} | "
                     f"{r['false_positive_classes'] or '-'} | {acounts} | {r['suspected_all_rule'] or '-'} | {pw} | "
                     f"{r['robustness_flip_rate']:.2f} | {r['train_seconds']:.0f} | "
                     f"{r['aegis_seconds']:.1f} ({r['seconds_translation']:.0f}) |")
    if rq3:
        lines += ["", "RQ3: RE defence on a standard (10 epochs) vs robust model, localised trigger 1%", "",
                  "| model | acc | ASR | detected | target | TPR | notes | seconds |", "|" + "---|" * 8]
        for r in rq3:
            if "error" in r:
                lines.append(f"| {r['error']} |" + " |" * 7)
                continue
            lines.append(f"| {r['model']} | {r['clean_accuracy']:.3f} | {r['asr']:.3f} | {r['detected']} | "
                         f"{r['target_class']} | {r['tpr']:.3f} | {r['notes']} | {r['seconds']:.1f} |")
    lines += ["", "Plots: " + ", ".join(os.path.relpath(p, os.path.dirname(RESULTS)) for p in plots)]
    table = "\n".join(lines)
    name = "aegis_issue6_quick" if args.quick else "aegis_issue6"
    with open(os.path.join(RESULTS, name + ".md"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    with open(os.path.join(RESULTS, name + ".json"), "w", encoding="utf-8") as f:
        json.dump({"models": rows, "rq3": rq3, "params": params, "epochs": epochs}, f, indent=2, default=str)
    print(table)

# ------------------------------------------------------------------------------------------------ issue 14
ROBUST_KW = {"eps": 1.0, "max_iter": 7}
EPOCHS = 8


GRIDS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "grids")
VALIDATION_SPEC = "aegis_validation.yaml"
BOUNDARY_SPECS = ("aegis_boundary_poison.yaml", "aegis_boundary_eps05.yaml", "aegis_boundary_eps2.yaml",
                  "aegis_short.yaml", "aegis_short_eps1.yaml")
"""The boundary grids, by priority (an interrupted run still has the first ones cached)."""


def group_of(spec_name: str, attack: str) -> str:
    """The report's group of a scenario: validation, poison (rate), eps (radius), epochs or suite (shorter training)."""
    if spec_name == "aegis-validation":
        return "validation"
    if spec_name == "aegis-boundary-poison":
        return "poison"
    if spec_name.startswith("aegis-boundary-eps"):
        return "eps"
    return "epochs" if attack == "distributed" else "suite"


def rows_of(result) -> list:
    """One report row per scenario of a finished AEGIS grid (the aegis row's details, AC and SS beside it)."""
    rows = []
    for _, res in result.scenario_results():
        by_name = {r.defence: r for r in res.rows}
        if "aegis" not in by_name:
            continue
        aegis, sc = by_name["aegis"], res.scenario
        d = aegis.extra
        row = {
            "group": group_of(result.spec.name, sc.attack or "clean"), "attack": sc.attack or "clean",
            "fraction": sc.fraction, "seed": sc.seed, "eps": sc.robust_kwargs.get("eps", 0.5),
            "robust_steps": sc.robust_kwargs.get("max_iter", 7), "epochs": sc.nb_epochs,
            "nb_poison": d["nb_poison"], "clean_accuracy": res.clean_accuracy, "asr": res.asr,
            "train_seconds": res.train_seconds, "aegis_seconds": aegis.seconds,
            **{k: d[k] for k in ("seconds_translation", "rules", "subpopulations", "nb_clusters_all",
                                 "nb_translated_clusters", "nb_train_total", "translation_success")},
        }
        base = {name.replace("-oracle", ""): {"detected": r.detected, "target_class": r.target_class, "tpr": r.tpr,
                                               "fpr": r.fpr, "seconds": r.seconds}
                for name, r in by_name.items() if name in ("ac", "ss-oracle")}  # the table's SS column: oracle
        if len(base) == 2:
            row["baselines"] = base
        rows.append(row)
    return rows


def _cell(v, digits=2):
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def write_report(rows, path_prefix):
    """aegis.md / aegis.json / aegis_boundary.png from the model rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    val = [r for r in rows if r["group"] == "validation"]
    lines = ["# AEGIS decision rules (issue 14)", "",
             f"Robust compact CNNs on mnist-5k (L2 PGD adversarial training, eps {ROBUST_KW['eps']}, "
             f"{ROBUST_KW['max_iter']} steps, {EPOCHS} epochs unless stated), target {TARGET}. AEGIS runs once per "
             "model with its default parameters (never tuned per model; since this run, PGD translations start from the "
             "seed image plus uniform noise in [0, 0.1], `init_noise`); every rule is applied to that one run. "
             "Rules: **masking** (default): training clusters count as one unless masking the translations' "
             "class-specific pixels takes a training sub-cluster out of the class; **translated**: training clusters "
             "count as one, translated clusters each; **all**: every mean-shift cluster (Algorithm 1); "
             f"**isolated**: a training sub-cluster counts when under {ISOLATED_MAX_TRANSLATED:.0%} of its t-SNE "
             f"neighbours are translated images; **pattern**: a training sub-cluster counts when its distinctive "
             f"pattern (positive part of its mean minus the main cluster's) has cosine > {PATTERN_MIN_COSINE} with "
             "what the translations carry (positive part of their mean minus the main cluster's). Under masking, "
             "isolated and pattern the translated images count as one population, whether they form clusters of "
             "their own or share a training cluster. A class is suspected above 2 clusters. TPR/FPR: the `is_clean` marking over all training images (poisoned / clean). "
             "AC (ART, 2-means, relative size 0.35) and SS (ART, oracle poison fraction) on the same models. "
             "Seconds: each defence's own time when its result was computed (the grid cache keeps it), on 2 CPU cores "
             "shared with one other job (inflated). Grids: `benchmarks/grids/aegis_*.yaml`.", ""]

    def summary(rows_, rule):
        clean = [r for r in rows_ if r["attack"] == "clean"]
        bd = [r for r in rows_ if r["attack"] != "clean"]
        fp_models = sum(r["rules"][rule]["detected"] for r in clean)
        fp_classes = sum(len(r["rules"][rule]["false_positive_classes"]) for r in rows_)
        det = sum(r["rules"][rule]["detected"] and r["rules"][rule]["target_right"] for r in bd)
        tpr = np.nanmean([r["rules"][rule]["tpr"] for r in bd]) if bd else float("nan")
        fpr = np.mean([r["rules"][rule]["fpr"] for r in rows_]) if rows_ else float("nan")
        return fp_models, len(clean), det, len(bd), fp_classes, tpr, fpr

    lines += ["## Summary over the validation models", "",
              "| rule | false-positive models (clean) | backdoored detected, right target | false-positive classes "
              "(all models) | mean TPR (backdoored) | mean FPR (all) |", "|---|---|---|---|---|---|"]
    for rule in RULES:
        fpm, nc, det, nb, fpc, tpr, fpr = summary(val, rule)
        lines.append(f"| {rule}{' (default)' if rule == 'masking' else ''} | {fpm}/{nc} | {det}/{nb} | {fpc} | "
                     f"{_cell(tpr, 3)} | {_cell(fpr, 4)} |")
    for base in ("ac", "ss"):
        bd = [r for r in val if r["attack"] != "clean" and "baselines" in r]
        if not bd:
            continue
        lines.append(f"| {base.upper()} (baseline) | "
                     f"{sum(bool(r['baselines'][base]['detected']) for r in val if r['attack'] == 'clean')}/"
                     f"{sum(r['attack'] == 'clean' for r in val)} | "
                     f"{sum(bool(r['baselines'][base]['detected']) and r['baselines'][base]['target_class'] == TARGET for r in bd)}"
                     f"/{len(bd)} | - | {_cell(np.nanmean([r['baselines'][base]['tpr'] for r in bd]), 3)} | "
                     f"{_cell(np.mean([r['baselines'][base]['fpr'] for r in val]), 4)} |")

    def table(rows_):
        out = ["| model | seed | eps | epochs | poisoned | acc | ASR | " + " | ".join(RULES) +
               " | masking TPR/FPR | training sub-clusters (class: train, translated, poisoned, flip/flip main) "
               "| AC TPR/FPR | SS TPR/FPR | AEGIS s |", "|" + "---|" * (13 + len(RULES) - 5 + 4)]
        for r in rows_:
            cells = []
            for rule in RULES:
                o = r["rules"][rule]
                if not o["detected"]:
                    cells.append("-")
                else:
                    fp = o["false_positive_classes"]
                    cells.append(f"{o['target_class']}{' ok' if o['target_right'] else ''}"
                                 f"{' FP ' + str(fp) if fp else ''}")
            m = r["rules"]["masking"]
            subs = "; ".join(f"{c}: {p['nb_train']},{p['nb_translated']},{p['nb_poison']},"
                             f"{p['flip']:.2f}/{p['flip_main']:.2f}" for c, ps in r["subpopulations"].items()
                             for p in ps) or "-"
            b = r.get("baselines", {})
            ac = f"{_cell(b['ac']['tpr'])}/{_cell(b['ac']['fpr'], 3)}" if b else "-"
            ss = f"{_cell(b['ss']['tpr'])}/{_cell(b['ss']['fpr'], 3)}" if b else "-"
            out.append(f"| {r['attack']} | {r['seed']} | {r['eps']} | {r['epochs']}x{r['robust_steps']} | "
                       f"{r['nb_poison']} | {r['clean_accuracy']:.3f} | {_cell(r['asr'], 3)} | " + " | ".join(cells) +
                       f" | {_cell(m['tpr'])}/{_cell(m['fpr'], 4)} | {subs} | {ac} | {ss} | "
                       f"{r['aegis_seconds']:.0f} |")
        return out

    lines += ["", "Cells: the target class found (`ok` when right) and false-positive classes; `-` = nothing "
              "suspected.", "", "## Validation models", ""] + table(val)
    bnd = [r for r in rows if r["group"] != "validation"]
    ref = [r for r in val if r["seed"] == 0]
    lines += ["", "## Operating boundary (seed 0)", ""] + table(sorted(ref + bnd, key=lambda r: (
        r["group"], r["attack"], -(r["nb_poison"]), r["eps"], r["epochs"])))

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for attack, marker in (("distributed", "o"), ("localised", "s")):
        pts = sorted([r for r in ref + bnd if r["attack"] == attack and r["eps"] == ROBUST_KW["eps"]
                      and r["epochs"] == EPOCHS], key=lambda r: r["nb_poison"])
        if pts:
            n = [r["nb_poison"] for r in pts]
            axes[0].plot(n, [float(r["rules"]["masking"]["detected"] and r["rules"]["masking"]["target_right"])
                             for r in pts], marker=marker, label=f"{attack}: detected (target right)")
            axes[0].plot(n, [r["rules"]["masking"]["tpr"] for r in pts], marker=marker, ls="--",
                         label=f"{attack}: is_clean TPR")
    axes[0].set_xscale("log")
    axes[0].set_xticks([20, 40, 100, 200], ["20", "40", "100", "200"])
    axes[0].minorticks_off()
    axes[0].set_xlabel("poisoned training images (mnist-5k)")
    axes[0].set_title(f"vs poisoning (eps {ROBUST_KW['eps']}, {EPOCHS} epochs, seed 0)")
    axes[0].set_ylim(-0.05, 1.05)
    axes[0].legend(fontsize=7)
    pts = sorted([r for r in ref + bnd if r["attack"] == "distributed" and r["fraction"] == 0.05
                  and r["epochs"] == EPOCHS], key=lambda r: r["eps"])
    if pts:
        e = [r["eps"] for r in pts]
        axes[1].plot(e, [float(r["rules"]["masking"]["detected"] and r["rules"]["masking"]["target_right"])
                         for r in pts], marker="o", label="distributed 5%: detected (target right)")
        axes[1].plot(e, [r["rules"]["masking"]["tpr"] for r in pts], marker="o", ls="--", label="is_clean TPR")
        clean = sorted([r for r in ref + bnd if r["attack"] == "clean" and r["epochs"] == EPOCHS],
                       key=lambda r: r["eps"])
        axes[1].plot([r["eps"] for r in clean], [float(r["rules"]["masking"]["detected"]) for r in clean],
                     marker="x", ls=":", label="clean model: flagged")
    axes[1].set_xlabel("L2 radius of adversarial training")
    axes[1].set_title(f"vs robustness ({EPOCHS} epochs, seed 0)")
    axes[1].set_ylim(-0.05, 1.05)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path_prefix + "_boundary.png", dpi=110)
    plt.close(fig)
    lines += ["", f"Plot: results/{os.path.basename(path_prefix)}_boundary.png"]
    with open(path_prefix + ".md", "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    with open(path_prefix + ".json", "w", encoding="utf-8") as f:
        json.dump({"rows": rows, "robust": ROBUST_KW, "epochs": EPOCHS}, f, indent=1)
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=5, help="validation models per kind (clean, distributed, "
                                                                "localised): training seeds 0..N-1")
    parser.add_argument("--quick", action="store_true", help="one model per kind, no boundary, no AC/SS "
                                                             "(writes results/aegis_quick.*)")
    parser.add_argument("--no-boundary", action="store_true")
    parser.add_argument("--no-baselines", action="store_true", help="skip AC/SS")
    parser.add_argument("--cache", default=".grid-cache", help="grid cache (models and results; a run resumes)")
    parser.add_argument("--backend", default="local", choices=["local", "ray"])
    parser.add_argument("--cached-only", action="store_true", help="only the models whose results are cached")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    os.makedirs(RESULTS, exist_ok=True)
    if args.quick:
        args.models, args.no_boundary, args.no_baselines = 1, True, True
    rows = []
    for name in (VALIDATION_SPEC,) + (() if args.no_boundary else BOUNDARY_SPECS):
        spec = load_spec(os.path.join(GRIDS, name)).as_dict()
        if name == VALIDATION_SPEC:
            spec["seeds"] = list(range(args.models))
        if args.no_baselines:
            spec["defences"] = {"aegis": spec["defences"]["aegis"]}
        result = run_grid(spec, cache=args.cache, backend=args.backend, verbose=args.verbose,
                          cached_only=args.cached_only)
        for row in rows_of(result):
            rows.append(row)
            m = row["rules"]["masking"]
            logging.warning("%s %s seed %d eps %s %dx%d poison %d: acc %.3f ASR %s; masking detected %s target %s "
                            "FP %s TPR %s FPR %.4f; AEGIS %.0fs", row["group"], row["attack"], row["seed"],
                            row["eps"], row["epochs"], row["robust_steps"], row["nb_poison"], row["clean_accuracy"],
                            _cell(row["asr"], 3), m["detected"], m["target_class"], m["false_positive_classes"],
                            _cell(m["tpr"]), m["fpr"], row["aegis_seconds"])
    write_report(rows, os.path.join(RESULTS, "aegis_quick" if args.quick else "aegis"))


if __name__ == "__main__":
    import sys

    if "--issue6" in sys.argv:
        issue6_tables()
    else:
        main()
