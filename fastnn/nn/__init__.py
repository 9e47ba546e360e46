"""fastnn.nn: Module, Parameter, layers and model save/load."""
from .module import Module, Parameter, load, from_config
from .layers import (Activation, ELU, Flatten, GELU, Identity, LeakyReLU, Linear, Maxout, PReLU, ReLU, SELU,
                     Sequential, Sigmoid, Swish, Tanh)

__all__ = ["Module", "Parameter", "load", "from_config", "Activation", "ELU", "Flatten", "GELU",
           "Identity", "LeakyReLU", "Linear", "Maxout", "PReLU", "ReLU", "SELU", "Sequential", "Sigmoid", "Swish",
           "Tanh"]
