"""Lightning callbacks, one file per family: pre-training checks, throughput, samples, progress bar, fault guard."""
