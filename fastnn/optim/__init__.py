"""fastnn.optim: fused optimizers over one flat parameter buffer."""
from .optimizer import SGD, Adagrad, Adam, AdamW, Optimizer, RMSProp

__all__ = ["Optimizer", "SGD", "Adagrad", "RMSProp", "Adam", "AdamW"]
