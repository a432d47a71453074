"""Fault injection: SIGKILL and Ctrl-C at any point of training and of checkpoint writing, a full disk,
a crash before the first checkpoint. After each, the run resumes to the same losses, weights and
optimiser state, bit for bit, as a run that was never interrupted.

Every run trains in a forked child (so that a kill is real: no clean-up code runs), on one thread
(OpenMP's thread pool does not survive a fork; one thread also makes all runs here compute alike).
The random steps are drawn from FREELABEL_FAULT_SEED (default: the time), printed on failure.
"""

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import time
import traceback
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.optim.optimizer import register_optimizer_step_post_hook

import freelabel.files as files
import freelabel.run as rundir
from freelabel.cli import main
from freelabel.errors import DiskFullError
from freelabel.train.interrupts import StopBetweenSteps

SEED = int(os.environ.get("FREELABEL_FAULT_SEED", time.time_ns() % 10_000))
STEPS, EVERY = 8, 3  # checkpoints at steps 3 and 6, and 8 at the end
TRAIN = [
    "pretrain",
    "simclr",
    "--steps",
    str(STEPS),
    "--batch-size",
    "32",
    "--set",
    "method_args.hidden_dim=64",
    "--set",
    "backbone.args.widths=[16,32]",
    "--set",
    f"checkpoint_every={EVERY}",
    "--set",
    "log_every=1",
]


# --- helpers -------------------------------------------------------------------------------------


def in_child(fault=None, argv: list[str] | None = None, timeout: float = 600) -> int:
    """Run ``fault()`` then ``main(argv)`` in a forked child; its exit code, or -N if killed by signal N."""
    return wait(start_child(fault, argv), timeout)


def start_child(fault=None, argv: list[str] | None = None) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            torch.set_num_threads(1)
            logging.getLogger("freelabel").setLevel(logging.INFO)  # as the CLI sets it (pytest holds the root logger)
            if fault:
                fault()
            code = main(argv) if argv else 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def wait(pid: int, timeout: float = 600) -> int:
    deadline = time.monotonic() + timeout
    while not (done := os.waitpid(pid, os.WNOHANG))[0]:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the child process hung for {timeout} s")
        time.sleep(0.05)
    return os.waitstatus_to_exitcode(done[1])


def kill_self(sig: int = signal.SIGKILL) -> None:
    os.kill(os.getpid(), sig)


def after_optimizer_step(n: int, sig: int, again: bool = False):
    """A fault: ``sig`` right after the ``n``-th optimiser step (before the step counter moves)."""

    def install():
        count = 0

        def hook(optimizer, args, kwargs):
            nonlocal count
            count += 1
            if count == n:
                kill_self(sig)
                if again:
                    kill_self(sig)

        register_optimizer_step_post_hook(hook)

    return install


def inside_forward(n: int, sig: int, again: bool = False):
    """A fault: ``sig`` in the forward pass of step ``n`` (1-based), after its first BatchNorm layer ran
    (BatchNorm statistics changed, weights not yet); ``again``: a second one at the next BatchNorm."""

    def install():
        steps, fired = 0, 0

        def count(optimizer, args, kwargs):
            nonlocal steps
            steps += 1

        def hook(module, args, output):
            nonlocal fired
            training = isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.training  # not a check
            if training and steps == n - 1 and fired < 1 + again:
                fired += 1
                kill_self(sig)

        register_optimizer_step_post_hook(count)
        torch.nn.modules.module.register_module_forward_hook(hook)

    return install


def inside_save(stage: str, nth: int = 1, sig: int = signal.SIGKILL):
    """A fault in the ``nth`` checkpoint save: ``model``/``state`` with that file half-written in the
    temporary folder, ``in`` just after the new step was swapped in (the replaced one not yet deleted),
    ``aside`` where the file system cannot swap folders in one step: just after the replaced step was
    renamed aside."""

    def install():
        saves = 0
        save, fsync, exchange, replace = rundir.save_checkpoint, files._fsync, files._exchange, os.replace

        def counting_save(*args, **kwargs):
            nonlocal saves
            saves += 1
            return save(*args, **kwargs)

        def torn(path):
            if saves == nth and Path(path).name.startswith(stage):
                if sig == signal.SIGKILL:  # killed with the file half-written; other signals let it go on
                    os.truncate(path, Path(path).stat().st_size // 2)
                kill_self(sig)
            return fsync(path)

        def swapped(a, b):
            done = exchange(a, b) if stage != "aside" else False
            if saves == nth and done and stage == "in":
                kill_self(sig)
            return done

        def renames(src, dst):
            replace(src, dst)
            aside = Path(dst).name.startswith(files.ASIDE)
            moved_in = Path(src).name.endswith(".tmp") and not Path(dst).name.startswith(".")
            if saves == nth and ((stage == "aside" and aside) or (stage == "in" and moved_in)):
                kill_self(sig)

        rundir.save_checkpoint = counting_save
        files._fsync, files._exchange, os.replace = torn, swapped, renames

    return install


def losses(run: Path) -> list[float]:
    """The training losses as TensorBoard shows them (events a resume replaced are purged)."""
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    return [e.value for e in acc.Scalars("train/loss")]


def trained(run: Path) -> dict:
    """Everything a finished run leaves: losses, backbone, final checkpoint (weights, optimiser, counters)."""
    ckpt = rundir.latest_checkpoint(run)
    weights, state = rundir.load_checkpoint(ckpt)
    metrics = json.loads((run / rundir.METRICS).read_text())["pretrain"]
    return {
        "losses": losses(run),
        "backbone": load_file(str(run / rundir.BACKBONE)),
        "checkpoint": ckpt.name,
        "weights": weights,
        "optimizer": state["optimizer"],
        "train": state["train"],
        "metrics": metrics,
    }


def assert_identical(a, b, where="") -> None:
    """Equal bit for bit: tensors by ``torch.equal``, floats by ``==``, containers item by item."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), f"{where}: {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


VOLATILE = ("train_minutes", "images_per_s", "train_seconds", "minutes")  # wall-clock times


def steady(found):
    """What a run leaves less its wall-clock times (also those of each online evaluation's point)."""
    if isinstance(found, dict):
        return {k: steady(v) for k, v in found.items() if k not in VOLATILE}
    return [steady(v) for v in found] if isinstance(found, list) else found


def assert_same_run(run: Path, reference: dict) -> None:
    got = trained(run)
    assert_identical(steady(got), steady(reference), f"seed {SEED}")
    leftovers = [p.name for p in (run / rundir.CHECKPOINTS).iterdir() if p.name.startswith(".")]
    assert leftovers == []


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """The uninterrupted run."""
    run = tmp_path_factory.mktemp("reference") / "run"
    assert in_child(argv=[*TRAIN, "--out", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def reference(reference_run) -> dict:
    return trained(reference_run)


def resume(run: Path) -> None:
    assert in_child(argv=["pretrain", "--resume", str(run)]) == 0


# --- checkpoint files: no training, fast ------------------------------------------------------------


def fake_state(step: int) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(step)
    return {"w": torch.randn(64, 64, generator=g)}, {
        "train": {"step": step},
        "moment": torch.randn(64, 64, generator=g),
    }


def same_as(ckpt: Path, step: int) -> bool:
    weights, state = rundir.load_checkpoint(ckpt)
    want_weights, want_state = fake_state(step)
    return torch.equal(weights["w"], want_weights["w"]) and torch.equal(state["moment"], want_state["moment"])


@pytest.mark.parametrize("replacing", [False, True], ids=["new-step", "same-step"])
@pytest.mark.parametrize("stage", ["model", "state", "aside", "in"])
def test_a_kill_while_saving_leaves_a_complete_checkpoint(tmp_path, stage, replacing):
    if stage == "aside" and not replacing:
        return  # a new step has nothing to rename aside
    run = tmp_path / "run"
    rundir.save_checkpoint(run, 3, *fake_state(3))
    if replacing:
        rundir.save_checkpoint(run, 6, *fake_state(5))  # step 6 saved before with other contents
    killed = in_child(lambda: (inside_save(stage)(), rundir.save_checkpoint(run, 6, *fake_state(6))), timeout=60)
    assert killed == -signal.SIGKILL
    # Readers (export, evaluation) see a complete checkpoint without tidying: the old or the new step 6,
    # or step 3 where no step 6 was ever complete.
    newest = rundir.latest_checkpoint(run)
    assert same_as(newest, 6) or same_as(newest, 5 if replacing else 3)
    path, _, _ = rundir.load_latest_checkpoint(run)
    assert path == newest
    # The writer tidies: no temporary folders, the step back under its name, and saving works again.
    rundir.tidy_run(run)
    names = sorted(p.name for p in (run / rundir.CHECKPOINTS).iterdir())
    assert names == (["step-00000003", "step-00000006"] if replacing or stage == "in" else ["step-00000003"])
    rundir.save_checkpoint(run, 6, *fake_state(6))
    assert same_as(rundir.latest_checkpoint(run), 6) and same_as(run / "checkpoints/step-00000003", 3)


def test_loading_falls_back_past_damaged_checkpoints(tmp_path, caplog):
    run = tmp_path / "run"
    for step in (2, 4, 6, 8):
        rundir.save_checkpoint(run, step, *fake_state(step), keep=4)
    root = run / rundir.CHECKPOINTS
    (root / "step-00000008" / "model.safetensors").unlink()  # what an older freelabel left when killed
    (root / "step-00000006" / "state.pt").write_bytes((root / "step-00000006" / "state.pt").read_bytes()[:500])
    blob = bytearray((root / "step-00000004" / "state.pt").read_bytes())
    blob[100:4000] = bytes(3900)  # damaged inside, its zip directory intact
    (root / "step-00000004" / "state.pt").write_bytes(blob)
    assert rundir.latest_checkpoint(run) == root / "step-00000004"  # the cheap check passes 8 and 6 over
    path, _, _ = rundir.load_latest_checkpoint(run)  # loading passes 4 over too
    assert path == root / "step-00000002" and same_as(path, 2)
    assert "step-00000004 cannot be read" in caplog.text and "step-00000008: it is incomplete" in caplog.text


def test_only_the_newest_checkpoints_are_kept_and_no_temporary_files(tmp_path):
    run = tmp_path / "run"
    for step in range(1, 6):
        rundir.save_checkpoint(run, step, *fake_state(step))
    assert sorted(p.name for p in (run / rundir.CHECKPOINTS).iterdir()) == ["step-00000004", "step-00000005"]
    rundir.update_metrics(run, "x", {"a": 1})
    rundir.save_backbone(run, {"w": torch.ones(3)})
    assert sorted(p.name for p in run.iterdir()) == ["backbone.safetensors", "checkpoints", "metrics.json"]


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs, room for three tiny checkpoints (root only: skipped where mounting is refused)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip() or done.returncode}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` up to ``leave`` free bytes."""
    filler = disk / "filler"
    filler.write_bytes(bytes(max(0, shutil.disk_usage(disk).free - leave)))
    return filler


@pytest.mark.parametrize("checked", [True, False], ids=["refused-up-front", "full-during-write"])
def test_a_full_disk_keeps_the_previous_checkpoint(small_disk, monkeypatch, checked):
    run = small_disk / "run"
    rundir.save_checkpoint(run, 3, *fake_state(3))
    fill(small_disk, 20_000)  # a checkpoint takes about 33 kB
    if not checked:  # the space check passes (space taken meanwhile by another program): the write fails
        monkeypatch.setattr(files, "check_space", lambda *args: None)
    with pytest.raises(DiskFullError, match="no space .*step-00000003 is intact.*--resume") as e:
        rundir.save_checkpoint(run, 6, *fake_state(6))
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in (run / rundir.CHECKPOINTS).iterdir()) == ["step-00000003"]
    assert same_as(rundir.latest_checkpoint(run), 3)
    with pytest.raises(DiskFullError):
        rundir.update_metrics(run, "pretrain", {"x": "y" * 30_000})
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_the_first_signal_waits_for_the_step_and_the_second_stops_at_once(sig):
    before = signal.getsignal(sig)
    with StopBetweenSteps() as stop:
        kill_self(sig)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            kill_self(sig)
    assert signal.getsignal(sig) is before


def test_a_kill_while_writing_a_file_leaves_the_old_one_and_tidying_removes_the_rest(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rundir.save_backbone(run, {"w": torch.zeros(1000)})
    rundir.update_metrics(run, "pretrain", {"steps": 1})

    def install():  # killed with the temporary half-written
        def torn(path):
            os.truncate(path, Path(path).stat().st_size // 2)
            kill_self()

        files._fsync = torn

    assert in_child(lambda: (install(), rundir.save_backbone(run, {"w": torch.ones(1000)})), timeout=60) == -9
    assert in_child(lambda: (install(), rundir.update_metrics(run, "pretrain", {"steps": 2})), timeout=60) == -9
    assert torch.equal(load_file(str(run / rundir.BACKBONE))["w"], torch.zeros(1000))
    assert rundir.read_metrics(run) == {"pretrain": {"steps": 1}}
    assert len(list(run.glob(".*.tmp"))) == 1  # the first killed writer's was removed by the second write
    rundir.tidy_run(run)
    assert sorted(p.name for p in run.iterdir()) == [rundir.BACKBONE, rundir.METRICS]


# --- training: killed, interrupted, resumed -----------------------------------------------------------

RANDOM_STEPS = random.Random(SEED).sample(range(1, STEPS + 1), 3)


@pytest.mark.slow
@pytest.mark.parametrize("n", RANDOM_STEPS)
def test_sigkill_at_a_random_step_resumes_bit_for_bit(tmp_path, reference, n):
    run = tmp_path / "run"
    assert in_child(after_optimizer_step(n, signal.SIGKILL), [*TRAIN, "--out", str(run)]) == -signal.SIGKILL
    resume(run)
    assert_same_run(run, reference)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["after-optimizer-step", "inside-forward", "inside-checkpoint-write"])
def test_ctrl_c_stops_at_a_step_boundary_and_resumes_bit_for_bit(tmp_path, reference, fault):
    run = tmp_path / "run"
    n = random.Random(SEED).randint(1, STEPS - 1)
    install = {
        "after-optimizer-step": after_optimizer_step(n, signal.SIGINT),
        "inside-forward": inside_forward(n, signal.SIGINT),
        "inside-checkpoint-write": inside_save("model", 1, signal.SIGINT),
    }[fault]
    assert in_child(install, [*TRAIN, "--out", str(run)]) == 130
    stopped = EVERY if fault == "inside-checkpoint-write" else n  # the step that was running finishes
    assert rundir.latest_checkpoint(run).name == f"step-{stopped:08d}"
    assert "interrupted at step" in (run / "log.txt").read_text()
    resume(run)
    assert_same_run(run, reference)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_a_signal_at_a_random_moment_resumes_bit_for_bit(tmp_path, reference, sig):
    """Sent from outside at a random time once training has begun: in a step, between steps, in a save."""
    run = tmp_path / "run"
    pid = start_child(argv=[*TRAIN, "--out", str(run)])
    deadline = time.monotonic() + 300
    while "if training stops" not in ((run / "log.txt").read_text() if (run / "log.txt").exists() else ""):
        assert time.monotonic() < deadline, "the run never started training"
        time.sleep(0.01)
    time.sleep(random.Random(SEED).uniform(0, 2))
    os.kill(pid, sig)
    assert wait(pid) in (0, 130, -signal.SIGKILL)  # 0: it had finished
    resume(run)
    assert_same_run(run, reference)


@pytest.fixture(scope="module")
def broken_folder(tmp_path_factory, fmnist_folder) -> Path:
    """60 real images and 20 unreadable files among them (truncated PNGs, text): at batch 16, 3 full
    batches an epoch, each filled past unreadable files; 8 steps cross two epochs."""
    root = tmp_path_factory.mktemp("broken_folder") / "images"
    root.mkdir()
    good = sorted(fmnist_folder.rglob("*.png"))[:60]
    for i, path in enumerate(good):
        shutil.copy(path, root / f"{i:03d}.png")
        if i % 3 == 0:
            (root / f"{i:03d}-broken.png").write_bytes(path.read_bytes()[: 40 + i] if i % 2 else b"not an image")
    return root


def broken_args(folder: Path) -> list[str]:
    return [*TRAIN[:5], "16", *TRAIN[6:], "--data", str(folder), "--recipe", "simclr-fashion-mnist"]


@pytest.mark.slow
def test_sigkill_with_unreadable_files_in_the_data_resumes_bit_for_bit(tmp_path, broken_folder):
    reference_run = tmp_path / "reference"
    assert in_child(argv=[*broken_args(broken_folder), "--out", str(reference_run)]) == 0
    reference = trained(reference_run)
    assert reference["metrics"]["skipped_files"] == 20 and reference["train"]["epoch"] == 2
    run = tmp_path / "run"
    n = random.Random(SEED).randint(1, STEPS - 1)
    assert in_child(after_optimizer_step(n, signal.SIGKILL), [*broken_args(broken_folder), "--out", str(run)]) == -9
    resume(run)
    assert_same_run(run, reference)


@pytest.mark.slow
def test_a_second_ctrl_c_drops_the_step_and_the_last_checkpoint_resumes_bit_for_bit(tmp_path, reference):
    run = tmp_path / "run"
    assert in_child(inside_forward(EVERY + 2, signal.SIGINT, again=True), [*TRAIN, "--out", str(run)]) == 130
    assert rundir.latest_checkpoint(run).name == f"step-{EVERY:08d}"
    assert "which is dropped" in (run / "log.txt").read_text()
    resume(run)
    assert_same_run(run, reference)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["model", "state", "aside", "in"])
def test_sigkill_while_replacing_the_final_checkpoint(tmp_path, reference_run, reference, stage):
    """Resuming a finished run saves its last step again: a kill there must leave it usable."""
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    assert in_child(inside_save(stage), ["pretrain", "--resume", str(run)]) == -signal.SIGKILL
    (run / rundir.BACKBONE).unlink()  # as in a run that had not finished: export reads the checkpoints
    assert in_child(argv=["export", str(run), "--format", "safetensors", "--out", str(tmp_path / "export")]) == 0
    assert_identical(load_file(str(tmp_path / "export" / rundir.BACKBONE)), reference["backbone"])
    resume(run)
    assert_same_run(run, reference)


@pytest.mark.slow
@pytest.mark.parametrize("nth", [1, 2])
def test_sigkill_inside_a_checkpoint_write_during_training(tmp_path, reference, nth):
    run = tmp_path / "run"
    assert in_child(inside_save("state", nth), [*TRAIN, "--out", str(run)]) == -signal.SIGKILL
    newest = rundir.latest_checkpoint(run)
    assert (newest and newest.name) == (None if nth == 1 else f"step-{EVERY:08d}")
    resume(run)
    assert_same_run(run, reference)


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_restarts_in_place(tmp_path, reference):
    run = tmp_path / "run"
    assert in_child(after_optimizer_step(EVERY - 1, signal.SIGKILL), [*TRAIN, "--out", str(run)]) == -signal.SIGKILL
    assert not (run / rundir.CHECKPOINTS).exists()
    assert f"continue it with `freelabel pretrain --resume {run}`" in (run / "log.txt").read_text()
    resume(run)  # the command the log names
    assert_same_run(run, reference)
    again = tmp_path / "again"
    assert in_child(after_optimizer_step(EVERY - 1, signal.SIGKILL), [*TRAIN, "--out", str(again)]) == -signal.SIGKILL
    assert in_child(argv=[*TRAIN, "--out", str(again)]) == 0  # or the same command again
    assert_same_run(again, reference)


@pytest.mark.slow
def test_a_disk_full_during_training_is_one_line_and_resumes_bit_for_bit(small_disk, reference, capfd):
    run = small_disk / "run"

    def fill_after_the_first_checkpoint():
        save = rundir.save_checkpoint

        def saving(*args, **kwargs):
            done = save(*args, **kwargs)
            if not (small_disk / "filler").exists():
                fill(small_disk, 60_000)
            return done

        rundir.save_checkpoint = saving

    capfd.readouterr()
    assert in_child(fill_after_the_first_checkpoint, [*TRAIN, "--out", str(run)]) == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err and "freelabel: error: no space" in err and "--resume" in err
    assert rundir.latest_checkpoint(run).name == f"step-{EVERY:08d}"
    (small_disk / "filler").unlink()
    resume(run)
    assert_same_run(run, reference)


@pytest.mark.slow
def test_resume_keeps_the_results_of_a_finished_run_and_the_knn_curve(fmnist_folder, tmp_path):
    run = tmp_path / "run"
    folder = ["--data", str(fmnist_folder), "--recipe", "simclr-fashion-mnist", "--set", "data.workers=0"]
    args = [*TRAIN[:2], "--steps", "6", "--batch-size", "16", *folder, *TRAIN[6:], "--eval-every", "0.00001"]
    assert in_child(after_optimizer_step(4, signal.SIGINT), [*args, "--out", str(run)]) == 130
    _, state = rundir.load_checkpoint(rundir.latest_checkpoint(run))
    before = [p["step"] for p in state["train"]["knn_curve"]]
    assert before == [1, 2, 3, 4]
    resume(run)
    result = json.loads((run / rundir.METRICS).read_text())["pretrain"]
    assert [p["step"] for p in result["knn_curve"]] == [1, 2, 3, 4, 5, 6]
    resume(run)  # a finished run: nothing to train, nothing lost
    again = json.loads((run / rundir.METRICS).read_text())["pretrain"]
    assert again["final_loss"] == result["final_loss"] is not None
    assert again["knn_curve"] == result["knn_curve"]
