"""fastnn.nn: Module, Parameter, layers and model save/load."""
from .module import Module, Parameter, load, from_config
from .layers import (Activation, ELU, Flatten, GELU, Identity, LeakyReLU, Linear, Maxout, PReLU, ReLU, SELU,
                     Sequential, Sigmoid, Step, Swish, Tanh)
from .batchnorm import BatchNorm1d, BatchNorm2d
from .regularization import DropConnect, Dropout
from .conv import (AvgPool2d, Conv2d, FractionalMaxPool2d, GlobalAvgPool2d, MaxPool2d, Residual,
                   stochastic_depth_probs)

__all__ = ["Module", "Parameter", "load", "from_config", "Activation", "ELU", "Flatten", "GELU",
           "Identity", "LeakyReLU", "Linear", "Maxout", "PReLU", "ReLU", "SELU", "Sequential", "Sigmoid",
           "Step", "Swish", "Tanh", "BatchNorm1d", "BatchNorm2d", "Dropout", "DropConnect", "Conv2d", "MaxPool2d",
           "AvgPool2d", "FractionalMaxPool2d", "GlobalAvgPool2d", "Residual", "stochastic_depth_probs"]
