"""One adapter per runtime; each turns a model file into a :class:`Session`."""
