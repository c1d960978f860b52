"""Empirical privacy audit of a finished dpcvae / dpcgan run: membership inference on canaries.

    python -m algorithms.privacy.audit RUN_DIR [--target_client ID] [--n_canaries K]
        [--canary_records R]

Reruns the run's federated training with its recorded settings and seed, with K canaries
inserted into one target client's training data (members), while K more canaries drawn the same
way stay out (non-members; which half goes in is random). Then it attacks what that client
releases. Every score is "higher = member":

- `decoder_client`: the client's decoder (DP-CGAN: generator) as it sent it in the last round
  (what the server sees). Score of a candidate (x, y): minus its best reconstruction,
  min_j mean_d (x - dec(z_j, y))^2 over `n_latent` prior draws z_j ~ N(0, I).
- `decoder_global`: the same test on the final averaged decoder (what every client receives).
- `synthetic_dcr`: the synthetic data the client generates from the final global decoder (the
  protocol's labels and count): minus the distance to the closest synthetic record of its label.

Canaries (`make_canaries`) are out-of-distribution records, exactly orthogonal to each other in
the models' space and chosen nearly orthogonal to the mean of the real records of their label.
All have one label: by default the target client's rarest class (ties: the federation's rarest),
so that the decoder's output for that label is fitted to the members and to little else. The
paper's loss (MSE averaged over dimensions + beta * B * KL) keeps the decoder close to a
class-conditional mean, so a member shows through its share of that mean: the test is sharp
for the client's own decoder and diluted by averaging in the global one.

Statistics. Each canary is one trial. Over every distinct score t: TPR(t) = #{members >= t} / K,
FPR(t) = #{non-members >= t} / K. An (epsilon, delta)-DP training bounds every test:
TPR <= e^eps FPR + delta and 1 - FPR <= e^eps (1 - TPR) + delta. With one-sided
Clopper-Pearson bounds TPR_lo and FPR_hi at each t,

    eps_lb = max over t of log((TPR_lo - delta) / FPR_hi), log((1 - FPR_hi - delta) / (1 - TPR_lo))

(at least 0) is a lower bound on the epsilon the training satisfies, at the given confidence:
every one-sided interval has level (1 - confidence) / (2 T A) for T thresholds and A attacks
(Bonferroni), so the largest bound of all attacks and thresholds holds at that confidence. The
intervals treat the canaries as independent trials, exact when each canary is trained in its
own run; with all canaries in one run it is the usual approximation of DP auditing (justified for
canaries included at random: Steinke, Nasr & Jagielski, 2023). `eps_lb_ceiling` is what a
perfect attack (TPR 1, FPR 0) would prove with this many canaries: no result can exceed it.

Canary patients (`--canary_records R` > 1): each canary is a patient of R identical records
(a new patient where the data has patient ids), one trial scored by its record. Its epsilon is
the accountant's where the run is private per patient, and otherwise the group bound of R
records, (R eps, R e^((R-1) eps) delta), whose delta the bound then uses (no check where that
delta is >= 1: the run promises nothing for such a patient). R = 1: record canaries, as before.

The bound must never exceed the epsilon the target client spent (its accountant in the audited
training, and the value the run reported): if it does, the accounting has a bug, and the audit
fails (exit status 1) without writing anything. Results go to metrics.json under "audit".
"""
