"""Fused LSQ kernels in C for CPU tensors: one pass forward, one pass backward (the "native" LSQ backend).

The eager backend spends its time in element-wise passes (a division, clamp, round and multiply forward;
about eight passes backward), the compiled one in torch.compile's start-up. These kernels do, per element
and per candidate k, exactly what ``_eager_forward`` / ``_eager_backward`` of :mod:`mpqbench.quant.lsq` do
— x = v / s_k (a true division), q = round(clamp(x, Q_N, Q_P)) (round half to even), the strict inside mask
Q_N < x < Q_P — in one read of ``v`` (and of the upstream gradient), with the candidates mixed in registers:

- forward: out = Σ_k c_k · q_k with c_k = s_k (fixed precision) or s_k · p_k (supernet mixture);
- backward: ∂L/∂v = Σ_k p_k · [inside_k] · grad (p = 1 without mixing), and the sums
  ds_k = Σ grad · (inside_k ? q_k − x_k : q_k) and gq_k = Σ grad · q_k: float32 lanes over chunks of 512
  elements (at most 32 terms per lane), chunk sums added in float64, in fixed blocks, so the result does
  not depend on how many threads ran (and is closer to the exact sum than a float32 dot product).

Inputs are float32 (contiguous copies are made when needed) or bfloat16 (read as float32 exactly; the
output is rounded back to bfloat16, round-to-nearest-even as torch's cast); steps are per tensor or per
channel along dim 0. Anything else (CUDA, other dtypes, a channel dim other than 0, tracing modes) is left
to the caller's eager path (:func:`supports` says which).

The C source below is compiled once per machine with the system C compiler (``$CC``, else the one
Python was built with, ``cc``, ``gcc``, ``clang``; about a second) into ``$MPQBENCH_CACHE_DIR`` (default ``$XDG_CACHE_HOME/mpqbench`` or
``~/.cache/mpqbench``), ``kernels/lsq-<hash>.so``, written atomically (concurrent jobs may both build; the
last rename wins, both files are identical), and loaded with ctypes (no torch headers, no Python
extension ABI: the library is plain C on raw pointers). On x86-64 Linux with GCC the hot loops get
AVX-512 / AVX2 / baseline clones chosen at load time, so a cache shared between different CPUs stays
valid. Without a compiler :func:`load` returns None and says why in :func:`load_error`.
With several torch threads the per-tensor kernels run over block ranges on a small thread pool (ctypes
releases the GIL), block sums added in block order: same numbers for any thread count.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
from pathlib import Path

import torch
from torch import Tensor

BLOCK = 1 << 14  # elements per block of a per-tensor kernel (the unit of partial sums and of threading)
_MIN_PARALLEL = 1 << 16  # fewer elements than this run on the calling thread

_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define MPQ_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MPQ_CLONES
#endif
#define INLINE static inline __attribute__((always_inline))

#define CHUNK 512  /* elements kept in L1 while the K candidates pass over them */
enum { F32 = 0, BF16 = 1 };

INLINE float clampf(float x, float lo, float hi) { return x < lo ? lo : (x > hi ? hi : x); }

INLINE void load_bf16(const uint16_t *restrict in, float *restrict out, int64_t m) {
#pragma omp simd
    for (int64_t j = 0; j < m; j++) { uint32_t u = (uint32_t)in[j] << 16; float f; memcpy(&f, &u, 4); out[j] = f; }
}
INLINE void store_bf16(const float *restrict in, uint16_t *restrict out, int64_t m) {
#pragma omp simd
    for (int64_t j = 0; j < m; j++) {  /* round to nearest even, as torch's cast; NaN stays NaN */
        uint32_t u; memcpy(&u, &in[j], 4);
        uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16, quiet = (u >> 16) | 0x40u;
        out[j] = (uint16_t)(((u & 0x7fffffffu) > 0x7f800000u) ? quiet : r);
    }
}

/* o[j] = sum_k round(clamp(x[j] / s_k, lo_k, hi_k)) * c_k over one chunk. */
INLINE void fwd_chunk(const float *restrict x, float *restrict o, int64_t m, int32_t K, const float *restrict step,
                      const float *restrict coef, int64_t sstride, const float *restrict lo, const float *restrict hi) {
    float s = step[0], c = coef[0], l = lo[0], h = hi[0];
#pragma omp simd
    for (int64_t j = 0; j < m; j++) o[j] = rintf(clampf(x[j] / s, l, h)) * c;
    for (int32_t k = 1; k < K; k++) {
        s = step[k * sstride]; c = coef[k * sstride]; l = lo[k]; h = hi[k];
#pragma omp simd
        for (int64_t j = 0; j < m; j++) o[j] += rintf(clampf(x[j] / s, l, h)) * c;
    }
}

/* One candidate over one chunk: dv (first: store, else add; NULL: skip) and the chunk's sums of
   g*(inside ? q - x : q) and g*q (float lanes over at most CHUNK/4 terms each, then added in float64). */
INLINE void bwd_one(const float *restrict x, const float *restrict gr, float *restrict d, int64_t m, float s,
                    float l, float h, float p, int first, int want_gq, double *acc_ds, double *acc_gq) {
    float a = 0.0f, b = 0.0f;
    if (d && first && want_gq) {
#pragma omp simd reduction(+:a, b)
        for (int64_t j = 0; j < m; j++) {
            float xs = x[j] / s, q = rintf(clampf(xs, l, h)); int in = (xs > l) & (xs < h);
            a += gr[j] * (in ? q - xs : q); b += gr[j] * q; d[j] = in ? gr[j] * p : 0.0f;
        }
    } else if (d && want_gq) {
#pragma omp simd reduction(+:a, b)
        for (int64_t j = 0; j < m; j++) {
            float xs = x[j] / s, q = rintf(clampf(xs, l, h)); int in = (xs > l) & (xs < h);
            a += gr[j] * (in ? q - xs : q); b += gr[j] * q; d[j] += in ? gr[j] * p : 0.0f;
        }
    } else if (d) {  /* K = 1 without mixing weights: no gq, p = 1 */
#pragma omp simd reduction(+:a)
        for (int64_t j = 0; j < m; j++) {
            float xs = x[j] / s, q = rintf(clampf(xs, l, h)); int in = (xs > l) & (xs < h);
            a += gr[j] * (in ? q - xs : q); d[j] = in ? gr[j] : 0.0f;
        }
    } else if (want_gq) {
#pragma omp simd reduction(+:a, b)
        for (int64_t j = 0; j < m; j++) {
            float xs = x[j] / s, q = rintf(clampf(xs, l, h)); int in = (xs > l) & (xs < h);
            a += gr[j] * (in ? q - xs : q); b += gr[j] * q;
        }
    } else {
#pragma omp simd reduction(+:a)
        for (int64_t j = 0; j < m; j++) {
            float xs = x[j] / s, q = rintf(clampf(xs, l, h)); int in = (xs > l) & (xs < h);
            a += gr[j] * (in ? q - xs : q);
        }
    }
    *acc_ds += (double)a;
    *acc_gq += (double)b;
}

INLINE void bwd_chunk(const float *restrict x, const float *restrict gr, float *restrict d, int64_t m, int32_t K,
                      const float *restrict step, int64_t sstride, const float *restrict prob,
                      const float *restrict lo, const float *restrict hi, int want_gq, double *acc_ds,
                      double *acc_gq) {
    for (int32_t k = 0; k < K; k++)
        bwd_one(x, gr, d, m, step[k * sstride], lo[k], hi[k], prob ? prob[k] : 1.0f, k == 0, want_gq,
                &acc_ds[k], &acc_gq[k]);
}

/* One contiguous segment of n elements sharing the steps step[k*sstride] (k < K), in float32 or bfloat16
   (bf16: each chunk read into float32, computed in float32, rounded back once). */
MPQ_CLONES
static void fwd_segment(const void *v, void *out, int32_t dtype, int64_t n, int32_t K, const float *step,
                        const float *coef, int64_t sstride, const float *lo, const float *hi) {
    float xb[CHUNK], ob[CHUNK];
    for (int64_t j0 = 0; j0 < n; j0 += CHUNK) {
        int64_t m = n - j0 < CHUNK ? n - j0 : CHUNK;
        if (dtype == F32) {
            fwd_chunk((const float *)v + j0, (float *)out + j0, m, K, step, coef, sstride, lo, hi);
        } else {
            load_bf16((const uint16_t *)v + j0, xb, m);
            fwd_chunk(xb, ob, m, K, step, coef, sstride, lo, hi);
            store_bf16(ob, (uint16_t *)out + j0, m);
        }
    }
}

/* Backward of one segment: dv (may be NULL) and the float64 sums ds[k], gq[k] (gq may be NULL; prob NULL
   means K = 1 without mixing). */
MPQ_CLONES
static void bwd_segment(const void *v, const void *g, void *dv, int32_t dtype, int64_t n, int32_t K,
                        const float *step, int64_t sstride, const float *prob, const float *lo, const float *hi,
                        double *ds, double *gq) {
    double acc_ds[64], acc_gq[64];
    float xb[CHUNK], gb[CHUNK], db[CHUNK];
    for (int32_t k = 0; k < K; k++) { acc_ds[k] = 0.0; acc_gq[k] = 0.0; }
    for (int64_t j0 = 0; j0 < n; j0 += CHUNK) {
        int64_t m = n - j0 < CHUNK ? n - j0 : CHUNK;
        if (dtype == F32) {
            bwd_chunk((const float *)v + j0, (const float *)g + j0, dv ? (float *)dv + j0 : 0, m, K, step, sstride,
                      prob, lo, hi, gq != 0, acc_ds, acc_gq);
        } else {
            load_bf16((const uint16_t *)v + j0, xb, m);
            load_bf16((const uint16_t *)g + j0, gb, m);
            bwd_chunk(xb, gb, dv ? db : 0, m, K, step, sstride, prob, lo, hi, gq != 0, acc_ds, acc_gq);
            if (dv) store_bf16(db, (uint16_t *)dv + j0, m);
        }
    }
    for (int32_t k = 0; k < K; k++) { ds[k] = acc_ds[k]; if (gq) gq[k] = acc_gq[k]; }
}

static int64_t elem_size(int32_t dtype) { return dtype == F32 ? 4 : 2; }

/* Blocks [b0, b1) of a tensor of n elements viewed as rows of L elements (row r uses steps column r;
   per-tensor steps: one row), each block `block` elements within one row. */
void mpq_lsq_forward(const void *v, void *out, int32_t dtype, int64_t n, int64_t L, int64_t block, int64_t b0,
                     int64_t b1, int32_t K, int64_t C, const float *step, const float *coef, const float *lo,
                     const float *hi) {
    int64_t es = elem_size(dtype);
    for (int64_t b = b0; b < b1; b++) {
        int64_t i = b * block, e = i + block < n ? i + block : n, r = i / L;
        fwd_segment((const char *)v + i * es, (char *)out + i * es, dtype, e - i, K, step + r, coef + r, C, lo, hi);
    }
}

/* Partial sums per block: ds_part[b*K + k], gq_part[b*K + k] (gq_part may be NULL). */
void mpq_lsq_backward(const void *v, const void *g, void *dv, int32_t dtype, int64_t n, int64_t L, int64_t block,
                      int64_t b0, int64_t b1, int32_t K, int64_t C, const float *step, const float *prob,
                      const float *lo, const float *hi, double *ds_part, double *gq_part) {
    int64_t es = elem_size(dtype);
    for (int64_t b = b0; b < b1; b++) {
        int64_t i = b * block, e = i + block < n ? i + block : n, r = i / L;
        bwd_segment((const char *)v + i * es, (const char *)g + i * es, dv ? (char *)dv + i * es : 0, dtype, e - i,
                    K, step + r, C, prob, lo, hi, ds_part + b * K, gq_part ? gq_part + b * K : 0);
    }
}

/* out[k] = sum over b of part[b*K + k], in block order. */
void mpq_sum_blocks(const double *part, int64_t blocks, int32_t K, double *out) {
    for (int32_t k = 0; k < K; k++) out[k] = 0.0;
    for (int64_t b = 0; b < blocks; b++)
        for (int32_t k = 0; k < K; k++) out[k] += part[b * K + k];
}

int mpq_lsq_abi(void) { return 2; }
"""

_FLAGS = ["-O3", "-std=c99", "-shared", "-fPIC", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off",
          "-fopenmp-simd"]

_lib: ctypes.CDLL | None = None
_error: str | None = None
_tried = False
_pool = None


def cache_dir() -> Path:
    """Where built kernels live: $MPQBENCH_CACHE_DIR, else $XDG_CACHE_HOME/mpqbench, else ~/.cache/mpqbench."""
    if os.environ.get("MPQBENCH_CACHE_DIR"):
        return Path(os.environ["MPQBENCH_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mpqbench"


def _compiler() -> str | None:
    import shutil
    import sysconfig

    candidates = [os.environ.get("CC", "")]
    cc = sysconfig.get_config_var("CC")
    if cc:
        candidates.append(cc.split()[0])
    candidates += ["cc", "gcc", "clang"]
    for name in candidates:
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _library_path(cc: str) -> Path:
    import hashlib
    import platform

    key = hashlib.sha256("\0".join([_SOURCE, cc, *_FLAGS, platform.machine(), sys.platform]).encode())
    suffix = ".dll" if sys.platform == "win32" else ".so"
    return cache_dir() / "kernels" / f"lsq-{key.hexdigest()[:16]}{suffix}"


def _build(cc: str, target: Path) -> None:
    import subprocess
    import tempfile

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / "lsq.c"
        src.write_text(_SOURCE)
        out = Path(tmp) / target.name
        res = subprocess.run([cc, *_FLAGS, str(src), "-o", str(out), "-lm"], capture_output=True, text=True,
                             timeout=300)
        if res.returncode != 0:
            tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"{Path(cc).name} failed: {' '.join(tail)}")
        os.replace(out, target)


def load() -> ctypes.CDLL | None:
    """The kernel library (built on first use on this machine), or None when it cannot be built/loaded."""
    global _lib, _error, _tried
    if _tried:
        return _lib
    _tried = True
    try:
        cc = _compiler()
        if cc is None:
            raise RuntimeError("no C compiler found (set $CC or install gcc/clang)")
        path = _library_path(cc)
        if not path.exists():
            _build(cc, path)
        lib = ctypes.CDLL(str(path))
        if lib.mpq_lsq_abi() != 2:
            raise RuntimeError(f"{path} has another ABI; delete it")
        i64, i32, ptr = ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p
        lib.mpq_lsq_forward.argtypes = [ptr, ptr, i32, i64, i64, i64, i64, i64, i32, i64, ptr, ptr, ptr, ptr]
        lib.mpq_lsq_forward.restype = None
        lib.mpq_lsq_backward.argtypes = [ptr, ptr, ptr, i32, i64, i64, i64, i64, i64, i32, i64, ptr, ptr, ptr,
                                         ptr, ptr, ptr]
        lib.mpq_lsq_backward.restype = None
        lib.mpq_sum_blocks.argtypes = [ptr, i64, i32, ptr]
        lib.mpq_sum_blocks.restype = None
        _lib = lib
    except Exception as err:  # noqa: BLE001 - any build/load problem means: use the eager kernels
        _error = f"{type(err).__name__}: {err}"
        _lib = None
    return _lib


def load_error() -> str | None:
    """Why :func:`load` returned None (after a call to it), else None."""
    return _error


_DTYPES = {torch.float32: 0, torch.bfloat16: 1}


def supports(v: Tensor, steps: Tensor) -> bool:
    """Whether the kernels handle ``v`` with ``steps`` [K, *S] (S = [] or per channel along dim 0)."""
    if v.dtype not in _DTYPES or steps.dtype != torch.float32 or v.is_cuda or v.device.type != "cpu":
        return False
    sdim, k = steps.dim(), (steps.shape[0] if steps.dim() else 0)
    if not 1 <= k <= 64 or steps.device.type != "cpu" or v.numel() == 0:
        return False
    if sdim == 1:
        return True
    return sdim - 1 == v.dim() and v.shape[0] == steps.shape[1] and math.prod(steps.shape[2:]) == 1


def _geometry(v: Tensor, steps: Tensor) -> tuple[int, int, int, int]:
    """(n, C, L, block): n elements as C rows of L; blocks never straddle rows."""
    n = v.numel()
    c = 1 if steps.dim() <= 1 else steps.shape[1]
    length = n // c
    block = length if c > 1 else min(BLOCK, n)
    return n, c, length, block


def _ranges(blocks: int, n: int) -> list[tuple[int, int]]:
    threads = torch.get_num_threads()
    if threads <= 1 or n < _MIN_PARALLEL or blocks < 2:
        return [(0, blocks)]
    parts = min(threads, blocks)
    edges = [blocks * i // parts for i in range(parts + 1)]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]


def _run(call, ranges: list[tuple[int, int]]) -> None:
    """call(b0, b1) over the block ranges; all but the first on the pool (ctypes drops the GIL)."""
    global _pool
    if len(ranges) == 1:
        call(*ranges[0])
        return
    if _pool is None or _pool._max_workers < len(ranges) - 1:  # noqa: SLF001
        from concurrent.futures import ThreadPoolExecutor

        _pool = ThreadPoolExecutor(max_workers=len(ranges) - 1, thread_name_prefix="mpq-lsq")
    futures = [_pool.submit(call, a, b) for a, b in ranges[1:]]
    call(*ranges[0])
    for f in futures:
        f.result()


_BOUNDS: dict[tuple, tuple[ctypes.Array, ctypes.Array]] = {}


def _bounds(bounds) -> tuple[ctypes.Array, ctypes.Array]:
    """(Q_N per candidate, Q_P per candidate) as C float arrays (cached: a handful of bit-width sets)."""
    key = tuple(bounds)
    arrays = _BOUNDS.get(key)
    if arrays is None:
        k = len(key)
        arrays = (ctypes.c_float * k)(*(float(lo) for lo, _ in key)), (ctypes.c_float * k)(*(float(hi) for _, hi in key))
        _BOUNDS[key] = arrays
    return arrays


def forward(v: Tensor, steps: Tensor, probs: Tensor | None, bounds) -> Tensor:
    """Σ_k c_k · round(clamp(v / s_k, Q_N,k, Q_P,k)), c_k = s_k (probs None) or s_k · p_k, in v's dtype and shape.

    steps: [K, *S] float32; probs: [K] or None; bounds: K × (Q_N, Q_P). The arithmetic is float32 (a
    bfloat16 ``v`` is read exactly as float32 and the result rounded to bfloat16 once).
    """
    lib = _lib if _lib is not None else load()
    k = len(bounds)
    step = _rows(steps, k)
    coef = step if probs is None else (step * probs.detach().view(k, 1)).contiguous()
    x = v.detach() if v.is_contiguous() else v.detach().contiguous()
    n, c, length, block = _geometry(x, steps)
    out = torch.empty(x.shape, dtype=x.dtype)
    lo, hi = _bounds(bounds)
    blocks = -(-n // block)
    args = (k, c, step.data_ptr(), coef.data_ptr(), lo, hi)
    xp, op, dt = x.data_ptr(), out.data_ptr(), _DTYPES[x.dtype]
    _run(lambda b0, b1: lib.mpq_lsq_forward(xp, op, dt, n, length, block, b0, b1, *args),
         _ranges(blocks, n) if c == 1 else [(0, blocks)])
    return out


def backward(v: Tensor, grad: Tensor, steps: Tensor, probs: Tensor | None, bounds, need_input_grad: bool = True
             ) -> tuple[Tensor | None, Tensor, Tensor | None]:
    """(∂L/∂v or None, ds [K, *S], gq [K, *S] or None without probs); ∂L/∂v in v's dtype, the sums float32.

    ds_k = Σ grad · (Q_N,k < x_k < Q_P,k ? q_k − x_k : q_k) (the LSQ ∂v̂/∂s before the gradient scale and
    the mixing weight), gq_k = Σ grad · q_k, summed per step element; ∂L/∂v = Σ_k p_k · [inside_k] · grad
    (p_k = 1 when probs is None), computed in float32. ``grad`` is read in v's dtype.
    """
    lib = _lib if _lib is not None else load()
    k = len(bounds)
    step = _rows(steps, k)
    prob = None if probs is None else probs.detach().float().contiguous()
    x = v.detach() if v.is_contiguous() else v.detach().contiguous()
    g = grad.detach()
    if g.dtype != x.dtype:
        g = g.to(x.dtype)
    if not g.is_contiguous():
        g = g.contiguous()
    n, c, length, block = _geometry(x, steps)
    dv = torch.empty(x.shape, dtype=x.dtype) if need_input_grad else None
    blocks = -(-n // block)
    ds_part = torch.empty(blocks, k, dtype=torch.float64)
    gq_part = None if prob is None else torch.empty(blocks, k, dtype=torch.float64)
    lo, hi = _bounds(bounds)
    head = (x.data_ptr(), g.data_ptr(), None if dv is None else dv.data_ptr(), _DTYPES[x.dtype], n, length, block)
    tail = (k, c, step.data_ptr(), None if prob is None else prob.data_ptr(), lo, hi, ds_part.data_ptr(),
            None if gq_part is None else gq_part.data_ptr())
    _run(lambda b0, b1: lib.mpq_lsq_backward(*head, b0, b1, *tail), _ranges(blocks, n) if c == 1 else [(0, blocks)])
    ds, gq = _block_sums(ds_part, c, lib), _block_sums(gq_part, c, lib)
    shape = steps.shape
    return dv, ds.float().reshape(shape), None if gq is None else gq.float().reshape(shape)


def _rows(steps: Tensor, k: int) -> Tensor:
    """steps [K, *S] as a contiguous [K, C] float32 view (C = 1 per tensor)."""
    step = steps.detach()
    return step.view(k, -1) if step.is_contiguous() else step.reshape(k, -1).contiguous()


def _block_sums(part: Tensor | None, channels: int, lib: ctypes.CDLL) -> Tensor | None:
    """[K, C] sums from the per-block partials: per tensor the blocks are added in block order (the same for
    any thread count); per channel there is one block per channel."""
    if part is None:
        return None
    if channels > 1:
        return part.t()
    out = torch.empty(part.shape[1], dtype=torch.float64)
    lib.mpq_sum_blocks(part.data_ptr(), part.shape[0], part.shape[1], out.data_ptr())
    return out
