"""Run by tests/test_distributed.py under ``mpirun -n 2``: every scenario of the
distributed tests in one MPI job (one start-up), each rank writing what it saw
to OUT/rank{r}.npz. The same builders give the test's single-process references.

    mpirun -n 2 python tests/_mpi_worker.py OUT
"""
from __future__ import annotations

import os
import sys

import numpy as np

import fastnn as fnn

N, D, CLASSES, BATCH = 64, 12, 3, 16      # 4 steps per epoch; each of 2 ranks gets 8 rows


def data(image=False):
    rng = np.random.default_rng(123)
    X = rng.standard_normal((N, D)).astype(np.float32)
    y = rng.integers(0, CLASSES, N)
    if image:
        X = rng.standard_normal((N, 1, 6, 6)).astype(np.float32) * 2.0 + 0.5
    return X, y


def build(kind):
    fnn.manual_seed(0)
    nn = fnn.nn
    if kind == "plain":
        return nn.Sequential(nn.Linear(D, 24), nn.ReLU(), nn.Linear(24, 16), nn.Tanh(), nn.Linear(16, CLASSES))
    if kind == "sync_bn":
        return nn.Sequential(nn.Linear(D, 24), nn.BatchNorm1d(24, sync_bn=True), nn.ReLU(),
                             nn.Linear(24, 16), nn.BatchNorm1d(16, sync_bn=True, affine=False),
                             nn.Linear(16, CLASSES))
    if kind == "sync_bn2d":
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4, sync_bn=True), nn.ReLU(),
                             nn.Flatten(), nn.Linear(4 * 36, CLASSES))
    if kind == "local_bn":
        return nn.Sequential(nn.Linear(D, 24), nn.BatchNorm1d(24), nn.ReLU(), nn.Linear(24, CLASSES))
    if kind == "dropout":
        return nn.Sequential(nn.Linear(D, 24), nn.ReLU(), nn.Dropout(0.5, seed=11), nn.Linear(24, CLASSES))
    raise ValueError(kind)


def train(kind, distributed=False, bucket_mb=None, epochs=1, callbacks=(), checkpoint=None, resume=None):
    """(trainer, model, flat parameters after training)."""
    X, y = data(image=kind == "sync_bn2d")
    model = build(kind)
    opt = fnn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), opt, seed=0, distributed=distributed,
                          bucket_mb=bucket_mb, callbacks=callbacks)
    if resume is not None:
        trainer.load_checkpoint(resume)
    trainer.fit(X, y, epochs=epochs, batch_size=BATCH, progress=False)
    if checkpoint is not None:
        trainer.save_checkpoint(checkpoint)
    return trainer, model, opt.flat_param.copy()


def main(out):
    fnn.distributed.init()
    r = fnn.distributed.rank()
    res = {"world_size": np.array(fnn.distributed.world_size())}

    for kind in ("plain", "sync_bn", "sync_bn2d"):
        trainer, model, flat = train(kind, distributed=True)
        res[f"{kind}/flat"] = flat
        res[f"{kind}/loss"] = np.array(trainer.history.loss)
        for name, b in model.named_buffers():
            res[f"{kind}/buffer/{name}"] = np.array(b, copy=True)
    for mb in (1e-4, 0.002):    # one bucket per layer; buckets spanning several layers
        _, _, res[f"bucketed{mb}/flat"] = train("plain", distributed=True, bucket_mb=mb)
    _, model, res["local_bn/flat"] = train("local_bn", distributed=True)
    res["local_bn/running_mean"] = model[1].running_mean.copy()

    # Dropout: masks differ between ranks, the run repeats exactly.
    trainer, model, res["dropout/flat"] = train("dropout", distributed=True)
    _, _, res["dropout/flat_again"] = train("dropout", distributed=True)
    drop = model[2]
    res["dropout/rng_state"] = drop.rng_state.copy()
    res["dropout/mask"] = drop.forward(np.ones((8, 24), np.float32)) != 0

    # Checkpoints: only rank 0 writes; resuming gives the uninterrupted run.
    best = fnn.BestCheckpoint(os.path.join(out, f"best_rank{r}.npz"), monitor="loss")
    train("dropout", distributed=True, epochs=1, callbacks=[best], checkpoint=os.path.join(out, f"ckpt_rank{r}.npz"))
    _, _, res["resume/flat"] = train("dropout", distributed=True, epochs=2, resume=os.path.join(out, "ckpt_rank0.npz"))
    _, _, res["resume/flat_straight"] = train("dropout", distributed=True, epochs=2)

    # A global batch the world size does not divide.
    try:
        model = build("plain")
        trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(),
                              fnn.optim.SGD(model.parameters(), lr=0.1), distributed=True)
        trainer.fit(*data(), epochs=1, batch_size=BATCH + 1, progress=False)
        res["bad_batch/error"] = np.array("no error")
    except ValueError as exc:
        res["bad_batch/error"] = np.array(str(exc))

    np.savez(os.path.join(out, f"rank{r}.npz"), **res)
    fnn.distributed.barrier()


if __name__ == "__main__":
    main(sys.argv[1])
