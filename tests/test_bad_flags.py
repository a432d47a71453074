"""Every bad flag and value of tests/bad_flags.py: one line on stderr, exit status 2, no traceback."""

import pytest
from bad_flags import cases, make_fixtures, run_in_process


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_flags") / "t"
    make_fixtures(root)
    return root


@pytest.mark.slow  # makes a run and an index, then runs about 90 commands in one process
def test_every_bad_flag_and_value_is_one_line_and_exit_2(root):
    failures = []
    for what, argv in cases(root):
        code, err = run_in_process(argv)
        errors = [line for line in err.splitlines() if line.startswith("freelabel") and "error:" in line]
        if code != 2 or "Traceback" in err or len(errors) != 1:  # a warning may come before the error line
            failures.append(f"{what}: exit {code}: {err.strip()[-600:]}")
    assert not failures, "\n".join(failures)


def test_a_checkpoint_that_is_a_pickle_of_code_is_refused_not_passed_over(root):
    from freelabel.run import UnsafeCheckpoint, load_checkpoint, load_latest_checkpoint

    ckpt = sorted((root / "evil_run" / "checkpoints").glob("step-*"))[-1]
    with pytest.raises(UnsafeCheckpoint, match="a pickle that could run code"):
        load_checkpoint(ckpt)
    with pytest.raises(UnsafeCheckpoint):  # tampering is not crash damage: no silent fallback or restart
        load_latest_checkpoint(root / "evil_run")
