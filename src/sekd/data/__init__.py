"""Data preparation: corpora, noises, rooms, mixtures and datasets.

The data steps map over a :class:`sekd.parallel.WorkerPool`. Every task is a pure function of its
arguments (its own seed, its own output file), so results and files are identical whatever the
number of workers.
"""
