"""Fine-tuning under torchrun: 2 CPU ranks (gloo) make the run one process makes, a run resumes
on another rank count and after a rank is killed, and a failing rank names itself."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import REPO
from featurebank import FinetuneConfig, ParameterError, finetune
from featurebank._distributed import Rank, gather_parts, on_rank_zero, part_of

# SGD: AdamW divides each gradient component by its own running scale, so a component that
# is rounding noise moves a full step either way (measured: one process on 1 or 2 threads
# differs as much as 1 process and 2 ranks; README "Many GPUs"). SGD shows what the ranks do.
ARGS = ["--epochs", "2", "--batch-size", "31", "--optimizer", "sgd", "--lr", "0.01",
        "--handoff-samples", "64", "--workers", "0", "-q"]
OPTIONS = dict(epochs=2, batch_size=31, optimizer="sgd", lr=0.01, handoff_samples=64,
               workers=0, progress=False)


def _torchrun(cwd, *args, nproc=2, script=None, wait=True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           str(nproc), *([script] if script else ["-m", "featurebank"]), "finetune", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def _weights(folder, name="checkpoint.pt"):
    state = torch.load(folder / name, weights_only=True)
    return state.get("model", state) if name == "checkpoint.pt" else state


def _largest_difference(a, b, name="checkpoint.pt") -> float:
    wa, wb = _weights(a, name), _weights(b, name)
    assert wa.keys() == wb.keys()
    return max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa
               if wa[k].is_floating_point())


def _same_run(a, b, atol=1e-5) -> float:
    """The two fine-tune folders hold the same run: weights (last and best) within ``atol``,
    the same best epoch and stopping, the same validation curve; the largest difference."""
    diff = max(_largest_difference(a, b), _largest_difference(a, b, "best_model.pt"))
    assert diff <= atol, diff
    sa, sb = (json.loads((f / "summary.json").read_text()) for f in (a, b))
    assert (sa["best_epoch"], sa["stopped_early"], sa["epochs_run"]) == (
        sb["best_epoch"], sb["stopped_early"], sb["epochs_run"])
    ma, mb = (json.loads((f / "metrics.json").read_text()) for f in (a, b))
    np.testing.assert_allclose([r["val_loss"] for r in ma], [r["val_loss"] for r in mb],
                               rtol=1e-4)  # weights 1e-5 apart move the loss that much
    return diff


@pytest.fixture(scope="module")
def two_ranks(trained, tmp_path_factory):
    """The uninterrupted 2-rank run of ARGS, and its folder."""
    tmp, _ = trained
    out = tmp_path_factory.mktemp("ddp") / "ft"
    rc, stdout, err = _torchrun(tmp, "bank.h5", "--runs", "runs", *ARGS, "--out", str(out))
    assert rc == 0, err
    return out, stdout


def test_two_ranks_train_what_one_process_trains(trained, two_ranks, tmp_path):
    tmp, bank = trained
    out, stdout = two_ranks
    one = finetune(bank, runs=tmp / "runs", out=tmp_path / "one", **OPTIONS)
    diff = _same_run(tmp_path / "one", out)
    print(f"largest weight difference, 1 process vs 2 ranks: {diff:.2e}")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and one["world_size"] == 1
    assert json.loads((out / "best_model.json").read_text())["world_size"] == 2
    assert {r["world_size"] for r in json.loads((out / "metrics.json").read_text())} == {2}
    assert stdout.count("head test accuracy") == 1  # rank 0 reports; 31 rows split 16 / 15
    assert summary["test_accuracy"] == one["test_accuracy"]


def _at_step(path, when: str, action: str):
    """A torchrun entry point: featurebank's command line, with ``action`` run at the start
    of the first training step where ``when`` holds (``rank``, ``epoch``, ``step`` in scope)."""
    path.write_text(
        "import os, signal, sys\n"
        "from featurebank import DataError\n"
        "from featurebank.cli import main\n"
        "from featurebank.finetuning import loop\n"
        "step = loop.Trainer.step\n"
        "def patched(self, rows, images=None):\n"
        "    rank, epoch, step_ = int(os.environ['RANK']), self.state['epoch'], "
        "self.state['step']\n"
        f"    if {when.replace('step', 'step_')}:\n"
        f"        {action}\n"
        "    return step(self, rows, images)\n"
        "loop.Trainer.step = patched\n"
        "sys.exit(main(sys.argv[1:]))\n")
    return str(path)


KILL = "os.kill(os.getpid(), signal.SIGKILL)"  # no chance to clean up


def test_a_run_resumes_on_another_rank_count(trained, two_ranks, tmp_path):
    tmp, bank = trained
    out = tmp_path / "ft"
    # rank 1 during epoch 2: its second step waited for rank 0's, so epoch 1's checkpoint
    # (rank 0 writes it while rank 1 starts epoch 2) is on disk
    stop = _at_step(tmp_path / "stop.py", "rank == 1 and epoch == 1 and step == 1", KILL)
    rc, _, _ = _torchrun(tmp, "bank.h5", "--runs", "runs", *ARGS, "--out", str(out),
                         script=stop)
    assert rc != 0 and not (out / "summary.json").exists()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["state"]["epoch"] == 1
    finetune(bank, runs=tmp / "runs", out=out, resume=True, **OPTIONS)  # one process
    _same_run(two_ranks[0], out)
    rows = json.loads((out / "metrics.json").read_text())
    assert [r["world_size"] for r in rows] == [2, 2, 1]  # epochs 0 and 1 on 2 ranks, 2 on 1


def test_a_killed_rank_resumes_to_the_uninterrupted_run(trained, two_ranks, tmp_path):
    tmp, _ = trained
    out = tmp_path / "ft"
    args = ["bank.h5", "--runs", "runs", *ARGS, "--checkpoint-every", "1", "--out", str(out)]
    kill = _at_step(tmp_path / "kill.py", "rank == 1 and epoch == 0 and step == 4", KILL)
    rc, _, _ = _torchrun(tmp, *args, script=kill)  # rank 1 alone, mid-epoch
    assert rc != 0 and not (out / "summary.json").exists()
    state = torch.load(out / "checkpoint.pt", weights_only=True)["state"]
    assert state["epoch"] == 0 and state["step"] in (3, 4)  # rank 0's last, or the one before
    rc, _, err = _torchrun(tmp, *args, "--resume")  # the same command, resumed
    assert rc == 0, err
    _same_run(two_ranks[0], out)


def test_a_failing_rank_stops_the_run_naming_itself(trained, tmp_path):
    tmp, _ = trained
    fail = _at_step(tmp_path / "fail.py", "rank == 1 and step == 2",
                    "raise DataError('cannot read image 042.jpg (truncated)')")
    t = time.time()
    rc, _, err = _torchrun(tmp, "bank.h5", "--runs", "runs", *ARGS, "--out",
                           str(tmp_path / "ft"), script=fail)
    assert rc != 0 and time.time() - t < 120  # stopped, not left waiting in a collective
    assert "featurebank finetune (rank 1 of 2): error: cannot read image 042.jpg" in err
    assert not (tmp_path / "ft" / "summary.json").exists()


def test_parts_of_a_batch_and_what_one_process_does():
    for n in (0, 1, 5, 31, 32):
        for world in (1, 2, 3):
            parts = [range(n)[part_of(n, Rank(r, world, 0))] for r in range(world)]
            expected = np.array_split(np.arange(n), world)
            assert [list(p) for p in parts] == [list(e) for e in expected]
    assert part_of(7, None) == slice(0, 7)
    x = torch.arange(6.0)
    assert gather_parts(x, 6, None) is x and on_rank_zero(lambda: 3, None) == 3


def test_train_bn_on_cpu_ranks_is_refused(trained):
    from featurebank.finetuning.loop import _data_parallel

    tmp, bank = trained
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    with pytest.raises(ParameterError, match="--train-bn with 2 CPU ranks.*SyncBatchNorm needs"):
        _data_parallel(net, Rank(0, 2, 0), FinetuneConfig(train_bn=True), torch.device("cpu"))
