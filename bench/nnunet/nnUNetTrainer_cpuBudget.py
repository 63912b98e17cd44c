"""nnU-Net v2 trainers with the reduced budgets QUALITY.md's baseline runs on a 2-core CPU.

bench/nnunet_baseline.sh copies this file into nnunetv2's trainer folder, where
`nnUNetv2_train -tr NAME` finds the classes. They change the length of training and save a
checkpoint after every epoch (so `--c` resumes an interrupted run); nothing else differs from
nnUNetTrainer (its poly learning-rate schedule spans the shorter run).
"""
import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_cpuBudget(nnUNetTrainer):
    """10 epochs of 50 iterations: 500 of the default 250,000 (0.2%)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 10
        self.num_iterations_per_epoch = 50
        self.num_val_iterations_per_epoch = 10
        self.save_every = 1
