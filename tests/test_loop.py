"""The training loop's parts: its length, the budget clock, the optimiser schedule."""

import ast
import inspect

import pytest
import torch

import freelabel.engine as engine
import freelabel.train.clock as clock_module
from freelabel.config import OptimConfig
from freelabel.schedules import OptimizerSchedule
from freelabel.train.clock import BudgetClock


def test_the_training_loop_reads_in_one_screen():
    tree = ast.parse(inspect.getsource(engine))
    pretrain = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "_pretrain")
    loop = next(n for n in ast.walk(pretrain) if isinstance(n, ast.While))
    assert loop.end_lineno - loop.lineno + 1 <= 32, "the loop body grew: move the new detail into a named helper"
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(m and m.startswith("methods.") for m in imported)  # the engine knows no method by name


class FakeTime:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Run:
    step, train_seconds = 0, 0.0


def test_the_budget_clock_counts_training_time_only(monkeypatch):
    fake = FakeTime()
    monkeypatch.setattr(clock_module.time, "perf_counter", fake)
    run, clock = Run(), BudgetClock(None, minutes=1.0)
    fake.now += 6
    clock.tick(run)
    assert run.train_seconds == 6 and clock.progress(run) == pytest.approx(0.1)
    with clock.paused():  # a checkpoint, an evaluation
        fake.now += 100
    fake.now += 3
    clock.tick(run)
    assert run.train_seconds == 9
    run.step = 5
    assert BudgetClock(20, None).progress(run) == 0.25  # a step budget ignores time
    agreed = BudgetClock(None, 1.0, agree=lambda seconds: 42.0)  # the first process's time, everywhere
    agreed.tick(run)
    assert run.train_seconds == 42.0


def test_the_optimizer_schedule_warms_up_decays_and_leaves_undecayed_groups_alone():
    w = torch.nn.Parameter(torch.zeros(2))
    b = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([{"params": [w]}, {"params": [b], "weight_decay": 0.0}], lr=0.4, weight_decay=0.04)
    schedule = OptimizerSchedule(opt, OptimConfig(weight_decay=0.04, weight_decay_end=0.4, warmup=0.2, min_lr=0.1))
    schedule(0.1)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.2, 0.2])  # half-way up the warm-up
    schedule(1.0)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.04, 0.04])  # min_lr of the peak
    assert [g["weight_decay"] for g in opt.param_groups] == pytest.approx([0.4, 0.0])
    opt.param_groups[0]["lr"] = 123.0  # a resumed optimiser's last value does not become the peak
    schedule(0.2)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.4)
