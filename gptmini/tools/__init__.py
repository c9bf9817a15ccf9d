"""Tools beside the library: the exercises and the curve plots."""
