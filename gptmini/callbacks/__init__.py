"""Lightning callbacks, one file per family: step-0 checks, throughput, samples, progress bar, fault guard."""
