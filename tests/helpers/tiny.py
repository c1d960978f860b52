"""One shared set of tiny-run flags per method: `TINY[method]` are the flags of a main.py run
that finishes in seconds on a small Gaussian database (`FAST`: its clients and quiet output).
A flag a method does not read is refused, so each entry holds only flags its method reads."""

FAST = ["--n_clients", "3", "--quiet"]
HEAD = ["--local_epochs", "5"]
ROUNDS = ["--n_rounds", "2"]
GEN = [*HEAD, "--n_fedavg_rounds", "2", "--local_epochs_gen", "1", "--gen_batch_size", "128"]
GEN += ["--latent_dim", "4"]
CVAE = ["--hidden_dim", "16"]  # the CGAN's widths are fixed

TINY = {
    "local": HEAD,
    "centralized": HEAD,
    "fedavg": ROUNDS,
    "fedprox": ROUNDS,
    "fedlambda": [*ROUNDS, *HEAD],
    "dpcvae": [*GEN, *CVAE],
    "dpcgan": GEN,
    "fedpft": HEAD,
    "dpfedpft": HEAD,
}
