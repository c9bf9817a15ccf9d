"""``gptmini`` (the console script, installed as gptmini.commands:main) and ``python -m gptmini``:
fit/validate go to the LightningCLI (gptmini.cli), the plain commands (gptmini.entry.COMMANDS) run
without importing Lightning."""

import sys

from gptmini.entry import run_command


def main(args: list[str] | None = None) -> int:
    """Run one command; returns 0 when it finished (other statuses leave through SystemExit)."""
    argv = sys.argv[1:] if args is None else list(args)
    if run_command(argv):  # before anything imports Lightning
        return 0
    from gptmini.cli import main as cli_main  # Lightning is imported only for fit/validate

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
