# cython: language_level=3
"""InferenceSession.run without a Python frame, built once for every kernel variant.

InferenceSession subclasses SessionBase, so `session.run` is this C method: a model that
is one fused chain, fed (as its only input, all outputs wanted) a C-contiguous float32
array of the shape the previous full run validated, runs straight through the variant's
BoundChain (a DirectChain); anything else, or any doubt, goes to the session's fully
checked `_run`. The session holds its fast path itself, so no reference cycle keeps a
dropped session (and its weights) alive until the cyclic GC runs."""


cdef class DirectChain:
    """Base of each kernel variant's BoundChain: `_try(x)` returns the output for a feed
    it can run directly, else None."""

    cdef object _try(self, object x):
        return None


cdef class SessionBase:
    """Base of InferenceSession: owns the fast path (`_fast_chain` for feeds of the
    shape `_fast_input` last validated at)."""

    def run(self, output_names, input_feed, run_options=None):
        """run(output_names, input_feed, run_options=None) -> list of arrays: the
        session's run (see InferenceSession._run)."""
        # a strong reference for the whole call: another thread may replace the fast
        # chain, and its plan may be evicted, while this one runs without the GIL
        cdef DirectChain chain = self._fast_chain
        cdef object y
        if (chain is not None and run_options is None and type(input_feed) is dict
                and len(<dict>input_feed) == 1
                and (output_names is None
                     or (type(output_names) is list and not output_names))):
            try:
                y = chain._try((<dict>input_feed).get(self._fast_input))
            except MemoryError:
                y = None  # the checked path reports it as pyconv1x1.Error
            if y is not None:
                return [y]
        return self._run(output_names, input_feed, run_options)
