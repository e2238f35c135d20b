"""ebm-cli: a Hydra experiment runner for energy-based models p_θ(x) = exp(−E_θ(x)) / Z_θ."""

__version__ = "0.1.0"
