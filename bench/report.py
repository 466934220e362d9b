"""Aggregate benchmark runs into report.json, a markdown table and plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import beta as beta_distribution

METHODS = ("nearwatch", "raw_knn", "iforest")


def fpr_lower_bound(false_positives: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson lower bound of a binomial rate (0 when nothing was seen).

    >>> fpr_lower_bound(0, 100), round(fpr_lower_bound(5, 100), 4)
    (0.0, 0.0199)
    """
    if false_positives == 0:
        return 0.0
    return float(beta_distribution.ppf(1 - confidence, false_positives, n - false_positives + 1))


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def summarise_dataset(runs: list[dict[str, Any]], alpha: float) -> dict[str, Any]:
    """Per-dataset summary over seeds; calibration pooled over the certified seeds."""
    summary: dict[str, Any] = {
        method: {
            metric: _mean_std([r[method][metric] for r in runs]) for metric in ("auroc", "auprc")
        }
        for method in METHODS
    }
    summary["train_s"] = _mean_std([r["nearwatch"]["train_s"] for r in runs])
    summary["score_s"] = _mean_std([r["nearwatch"]["score_s"] for r in runs])
    summary["n_labelled"] = runs[0]["nearwatch"]["n_labelled"]
    summary["duplicate_factor"] = float(np.mean([r["nearwatch"].get("duplicate_factor", 1.0)
                                                 for r in runs]))
    summary["calibration_index"] = runs[0]["nearwatch"].get("calibration_index")
    calibration = pooled_calibration([r["nearwatch"] for r in runs], alpha)
    summary["records_per_s"] = _mean_std([r["nearwatch"]["records_per_s"] for r in runs])
    summary["peak_mb"] = _peak_mb([r["nearwatch"] for r in runs])
    for peer in (key for key in runs[0] if key.startswith("pyod_")):
        summary[peer] = {metric: _mean_std([r[peer][metric] for r in runs])
                         for metric in ("auroc", "auprc", "fit_s", "records_per_s")}
        summary[peer]["peak_mb"] = _peak_mb([r[peer] for r in runs])
    if "nearwatch_exact" in runs[0]:
        exact = [r["nearwatch_exact"] for r in runs]
        summary["nearwatch_exact"] = {
            metric: _mean_std([r[metric] for r in exact]) for metric in ("auroc", "auprc")
        }
        summary["nearwatch_exact"]["calibration"] = pooled_calibration(exact, alpha)
    summary["calibration"] = calibration
    return summary


def _peak_mb(runs: list[dict[str, Any]]) -> float | None:
    """Largest peak memory (MB above the loaded data) over the seeds; None where unmeasured."""
    peaks = [r.get("peak_mb") for r in runs]
    return None if any(p is None for p in peaks) else float(max(peaks))


def pooled_calibration(runs: list[dict[str, Any]], alpha: float) -> dict[str, Any]:
    """Realised FPR pooled over the certified runs of one method, with its 95 % lower bound."""
    certified = [r for r in runs if r["certified"]]
    calibration: dict[str, Any] = {"alpha": alpha, "certified_seeds": len(certified)}
    if certified:
        false_positives = sum(r["false_positives"] for r in certified)
        n = sum(r["n_test_normal"] for r in certified)
        calibration.update(
            false_positives=false_positives,
            n_test_normal=n,
            realised_fpr=false_positives / n,
            fpr_lower_bound_95=fpr_lower_bound(false_positives, n),
            fpr_bound=float(np.mean([r["fpr_bound"] for r in certified])),
        )
        calibration["holds"] = calibration["fpr_lower_bound_95"] <= alpha
    else:
        calibration["not_certifiable"] = (
            f"needs >= {runs[0]['training_normals_needed']} training normals "
            f"({runs[0]['calibration_records_needed']} calibration records); "
            f"has {runs[0]['n_train']}"
        )
    return calibration


PEER_CAP_S = 600.0  # a peer slower than this on one dataset would be reported as over the cap


def peers_table(report: dict[str, Any]) -> str:
    """The Detector beside PyOD's detectors on the same splits: AUROC, fit seconds, peak memory
    of fit and scoring (MB above the loaded data) and scoring rate."""
    names = [key for key in next(iter(report["datasets"].values())) if key.startswith("pyod_")]
    header = " | ".join(f"{label} AUROC | {label} fit s | {label} peak MB | {label} rec/s"
                        for label in ["nearwatch"] + [name[5:] for name in names])
    lines = [f"| dataset | {header} |", "|---|" + "---|" * (4 + 4 * len(names))]
    means: dict[str, list[float]] = {"nearwatch": [], **{name: [] for name in names}}
    for dataset, d in report["datasets"].items():
        cells = _peer_cells(d["nearwatch"]["auroc"]["mean"], d["train_s"]["mean"],
                            d.get("peak_mb"), d["records_per_s"]["mean"])
        means["nearwatch"].append(d["nearwatch"]["auroc"]["mean"])
        for name in names:
            cells += _peer_cells(d[name]["auroc"]["mean"], d[name]["fit_s"]["mean"],
                                 d[name].get("peak_mb"), d[name]["records_per_s"]["mean"])
            means[name].append(d[name]["auroc"]["mean"])
        lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
    averages = {name: float(np.mean(values)) for name, values in means.items()}
    lines.append("| **mean** | **" + f"{averages['nearwatch']:.2f}** | | | | " + " | ".join(
        f"{averages[name]:.2f} | | | " for name in names) + "|")
    best = max(names, key=lambda name: averages[name]) if names else None
    summary = "" if best is None else (
        f"\nBest peer: {best[5:]} ({averages[best]:.2f}); nearwatch is "
        f"{averages['nearwatch'] - averages[best]:+.2f} points from it.\n")
    longest = {name: max(r[name]["fit_s"] + r[name]["score_s"]
                         for runs in report["runs"].values() for r in runs) for name in names}
    if longest:
        over = sorted(name[5:] for name, seconds in longest.items() if seconds > PEER_CAP_S)
        summary += (f"\nTime cap per peer run (fit + score of one dataset and seed): "
                    f"{PEER_CAP_S:.0f} s; longest runs: " + ", ".join(
                        f"{name[5:]} {seconds:.1f} s" for name, seconds in longest.items())
                    + (f"; over the cap: {', '.join(over)}" if over else "; none over it")
                    + ".\n")
    return "\n".join(lines) + "\n" + summary + scoring_time_summary(report, names)


def _peer_cells(auroc: float, fit_s: float, peak_mb: float | None, rate: float) -> list[str]:
    peak = "–" if peak_mb is None else f"{peak_mb:,.0f}"
    return [f"{auroc:.2f}", f"{fit_s:.1f}", peak, f"{rate:,.0f}"]


def scoring_time_summary(report: dict[str, Any], peers: list[str]) -> str:
    """Seconds to score every test record of every dataset and seed, nearwatch against each
    peer, and on how many datasets nearwatch scored faster: a total alone would hide a peer
    that wins on the small or low-dimensional sets."""
    runs = [r for dataset_runs in report["runs"].values() for r in dataset_runs]
    if not peers or not runs:
        return ""
    ours = sum(r["nearwatch"]["score_s"] for r in runs)
    parts = []
    for name in peers:
        theirs = sum(r[name]["score_s"] for r in runs)
        faster = sum(d["records_per_s"]["mean"] > d[name]["records_per_s"]["mean"]
                     for d in report["datasets"].values())
        parts.append(f"{name[5:]} {theirs:.1f} s ({theirs / max(ours, 1e-9):.2f}× nearwatch's "
                     f"time; nearwatch faster on {faster} of {len(report['datasets'])} datasets)")
    return (f"\nScoring time over all test records: nearwatch {ours:.1f} s; "
            + "; ".join(parts) + ".\n")


def exact_table(report: dict[str, Any]) -> str:
    """Default Detector beside the same Detector with an exact index, on the same splits."""
    lines = [
        "| dataset | duplicate factor | calibration index | AUROC default | AUROC exact "
        "| Δ AUROC | AUPRC default | AUPRC exact | FPR default (95% LB) | FPR exact (95% LB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def fpr(c: dict[str, Any]) -> str:
        if not c["certified_seeds"]:
            return "not certifiable"
        return f"{c['realised_fpr']:.4f} ({c['fpr_lower_bound_95']:.4f})"

    for name, d in report["datasets"].items():
        default, exact = d["nearwatch"], d["nearwatch_exact"]
        lines.append(
            f"| {name} | {d['duplicate_factor']:.2f} | {d['calibration_index']} "
            f"| {default['auroc']['mean']:.2f} | {exact['auroc']['mean']:.2f} "
            f"| {default['auroc']['mean'] - exact['auroc']['mean']:+.2f} "
            f"| {default['auprc']['mean']:.2f} | {exact['auprc']['mean']:.2f} "
            f"| {fpr(d['calibration'])} | {fpr(exact['calibration'])} |"
        )
    return "\n".join(lines) + "\n"


def overall(datasets: dict[str, dict[str, Any]], alpha: float) -> dict[str, Any]:
    """Averages over datasets and the checks of the quality goals (issue 10)."""
    mean_auroc = {m: float(np.mean([d[m]["auroc"]["mean"] for d in datasets.values()]))
                  for m in METHODS}
    mean_auprc = {m: float(np.mean([d[m]["auprc"]["mean"] for d in datasets.values()]))
                  for m in METHODS}
    below_knn = {
        name: round(d["raw_knn"]["auroc"]["mean"] - d["nearwatch"]["auroc"]["mean"], 2)
        for name, d in datasets.items()
        if d["raw_knn"]["auroc"]["mean"] - d["nearwatch"]["auroc"]["mean"] > 2.0
    }
    calibrated = [
        d["calibration"] for d in datasets.values() if d["calibration"]["certified_seeds"]
    ]
    false_positives = sum(c["false_positives"] for c in calibrated)
    n = sum(c["n_test_normal"] for c in calibrated)
    pooled_fpr = false_positives / n if n else float("nan")
    peers = sorted({key for d in datasets.values() for key in d if key.startswith("pyod_")})
    peer_means = {name: float(np.mean([d[name]["auroc"]["mean"] for d in datasets.values()]))
                  for name in peers if all(name in d for d in datasets.values())}
    best_peer = max(peer_means, key=lambda name: peer_means[name]) if peer_means else None
    margin = mean_auroc["nearwatch"] - mean_auroc["raw_knn"]
    return {
        "mean_auroc": mean_auroc,
        "mean_auprc": mean_auprc,
        "pooled_realised_fpr": pooled_fpr,
        "checks": {
            f"mean AUROC >= raw kNN + 2 (margin {margin:+.2f})": margin >= 2.0,
            **({} if best_peer is None else {
                f"mean AUROC >= best PyOD peer + 1 ({best_peer[5:]} "
                f"{peer_means[best_peer]:.2f}, margin "
                f"{mean_auroc['nearwatch'] - peer_means[best_peer]:+.2f})":
                    mean_auroc["nearwatch"] - peer_means[best_peer] >= 1.0}),
            "no dataset > 2 points below raw kNN": not below_knn,
            "datasets > 2 points below raw kNN": below_knn,
            f"pooled realised FPR <= alpha={alpha}": pooled_fpr <= alpha,
            f"pooled realised FPR >= alpha/2 ({pooled_fpr / alpha:.2f} alpha)":
                pooled_fpr >= alpha / 2,
            "per-dataset 95% lower bound of FPR <= alpha": all(c["holds"] for c in calibrated),
            "not certifiable": [name for name, d in datasets.items()
                                if not d["calibration"]["certified_seeds"]],
        },
    }


def _pm(stat: dict[str, float]) -> str:
    return f"{stat['mean']:.2f} ± {stat['std']:.2f}"


def markdown_table(report: dict[str, Any]) -> str:
    alpha = report["config"]["alpha"]
    lines = [
        "| dataset | nearwatch AUROC | raw kNN AUROC | iForest AUROC | nearwatch AUPRC "
        f"| raw kNN AUPRC | realised FPR (α={alpha}) | 95% lower bound | certified bound "
        "| train s | score s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, d in report["datasets"].items():
        c = d["calibration"]
        if c["certified_seeds"]:
            fpr = f"{c['realised_fpr']:.4f} ({c['false_positives']}/{c['n_test_normal']})"
            bounds = f"{c['fpr_lower_bound_95']:.4f} | {c['fpr_bound']:.4f}"
        else:
            fpr, bounds = f"not certifiable: {c['not_certifiable']}", "– | –"
        lines.append(
            f"| {name} | {_pm(d['nearwatch']['auroc'])} | {_pm(d['raw_knn']['auroc'])} "
            f"| {_pm(d['iforest']['auroc'])} | {_pm(d['nearwatch']['auprc'])} "
            f"| {_pm(d['raw_knn']['auprc'])} | {fpr} | {bounds} "
            f"| {d['train_s']['mean']:.2f} | {d['score_s']['mean']:.3f} |"
        )
    o = report["overall"]
    lines.append(
        f"| **mean** | **{o['mean_auroc']['nearwatch']:.2f}** | {o['mean_auroc']['raw_knn']:.2f} "
        f"| {o['mean_auroc']['iforest']:.2f} | {o['mean_auprc']['nearwatch']:.2f} "
        f"| {o['mean_auprc']['raw_knn']:.2f} | pooled {o['pooled_realised_fpr']:.4f} | | | | |"
    )
    checks = "\n".join(f"- {k}: {v}" for k, v in o["checks"].items())
    table = "\n".join(lines) + "\n\nChecks:\n" + checks + "\n"
    if report["config"].get("exact"):
        table += "\nDefault index vs exact (flat) index, same splits:\n\n" + exact_table(report)
    if report["config"].get("peers"):
        table += "\nPyOD peers on the same splits (defaults; records/s while scoring):\n\n"
        table += peers_table(report)
    return table


def write_plots(report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["datasets"])
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(8, 0.7 * len(names)), 4.5))
    for i, method in enumerate(METHODS):
        means = [report["datasets"][n][method]["auroc"]["mean"] for n in names]
        stds = [report["datasets"][n][method]["auroc"]["std"] for n in names]
        ax.bar(x + (i - 1) * 0.27, means, 0.27, yerr=stds, label=method, capsize=2)
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylim(40, 101)
    ax.set_ylabel("AUROC (%)")
    ax.set_title("AUROC per dataset (mean ± std over seeds)")
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(out / "auroc.png", dpi=120)
    plt.close(fig)

    alpha = report["config"]["alpha"]
    certified = [n for n in names if report["datasets"][n]["calibration"]["certified_seeds"]]
    fig, ax = plt.subplots(figsize=(max(8, 0.7 * len(certified)), 4.5))
    realised = [report["datasets"][n]["calibration"]["realised_fpr"] for n in certified]
    lower = [report["datasets"][n]["calibration"]["fpr_lower_bound_95"] for n in certified]
    ax.bar(certified, realised, color="tab:blue", label="realised FPR (pooled over seeds)")
    ax.scatter(certified, lower, color="black", marker="_", s=200, label="95% lower bound")
    ax.axhline(alpha, color="tab:red", linestyle="--", label=f"target α = {alpha}")
    ax.set_ylabel("false-positive rate on test normals")
    ax.set_title("Calibration: realised vs target FPR")
    ax.tick_params(axis="x", rotation=45)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "calibration.png", dpi=120)
    plt.close(fig)


def write_report(report: dict[str, Any], out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    table = markdown_table(report)
    (out / "report.md").write_text(f"# nearwatch one-class benchmark\n\n{table}")
    write_plots(report, out)
    return table
