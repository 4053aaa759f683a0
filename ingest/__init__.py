"""Loading and splitting policy files into chunks, and writing them to the index."""
