"""Test helper: write genuine Python-2 pickles (bytes as py2 `str`), like mnist.pkl.gz and CIFAR."""

import io
import pickle
import struct


class Py2Pickler(pickle._Pickler):
    """Protocol-2 pickler writing `bytes` as Python 2 `str` (BINSTRING), like the real files."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_pickle(obj) -> bytes:
    """`obj` pickled with protocol 2 as Python 2 would write it."""
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()
