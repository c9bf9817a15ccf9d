from gptmini.cli import main

main()
