"""The pipeline's submitit launchers (``configs/hydra/launcher/{slurm,local}.yaml``).

Hydra instantiates launchers only from the ``hydra_plugins`` namespace; the behaviour is in
``tasks/common/launch/launchers.py``. Without the ``cluster`` extra (hydra-submitit-launcher) this
module defines nothing, and the basic launcher works as before.
"""

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
        LocalLauncher,
        SlurmLauncher,
    )
except ImportError:  # pragma: no cover - the cluster extra is not installed
    pass
else:
    from tasks.common.launch.launchers import PipelineLauncherMixin

    class StampSlurmLauncher(PipelineLauncherMixin, SlurmLauncher):
        """``hydra/launcher=slurm``: one SLURM array task per sweep job, Lightning's layout."""

        set_trainer_layout = True

    class StampLocalLauncher(PipelineLauncherMixin, LocalLauncher):
        """``hydra/launcher=local``: submitit's local executor (subprocesses, no scheduler)."""
