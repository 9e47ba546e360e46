"""Integer codes shared with csrc/ (Act and Rule enums); tests check they match _C."""

ACTIVATIONS = ("identity", "relu", "leaky_relu", "prelu", "elu", "selu",
               "sigmoid", "tanh", "gelu", "gelu_tanh", "swish")
ACT_CODE = {name: i for i, name in enumerate(ACTIVATIONS)}
# Activations whose derivative needs the pre-activation z (not just the output y).
SAVES_PREACTIVATION = frozenset({"prelu", "gelu", "gelu_tanh", "swish"})

RULES = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw")
RULE_CODE = {name: i for i, name in enumerate(RULES)}
# Columns of the optimizer hyperparameter table, one row per flat-buffer segment.
HYPER_FIELDS = ("lr", "weight_decay", "l1", "momentum", "alpha", "beta1", "beta2", "eps",
                "bias_correction1", "bias_correction2", "grad_scale")
