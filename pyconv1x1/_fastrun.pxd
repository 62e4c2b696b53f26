# The run() fast path, shared by every kernel variant (declarations for cimport).

cdef class DirectChain:
    cdef object _try(self, object x)


cdef class SessionBase:
    cdef public DirectChain _fast_chain
    cdef public object _fast_input
