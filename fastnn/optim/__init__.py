"""fastnn.optim: fused optimizers over one flat parameter buffer, and L-BFGS."""
from .lbfgs import LBFGS
from .optimizer import SGD, Adagrad, Adam, AdamW, Optimizer, RMSProp

__all__ = ["Optimizer", "SGD", "Adagrad", "RMSProp", "Adam", "AdamW", "LBFGS"]
