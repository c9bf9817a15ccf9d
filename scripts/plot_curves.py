"""Draw a run's curves from its TensorBoard event files: ``python scripts/plot_curves.py RUN_DIR -o out.png``.

See gptmini/tools/curves.py; this wrapper exists so the README's picture has a one-line command.
"""

from gptmini.tools.curves import main

if __name__ == "__main__":
    main()
