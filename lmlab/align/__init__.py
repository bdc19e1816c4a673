"""Alignment: supervised fine-tuning on conversations (and, to come, reward models, PPO, DPO,
rejection sampling and Constitutional AI), through the one Trainer."""
