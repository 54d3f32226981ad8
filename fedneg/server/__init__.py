"""Server side: the Flower ServerApp, its strategy and the run's records."""
