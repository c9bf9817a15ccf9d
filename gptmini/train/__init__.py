"""The Lightning layer: the LightningModule, the DataModule, the setting errors raised before fit, the rename table."""

import logging

# Lightning 2.6 logs these at every Trainer start (without a LitLogger / with a plain
# ModelCheckpoint): advertisements for its cloud packages, not information about the run.
ADVERTS = ("pypi.org/project/litlogger", "pypi.org/project/litmodels")


class _NoAdverts(logging.Filter):
    """A filter on the logger Lightning logs them to: the supported way to quiet single records
    (Lightning has no switch for them); its other lines stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(ad in msg for ad in ADVERTS)


# Lightning's rank_zero_info logs to this logger (lightning.pytorch.utilities.rank_zero).
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdverts())
