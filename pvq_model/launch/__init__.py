"""Launchers (layer 3): how a training run is started. Every launcher runs the same entry point,
``python -m pvq_model.train --config C --out RUN_DIR [--set key=value ...]``, which reads RANK /
WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT from the environment the launcher gives it.

* :mod:`.geometry` - nodes x processes per node, from the config or the command line;
* :mod:`.plan` - :class:`~.plan.LaunchRequest` -> :class:`~.plan.LaunchPlan`, the exact command;
* :mod:`.torchrun` (``local``), :mod:`.hostfile` (``deepspeed``), :mod:`.slurm` (sbatch script,
  submit, poll) - the command builders;
* :mod:`.memory` - DeepSpeed's ZeRO-3 model-state estimate for a dry run;
* :mod:`.cli` - :func:`~.cli.run` and ``python -m pvq_model.launch``.

Nothing is imported here.
"""
