"""What a finished run says: the warnings when its synthetic data is at chance or empty, its
privacy line (epsilon per record; the patients and their group bound) and its summary."""

from __future__ import annotations

from pathlib import Path

from utils.results import read_metrics


def chance_warning(private: bool, fidelity: dict | None) -> str | None:
    """A warning when a private run's synthetic data is worth nothing for the task, naming
    what is: the clients' heads on their own synthetic data (against each client's
    majority-class rate), the global model's synthetic data (against chance, 1/C), or both.
    Only when both are does the run share nothing of use; the per-client figure alone is often
    at the majority rate on small clients while the released global model carries information."""
    if not private or not fidelity:
        return None
    glob = fidelity.get("global_synthetic") or {}
    client_at = fidelity.get("synthetic_client_at_majority")
    global_at = bool(glob.get("at_chance"))
    if not (client_at or global_at):
        return None
    majority = fidelity["synthetic_acc_client_majority"]
    per_client = (
        f"synthetic-only accuracy {fidelity['synthetic_acc_mean']:.3f} per client "
        f"(majority-class rate {majority:.3f})"
    )
    global_ = (
        f"{glob.get('acc', float('nan')):.3f} for the global model "
        f"(chance 1/C = {glob.get('chance', float('nan')):.3f})"
    )
    if client_at and global_at:
        return (
            f"the synthetic data is worth nothing for the task: {per_client}, {global_}; what "
            "this run shares carries no information about the task"
        )
    if client_at:
        return (
            f"each client's head on its own synthetic data is at its majority-class rate "
            f"({per_client}), but the global model's synthetic data is above chance ({global_}): "
            "the released model carries information about the task; the clients' own synthetic "
            "sets are too small or too skewed to show it"
        )
    return (
        f"the global model's synthetic data is at chance ({global_}), although each client's "
        f"head on its own synthetic data is above its majority-class rate ({per_client})"
    )


def empty_synthetic_warning(fidelity: dict | None) -> str | None:
    """A warning when a client's synthetic set (or the global model's) is empty: the released
    model samples none of its classes (DP-FedPFT: every class's noisy count fell under the
    sampling threshold). Its synthetic-only accuracy and fidelity are empty; its other rows
    stand (its mixed rows are its local head's)."""
    if not fidelity:
        return None
    clients = fidelity.get("synthetic_empty") or []
    glob = fidelity.get("global_synthetic") or {}
    if not clients and not glob.get("empty"):
        return None
    what = []
    if clients:
        what.append(
            f"client(s) {', '.join(map(str, clients))} drew no synthetic record (the released "
            "model samples none of their classes)"
        )
    if glob.get("empty"):
        what.append("the released model samples no class (no global synthetic-only accuracy)")
    return (
        f"empty synthetic data: {'; '.join(what)}. DP-FedPFT drops a class whose pooled noisy "
        "count falls under the sampling threshold: sites too small for this epsilon. Their "
        "synthetic-only accuracy and fidelity are marked empty; a client without synthetic data "
        "keeps its local head in every mixed row"
    )


def privacy_line(privacy: dict | None) -> str | None:
    """What a private run's epsilon is per: per record, with the data's patients (number,
    records per patient median/max) and the group bound for the largest patient when it has
    patient ids. None for a run without DP."""
    if not privacy or not privacy.get("enabled"):
        return None
    line = _privacy_line(privacy)
    secure = privacy.get("secure_aggregation")
    if not secure:
        return line
    return (
        f"{line}\nsecure aggregation: that epsilon holds while at least "
        f"{secure['min_honest_sites']} honest sites are in every sum; against a coordinator "
        f"colluding with every other site: epsilon {secure['epsilon_collusion_max']:.4g}"
    )


def _privacy_line(privacy: dict) -> str:
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
