"""fastnn.optim: fused optimizers over one flat parameter buffer, and EMA (Polyak averaging)."""
from .optimizer import SGD, Adagrad, Adam, AdamW, Optimizer, RMSProp
from .ema import EMA

__all__ = ["Optimizer", "SGD", "Adagrad", "RMSProp", "Adam", "AdamW", "EMA"]
