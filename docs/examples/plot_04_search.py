"""
Random vs grid search, and coarse to fine
=========================================

The lecture's picture (Bergstra & Bengio 2012): when one hyperparameter
matters much more than the other, a 3x3 grid tries only 3 distinct values
of the important one, while 9 random trials try 9. Here the objective is the
validation accuracy after 3 epochs; the learning rate (log scale) matters,
the weight decay much less.
"""
import warnings

import matplotlib.pyplot as plt

import fastnn as fnn
from fastnn.search import coarse_to_fine, grid_search, loguniform, random_search

X, y = fnn.data.load_digits()
(Xtr, ytr), (Xva, yva), _ = fnn.data.split(X, y, (0.6, 0.2, 0.2), seed=0)


def objective(params, budget=3):
    fnn.manual_seed(0)
    model = fnn.nn.Sequential(fnn.nn.Linear(64, 64, activation="relu"), fnn.nn.Linear(64, 10))
    opt = fnn.optim.SGD(model.parameters(), lr=params["lr"], momentum=0.9, weight_decay=params["weight_decay"])
    trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), opt, seed=0, divergence_factor=None)
    try:
        trainer.fit(Xtr, ytr, epochs=int(budget), batch_size=64, progress=False)
    except fnn.TrainingDiverged:
        return 0.0
    return trainer.evaluate(Xva, yva)["accuracy"]


grid = grid_search(objective, {"lr": [1e-4, 1e-2, 1.0], "weight_decay": [1e-5, 1e-3, 1e-1]})
rand = random_search(objective, {"lr": loguniform(1e-4, 1.0), "weight_decay": loguniform(1e-5, 1e-1)},
                     trials=9, seed=0)
print("grid best:  ", grid.best.params, round(grid.best.score, 3))
print("random best:", rand.best.params, round(rand.best.score, 3))

fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
for ax, result, title in [(axes[0], grid, "grid search (9 trials)"), (axes[1], rand, "random search (9 trials)")]:
    lr = [t.params["lr"] for t in result]
    wd = [t.params["weight_decay"] for t in result]
    sc = ax.scatter(lr, wd, c=[t.score for t in result], cmap="viridis", vmin=0, vmax=1, s=80)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate (important)")
    ax.set_title(title)
axes[0].set_ylabel("weight decay (unimportant)")
fig.colorbar(sc, ax=axes, label="validation accuracy")

# %%
# Coarse to fine: a first round of short runs over wide ranges, then a round
# of longer runs in a range narrowed around the best trials (``budgets``
# gives each round's epochs; the objective receives it).
# When the best value sits at an edge of its range, coarse_to_fine widens the
# range past that edge and says so with a warning (printed here).
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    result = coarse_to_fine(objective, {"lr": loguniform(1e-4, 1.0), "weight_decay": loguniform(1e-5, 1e-1)},
                            rounds=2, trials=8, budgets=[1, 4], seed=0)
for w in caught:
    print("warning:", w.message)
print(result.table())
