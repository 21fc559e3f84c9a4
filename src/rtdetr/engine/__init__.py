"""The one training engine: a LightningModule, its data, callbacks and trainer set-up."""
