"""bench.generalize: the learning loop on five public tasks of different shapes (see __main__)."""
