"""Compiled committee kernels (numba): one pass over each item's (members, classes) block.

numpy scores a committee in a pass per step (the members' mean, a log of every probability, a sum
of products), each over the whole (M, n, C) array: at 1M x 100 x 5 float32 that is 2 GB read four
times. These kernels read each item's members once, while they are in cache, and run on the
callers' threads (they release the GIL).

The float32 log is a polynomial that vectorizes (numba's own ``log`` calls libm one value at a
time): the exponent and mantissa come from the float's bits, the mantissa is brought into
[sqrt(1/2), sqrt(2)) and ``log(1 + z)`` is ``z - z^2/2 + z^3 P(z)`` with a degree-7 ``P`` fitted
on Chebyshev nodes of that interval (error 1e-8, below float32's resolution). Its largest error
against a float64 log is 1e-6 absolute, relative 1.2e-7, as numpy's float32 log. ``log(0)``
comes out -88.03 (finite), so ``0 * log 0 = 0`` needs no special case.

Kernels write ``out[start:stop]`` for items ``start..stop-1`` of a C-contiguous committee.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar, cast

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

log = logging.getLogger(__name__)
_F = TypeVar("_F", bound=Callable[..., Any])


def compiled(**options: Any) -> Callable[[_F], _F]:
    """``njit(cache=True, **options)``, or without the on-disk cache where numba finds no
    writable place for it (next to this file, ``NUMBA_CACHE_DIR`` or the user's cache
    directory): such a process compiles on first use instead of failing to import."""

    def wrap(function: _F) -> _F:
        try:
            return cast(_F, njit(cache=True, **options)(function))
        except RuntimeError as error:  # numba: "cannot cache function ...: no locator available"
            log.info("numba cache unavailable (%s); compiling %s per process", error, function)
            return cast(_F, njit(**options)(function))

    return wrap


_LN2 = np.float32(np.log(2.0))
_SQRT2 = np.float32(np.sqrt(2.0))
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)
# log(1 + z) = z - z^2/2 + z^3 P(z) on z in [sqrt(1/2) - 1, sqrt(2) - 1], P's coefficients from
# z^0 up: a least-squares fit of (log1p(z) - z + z^2/2) / z^3 on 4,000 Chebyshev nodes.
_P0, _P1, _P2, _P3, _P4, _P5, _P6, _P7 = (
    np.float32(c)
    for c in (
        0.33333329,
        -0.25000297,
        0.20001471,
        -0.16642251,
        0.14202114,
        -0.12972145,
        0.12712679,
        -0.0810227,
    )
)


def _exponent_mantissa_typing(typingctx: Any, x: Any) -> Any:
    """float32 ``x`` -> (its binary exponent, its mantissa in [1, 2)), both float32.

    In 32-bit integer arithmetic on the float's bits (numba's integer arithmetic widens to 64
    bits, which does not vectorize with float32)."""
    pair: Any = types.UniTuple
    signature = pair(types.float32, 2)(types.float32)

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        i32 = ir.IntType(32)
        bits = builder.bitcast(args[0], i32)
        exponent = builder.sub(builder.lshr(bits, ir.Constant(i32, 23)), ir.Constant(i32, 127))
        mantissa = builder.or_(
            builder.and_(bits, ir.Constant(i32, 0x7FFFFF)), ir.Constant(i32, 0x3F800000)
        )
        parts = (
            builder.sitofp(exponent, ir.FloatType()),
            builder.bitcast(mantissa, ir.FloatType()),
        )
        return context.make_tuple(builder, sig.return_type, parts)

    return signature, codegen


_exponent_mantissa: Any = intrinsic(_exponent_mantissa_typing)


def _as_float_typing(typingctx: Any, bits: Any) -> Any:
    """The float whose bit pattern is ``bits`` (int32 -> float32, int64 -> float64)."""
    signature = (types.float32 if bits.bitwidth == 32 else types.float64)(bits)

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        return builder.bitcast(args[0], context.get_value_type(sig.return_type))

    return signature, codegen


_as_float: Any = intrinsic(_as_float_typing)


@compiled(fastmath=True, nogil=True, error_model="numpy", inline="always")
def log32(x: Any) -> Any:
    """Natural log of a non-negative, finite float32 (``log(0)`` = -88.03)."""
    exponent, y = _exponent_mantissa(x)
    high = np.float32(y > _SQRT2)
    y = y - _HALF * high * y
    z = y - _ONE
    z2 = z * z
    p = _P7 * z + _P6
    p = p * z + _P5
    p = p * z + _P4
    p = p * z + _P3
    p = p * z + _P2
    p = p * z + _P1
    p = p * z + _P0
    return (exponent + high) * _LN2 + (z - _HALF * z2 + z2 * z * p)


@compiled(fastmath=True, nogil=True, error_model="numpy")
def log32_into(x: Any, out: Any) -> None:
    """``out[i] = log32(x[i])`` over 1-D float32 arrays."""
    for i in range(x.shape[0]):
        out[i] = log32(x[i])


@compiled(fastmath=True, nogil=True, error_model="numpy", inline="always")
def _members_pass(committee: Any, row: int, mean: Any, own: Any) -> None:
    """One read of an item's members: ``own[m] = sum_c p log p`` and ``mean`` their average."""
    n_members, _, n_classes = committee.shape
    mean[:] = 0.0
    for m in range(n_members):
        total = np.float32(0.0)
        for c in range(n_classes):
            p = committee[m, row, c]
            total += p * log32(p)
            mean[c] += p
        own[m] = total
    mean *= np.float32(1.0 / n_members)


@compiled(fastmath=True, nogil=True, error_model="numpy")
def bald32(committee: Any, start: int, stop: int, out: Any) -> None:
    """BALD, ``max(H(mean) - mean_m H(p_m), 0)``, of a float32 (M, n, C) committee."""
    n_members, _, n_classes = committee.shape
    mean = np.empty(n_classes, dtype=np.float32)
    own = np.empty(n_members, dtype=np.float32)
    for row in range(start, stop):
        _members_pass(committee, row, mean, own)
        consensus = np.float32(0.0)
        for c in range(n_classes):
            consensus += mean[c] * log32(mean[c])
        out[row] = max(np.float64(own.sum()) / n_members - consensus, 0.0)


@compiled(fastmath=True, nogil=True, error_model="numpy")
def kl_consensus32(committee: Any, start: int, stop: int, out: Any) -> None:
    """Largest ``KL(p_m || mean)`` over the members of a float32 (M, n, C) committee, >= 0."""
    n_members, _, n_classes = committee.shape
    mean = np.empty(n_classes, dtype=np.float32)
    own = np.empty(n_members, dtype=np.float32)
    for row in range(start, stop):
        _members_pass(committee, row, mean, own)
        for c in range(n_classes):
            mean[c] = log32(mean[c])
        largest = 0.0
        for m in range(n_members):
            cross = np.float32(0.0)
            for c in range(n_classes):
                cross += committee[m, row, c] * mean[c]
            largest = max(largest, own[m] - cross)
        out[row] = largest


@compiled(nogil=True)
def vote_entropy(bits: Any, start: int, stop: int, out: Any, table: Any) -> None:
    """Entropy of the members' hard votes (each member's first largest class).

    ``bits`` is the committee viewed as integers of its float width (``view(np.int32)`` of float32
    probabilities, ``int64`` of float64): non-negative floats order as their bit patterns do, and
    integer max and min reductions vectorize where float ones do not. ``table[k]`` is
    ``-(1/M) log(k/M)``: the entropy sums, in member order, the entry for the number of members
    voting as that member does.
    """
    n_members, _, n_classes = bits.shape
    votes = np.empty(n_members, dtype=np.int64)
    for row in range(start, stop):
        for m in range(n_members):
            best = bits[m, row, 0]
            for c in range(n_classes):
                best = max(best, bits[m, row, c])
            vote = n_classes
            for c in range(n_classes):  # the first class holding it, as argmax picks
                vote = min(vote, c if bits[m, row, c] == best else n_classes)
            votes[m] = vote
        entropy = 0.0
        for m in range(n_members):
            agree = 0
            for other in range(n_members):
                agree += votes[other] == votes[m]
            entropy += table[agree]
        out[row] = entropy


@compiled(nogil=True)
def margin(bits: Any, start: int, stop: int, out: Any, zero: Any) -> None:
    """``1 - (top1 - top2)`` of (n, C) probabilities given as ``bits`` (as :func:`vote_entropy`'s),
    C >= 2; ``zero`` is 0 in the bits' integer type. Two equal largest values: margin 0."""
    n_classes = bits.shape[1]
    for row in range(start, stop):
        best = bits[row, 0]
        for c in range(n_classes):
            best = max(best, bits[row, c])
        ties = 0
        second = zero  # 0.0: every other value is >= 0
        for c in range(n_classes):
            value = bits[row, c]
            ties += value == best
            second = max(second, value if value < best else zero)
        if ties > 1:
            second = best
        out[row] = 1.0 - (np.float64(_as_float(best)) - np.float64(_as_float(second)))
