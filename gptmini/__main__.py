import sys

from gptmini.commands import main

sys.exit(main())
