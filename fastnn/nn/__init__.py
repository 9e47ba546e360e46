"""fastnn.nn: Module, Parameter, layers and model save/load."""
from .module import Module, Parameter, load, from_config
from .layers import (Activation, ELU, Flatten, GELU, Identity, LeakyReLU, Linear, PReLU, ReLU, SELU,
                     Sequential, Sigmoid, Swish, Tanh)
from .regularization import BatchNorm1d, BatchNorm2d, DropConnect, Dropout

__all__ = ["Module", "Parameter", "load", "from_config", "Activation", "ELU", "Flatten", "GELU",
           "Identity", "LeakyReLU", "Linear", "PReLU", "ReLU", "SELU", "Sequential", "Sigmoid", "Swish",
           "Tanh", "BatchNorm1d", "BatchNorm2d", "Dropout", "DropConnect"]
