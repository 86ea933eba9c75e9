"""How runs are started: Hydra's submitit launchers, Hydra callbacks around a multirun, and
prediction from a checkpoint alone (``predict.py``)."""
