"""The Lightning layer: the LightningModule, the DataModule, the setting errors raised before fit, the rename table."""
