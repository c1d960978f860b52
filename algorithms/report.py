"""What a finished run says: the warning when its synthetic data is at chance, its privacy
line (epsilon per record; the patients and their group bound) and its summary."""

from __future__ import annotations

from pathlib import Path

from utils.results import read_metrics


def chance_warning(private: bool, fidelity: dict | None) -> str | None:
    """A warning when a private run's synthetic data is worth nothing for the task, naming
    what is at chance: the clients' heads on their own synthetic data (against each client's
    majority class), the global model's synthetic data (against 1/C), or both. Only when both
    are does the run share nothing of use; the per-client figure alone is often at chance on
    small clients while the released global model carries information."""
    if not private or not fidelity or not fidelity.get("synthetic_at_chance"):
        return None
    glob = fidelity.get("global_synthetic") or {}
    client_at_chance = fidelity.get("synthetic_client_at_chance", True)
    global_at_chance = bool(glob.get("at_chance", True))
    per_client = (
        f"synthetic-only accuracy {fidelity['synthetic_acc_mean']:.3f} per client (majority-class "
        f"chance {fidelity['synthetic_acc_client_chance']:.3f})"
    )
    global_ = (
        f"{glob.get('acc', float('nan')):.3f} for the global model "
        f"(chance 1/C = {glob.get('chance', float('nan')):.3f})"
    )
    if client_at_chance and global_at_chance:
        return (
            f"the synthetic data is at chance: {per_client}, {global_}; what this run shares "
            "carries no information about the task"
        )
    if client_at_chance:
        return (
            f"each client's head on its own synthetic data is at chance ({per_client}), but the "
            f"global model's synthetic data is not ({global_}): the released model carries "
            "information about the task; the clients' own synthetic sets are too small or too "
            "skewed to show it"
        )
    return (
        f"the global model's synthetic data is at chance ({global_}), although each client's "
        f"head on its own synthetic data is not ({per_client})"
    )


def privacy_line(privacy: dict | None) -> str | None:
    """What a private run's epsilon is per: per record, with the data's patients (number,
    records per patient median/max) and the group bound for the largest patient when it has
    patient ids. None for a run without DP."""
    if not privacy or not privacy.get("enabled"):
        return None
    eps = privacy["epsilon_max"]
    patients = privacy.get("patients")
    if not patients:
        return (
            f"privacy: epsilon {eps:.4g} per {privacy.get('unit') or 'record'} (delta "
            f"{privacy['delta']:g}); no patient ids: each record is its own patient"
        )
    facts = (
        f"{patients['n_patients']} patients, records per patient median "
        f"{patients['records_per_patient_median']:g} / max {patients['records_per_patient_max']}"
    )
    if privacy.get("unit") == "patient":
        return f"privacy: epsilon {eps:.4g} per patient (delta {privacy['delta']:g}); {facts}"
    group = privacy["group_privacy"]
    return (
        f"privacy: epsilon {eps:.4g} per record (delta {privacy['delta']:g}); {facts}"
        f"; for the largest patient (k = {group['k']}): epsilon {group['epsilon']:.4g}, "
        f"delta {group['delta']:.3g}"
    )


def summary_line(run_dir: Path) -> str:
    """A finished run's headline numbers, its privacy line (a private run) and where its files
    are."""
    m = read_metrics(run_dir)
    s = m["summary"]
    lam = "" if m["lambda"] is None else f"  lambda {m['lambda']:.1f}"
    privacy = privacy_line(m.get("privacy"))
    return (
        f"{m['method']}: test acc {s['test_acc_mean']:.4f} +- {s['test_acc_std']:.4f} "
        f"(balanced {s['test_balanced_acc_mean']:.4f}, F1 macro {s['test_f1_macro_mean']:.4f})"
        f"{lam}  [{m['cost']['wall_seconds']:.1f} s]\n"
        + (f"{privacy}\n" if privacy else "")
        + f"results: {run_dir}"
    )
