"""cmt: Consistency Mid-Training as an offline, sharded pipeline.

teacher -> solver -> store -> reader -> objective -> training loop -> checkpoint -> sampler -> evaluation.
"""

__version__ = "0.1.0"
