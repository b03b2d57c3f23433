"""Training with torch (the `train` extra): full fine-tuning, LoRA adapters, and small models
from scratch with their own tokenizer. `train` is what `llmos train` runs."""

from llmos.train.trainer import (STATE_FILE, TrainResult, evaluate_loss, save_checkpoint_folder, train,
                                 train_from_scratch, train_tokenizer)

__all__ = ["train", "train_from_scratch", "train_tokenizer", "evaluate_loss", "save_checkpoint_folder",
           "TrainResult", "STATE_FILE"]
