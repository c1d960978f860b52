"""The DP settings: `DPConfig` (every DP flag) and the accountants, calibrations and noise
sources it accepts."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

from utils.cli import flag, flag_name

ACCOUNTANTS = ("prv", "rdp")
CALIBRATIONS = ("total", "paper")
NOISE_SOURCES = ("seeded", "secure")
# What DP-SGD protects: auto is patient on data with patient ids (for a method whose clients
# support it: dp_client.DPClient.units), record otherwise.
PRIVACY_UNITS = ("auto", "patient", "record")
# The standard deviation of the noise on the released record count (sensitivity 1). Alone it
# would spend epsilon 0.14 at delta 1e-4 (PRV); composed with DP-SGD at epsilon 1 it raises the
# noise multiplier by about 1% (the demo's 250 full-batch steps: 51.25 -> 51.88; paper scale,
# rate 1/7 over 1,750 steps: 19.38 -> 19.53), and it moves a client of 67 records (the demo's
# smallest) by 20 records at one sigma, which only rescales its update and its FedAvg weight.
COUNT_NOISE = 20.0


@dataclass(frozen=True)
class DPConfig:
    """DP-SGD settings. Defaults are the paper's: epsilon 1, delta 1e-4, clipping norm 1.5.

    The accountant defaults to PRV (Gopi et al., 2021; Opacus's default): it computes a
    numerically tight upper bound on epsilon, so the same guarantee needs less noise than the
    looser analytic RDP bound (about 8% less on the paper's workload)."""

    # --dp on/off, or the paper's --enable_dp / --disable_dp (None: on)
    enabled: bool = field(
        default=True,
        metadata=flag(
            "--dp",
            section="dp",
            choices=("on", "off"),
            default=None,  # on (None lets argparse see a clash with the spellings below)
            convert=lambda value: value != "off",
            switches=(
                (
                    "--enable_dp",
                    {
                        "action": "store_const",
                        "const": "on",
                        "help": "the paper's spelling of --dp on. Default: on",
                    },
                ),
                (
                    "--disable_dp",
                    {
                        "action": "store_const",
                        "const": "off",
                        "help": "the paper's spelling of --dp off. Default: off (DP on)",
                    },
                ),
            ),
            help="on: train the generative model with DP-SGD (dpfedpft: noise its release); "
            "off: without DP (an ablation: nothing is private, epsilon is infinite in the "
            "tables). Default: on",
        ),
    )
    epsilon: float = field(
        default=1.0,
        metadata=flag(
            "--epsilon",
            section="dp",
            help="target epsilon of each client over the whole training (dpfedpft: its one "
            "release). Default: {default}",
        ),
    )
    delta: float = field(
        default=1e-4,
        metadata=flag(
            "--delta",
            section="dp",
            help="target delta; should be below 1/n for every client. Default: {default}",
        ),
    )
    # None: no DP-SGD (a one-shot release: nothing is clipped per gradient, nothing accounted
    # step by step)
    max_grad_norm: float | None = field(
        default=1.5,
        metadata=flag(
            "--max_grad_norm",
            section="dpsgd",
            unused=None,
            help="per-sample gradient clipping norm. Default: {default}",
        ),
    )
    accountant: str | None = field(
        default="prv",
        metadata=flag(
            "--accountant",
            section="dpsgd",
            choices=ACCOUNTANTS,
            unused=None,
            help="prv (a numerically tight upper bound, so less noise for the same guarantee) "
            "or rdp (analytic, looser). Default: {default}",
        ),
    )
    calibration: str | None = field(
        default="total",
        metadata=flag(
            "--dp_calibration",
            section="dpsgd",
            choices=CALIBRATIONS,
            unused=None,
            help="total: noise calibrated for every DP step of the run, so the spent epsilon "
            "meets the target; paper: as the paper's code, noise for 20 epochs while training "
            "all rounds (the reported spent epsilon exceeds the target). Default: {default}",
        ),
    )
    # 0 for a one-shot release (it noises its counts itself)
    count_noise: float = field(
        default=COUNT_NOISE,
        metadata=flag(
            "--count_noise",
            section="dpsgd",
            unused=0.0,
            help="standard deviation of the Gaussian noise on each client's released record "
            "count (sensitivity 1), composed with DP-SGD in the same accountant: the noisy count "
            "sets the sampling rate, steps, expected batch size and FedAvg weight, so the "
            "guarantee holds for adding or removing a record end to end. 0 sends the exact "
            f"count (then not covered). Default: {COUNT_NOISE:g}",
        ),
    )
    noise_source: str = field(
        default="seeded",
        metadata=flag(
            "--secure_noise",
            section="dp",
            action="store_true",
            convert=lambda secure: "secure" if secure else "seeded",
            help="draw every client's private randomness (DP noise, Poisson batches, noisy "
            "count, latent and synthetic draws) from a key of 32 bytes of OS entropy instead of "
            "the run seed: results vary from run to run, and knowing the seed no longer "
            "reproduces the noise (Flower sites always do this unless their node config says "
            "noise-source='seeded'). Default: off (seeded: reproducible simulation)",
        ),
    )

    # added after runs were made: utils/results.py hashes it only when it is not "auto"
    privacy_unit: str = field(
        default="auto",
        metadata=flag(
            "--privacy_unit",
            section="dp",
            choices=PRIVACY_UNITS,
            help="what DP protects: patient (DP-SGD: patients Poisson sampled, "
            "each with all its records, each patient's summed gradient clipped, the noisy count "
            "and the sampling rate per patient; dpfedpft: each patient's records weighted to a "
            "total of 1; needs patient ids; dpfedavg, dpcvae, dpcgan and dpfedpft, on both "
            "execution paths) or record (one embedding; on data with patient ids the run "
            "reports the group bound for its largest patient). auto: patient where the data "
            "has patient ids and the method supports it, else record. Default: {default}",
        ),
    )

    # added after runs were made: utils/results.py hashes them only when not at their defaults
    secure_aggregation: bool = field(
        default=False,
        metadata=flag(
            "--secure_aggregation",
            section="dp",
            action="store_true",
            help="distributed DP: each site adds a share of Skellam noise to an integer encoding "
            "of its release and the coordinator sees only the sum (modulo 2^30) of the sites' "
            "shares, so the sum carries the accounted noise once instead of once per site. "
            "dpfedpft (its one release), and dpcvae/dpfedavg with one full-batch DP step per round "
            "(the schedule of the dp preset); every metrics.json privacy line then also says "
            "epsilon_collusion (against a coordinator colluding with every other site). "
            "Default: off",
        ),
    )
    min_honest_sites: int = field(
        default=1,
        metadata=flag(
            "--min_honest_sites",
            section="dp",
            help="with --secure_aggregation, m: the sites guaranteed honest in every sum; each "
            "adds 1/m of the noise's variance, so `epsilon` holds while m honest sites are in "
            "every sum, and a site alone is protected by epsilon_collusion. 1: every site adds "
            "the whole noise (today's guarantee). Default: {default}",
        ),
    )

    def __post_init__(self) -> None:
        """Checks each field alone (no accountant: `check_count_noise` runs one, when a run
        starts)."""
        name = functools.partial(flag_name, self)
        if self.noise_source not in NOISE_SOURCES:
            raise ValueError(
                f"noise source must be one of {NOISE_SOURCES} ({name('noise_source')}), "
                f"got {self.noise_source!r}"
            )
        if self.privacy_unit not in PRIVACY_UNITS:
            raise ValueError(
                f"{name('privacy_unit')} must be one of {PRIVACY_UNITS}, got {self.privacy_unit!r}"
            )
        if self.min_honest_sites < 1:
            raise ValueError(
                f"{name('min_honest_sites')} must be >= 1, got {self.min_honest_sites}"
            )
        if self.min_honest_sites > 1 and not self.secure_aggregation:
            raise ValueError(
                f"{name('min_honest_sites')} {self.min_honest_sites} needs "
                f"{name('secure_aggregation')} (without it every site adds the whole noise)"
            )
        if not self.enabled:
            return
        if not (self.epsilon > 0 and math.isfinite(self.epsilon)):
            raise ValueError(f"{name('epsilon')} must be a positive number, got {self.epsilon}")
        if not 0 < self.delta < 1:
            raise ValueError(f"{name('delta')} must lie in (0, 1), got {self.delta}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"{name('max_grad_norm')} must be > 0, got {self.max_grad_norm}")
        if self.accountant is not None and self.accountant not in ACCOUNTANTS:
            raise ValueError(
                f"{name('accountant')} must be one of {ACCOUNTANTS}, got {self.accountant!r}"
            )
        if self.calibration is not None and self.calibration not in CALIBRATIONS:
            raise ValueError(
                f"{name('calibration')} must be one of {CALIBRATIONS}, got {self.calibration!r}"
            )
        if not (self.count_noise >= 0 and math.isfinite(self.count_noise)):
            raise ValueError(f"{name('count_noise')} must be >= 0, got {self.count_noise}")

    def count_history(self) -> tuple[tuple[float, float, int], ...]:
        """The accountant's entry of the record count's release: a Gaussian mechanism of
        sensitivity 1 is one step of noise multiplier `count_noise` at sampling rate 1."""
        if self.accountant is None:  # a one-shot release noises its counts itself
            return ()
        return ((self.count_noise, 1.0, 1),) if self.count_noise > 0 else ()


def privacy_unit(dp: DPConfig, client: type, has_ids: bool) -> str:
    """The unit a client's DP-SGD protects (`--privacy_unit`): auto is patient where the data
    has patient ids and the client class supports it (its `units`; both execution paths),
    record otherwise. ValueError, naming the flag, for patient where it cannot be."""
    if not dp.enabled or dp.privacy_unit == "record":
        return "record"
    supported = "patient" in getattr(client, "units", ())
    if dp.privacy_unit == "auto":
        return "patient" if has_ids and supported else "record"
    flag = flag_name(dp, "privacy_unit")
    if not has_ids:
        raise ValueError(f"{flag} patient: the database has no patient ids")
    if not supported:
        raise ValueError(f"{flag} patient: {client.__name__} clips per record only")
    return "patient"
