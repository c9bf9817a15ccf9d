"""Lightning's log lines that gptmini quiets (its advertisements), installed by the CLI at start
(:func:`quiet_adverts`), not as a side effect of importing gptmini."""

import logging

# Lightning 2.6 logs these at every Trainer start (without a LitLogger / with a plain
# ModelCheckpoint): advertisements for its cloud packages, not information about the run.
ADVERTS = ("pypi.org/project/litlogger", "pypi.org/project/litmodels")
# Lightning's rank_zero_info logs to this logger (lightning.pytorch.utilities.rank_zero).
LOGGER = "lightning.pytorch.utilities.rank_zero"


class NoAdverts(logging.Filter):
    """A filter on the logger Lightning logs them to: the supported way to quiet single records
    (Lightning has no switch for them); its other lines stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(ad in msg for ad in ADVERTS)


def quiet_adverts() -> None:
    """Drop Lightning's advertisement lines from its log (once per process)."""
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(f, NoAdverts) for f in logger.filters):
        logger.addFilter(NoAdverts())
