"""Training: the shared LightningModule, batches, Trainer and the train stage function."""
