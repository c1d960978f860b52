"""Progress in a log (stderr not a terminal): a line per LOG_STEP_PERCENT %, not the redraws of
a bar; nothing under --quiet."""

import pytest

import utils.progress as progress_module
from utils.progress import LOG_STEP_PERCENT, LineProgress, progress, set_quiet


@pytest.fixture(autouse=True)
def not_quiet():
    set_quiet(False)
    yield
    set_quiet(False)


def test_a_log_gets_a_line_per_step_not_a_bar(capsys):
    items = list(progress(range(200), desc="encode", unit="img"))
    assert items == list(range(200))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 100 // LOG_STEP_PERCENT
    assert lines[0] == "encode: 10% (20/200 img, 0 s)" and lines[-1].startswith("encode: 100%")
    assert not any("\r" in line or "|" in line for line in lines)


def test_updates_resume_and_postfix(capsys):
    with progress(total=10, desc="fedavg", unit="round", initial=4) as bar:  # resumed at 4/10
        assert isinstance(bar, LineProgress)
        bar.set_postfix({"val_acc": "0.5"})
        bar.update(1)
        bar.update(5)
    assert capsys.readouterr().err.splitlines() == [
        "fedavg: 50% (5/10 round, 0 s) val_acc=0.5",
        "fedavg: 100% (10/10 round, 0 s) val_acc=0.5",
    ]


def test_quiet_and_disabled_print_nothing_and_a_terminal_gets_tqdm(capsys, monkeypatch):
    set_quiet(True)
    assert list(progress(range(5), disable=False)) == list(range(5))
    set_quiet(False)
    bar = progress(total=3, disable=True)
    bar.update(3)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(progress_module, "on_terminal", lambda: True)
    assert not isinstance(progress(range(3)), LineProgress)
