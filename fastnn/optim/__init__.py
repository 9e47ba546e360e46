"""fastnn.optim: fused optimizers over one flat parameter buffer, L-BFGS, and
EMA (Polyak averaging) of the weights."""
from .ema import EMA
from .lbfgs import LBFGS
from .optimizer import SGD, Adagrad, Adam, AdamW, Optimizer, RMSProp

__all__ = ["Optimizer", "SGD", "Adagrad", "RMSProp", "Adam", "AdamW", "LBFGS", "EMA"]
