"""One shared set of tiny-run flags per method: `TINY[method]` are the flags of a main.py run
that finishes in seconds on a small Gaussian database (`FAST`: its clients and quiet output).
A flag a method does not read is refused, so each entry holds only flags its method reads.
A test that needs more (rounds, epochs, a batch size) asks `tiny(method, n_rounds=3)`: the
same flags with those values replaced, so that each test states only what it changes."""

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
    "dpfedavg": ROUNDS,
    "dpcvae": [*GEN, *CVAE],
    "dpcgan": GEN,
    "fedpft": HEAD,
    "dpfedpft": HEAD,
}


def with_flags(flags: list[str], **changes: object) -> list[str]:
    """A copy of `flags` (flag, value pairs) with each change in place of that flag's value
    (`n_rounds=3`: `--n_rounds 3`); a flag that `flags` lacks is appended."""
    assert len(flags) % 2 == 0, flags
    out = list(flags)
    for name, value in changes.items():
        flag = f"--{name}"
        if flag in out[::2]:
            out[out.index(flag) + 1] = str(value)
        else:
            out += [flag, str(value)]
    return out


def tiny(method: str, **changes: object) -> list[str]:
    """`TINY[method]` with the changes a test needs (see `with_flags`)."""
    return with_flags(TINY[method], **changes)
