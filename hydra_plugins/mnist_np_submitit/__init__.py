"""mnist-np's submitit launchers (``hydra/launcher=mnist_np_submitit_slurm`` or ``..._local``, used by
``+sweep=slurm``)."""
