"""InfMAE engine: the exact InfMAE model, its eager reference, and a fast pretraining stack."""

__version__ = "0.1.0"
