"""How runs are started: Hydra's submitit launchers, Hydra callbacks around a multirun, and
composing ``configs/`` outside ``@hydra.main``."""
