"""The Lightning layer: the LightningModule, the DataModule, the CLI wiring and the pre-fit checks."""
