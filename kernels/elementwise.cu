// Small elementwise kernels (ElementwiseParams in params_elementwise.h): embedding gather, residual
// add, SwiGLU, row gather and strided copy, for f32, bf16 and f16.
//
// All are memory bound: each thread moves 16-byte packs (8 bf16/f16, 4 f32) when every pointer
// and row stride allows it, one element otherwise; the choice is made once per launch from the
// params, so it is uniform. A flat grid-stride loop over (row, pack) items with int64 indices
// covers any shape (a 2D grid would idle most lanes on narrow rows and overflow gridDim.y on long
// sequences). Arithmetic is in f32, rounded to T once.
#include "common.cuh"
#include "params.h"

namespace fh1_elementwise {
using namespace fh1;

// VEC consecutive elements moved as one access (16 bytes, or one element for VEC = 1).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
    T v[VEC];
};

__device__ __forceinline__ bool aligned16(const void* ptr) {
    return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0;
}

enum class Op { Embedding, Add, Swiglu, Gather, Copy };

// Whether every matrix the op touches can be read in 16-byte packs: the width, each row stride
// and each base pointer a multiple of 16 bytes.
template <typename T, Op OP>
__device__ __forceinline__ bool can_vectorize(const ElementwiseParams& p) {
    constexpr int V = 16 / sizeof(T);
    bool ok = p.cols % V == 0 && p.out_row_stride % V == 0 && aligned16(p.out)
        && p.x_row_stride % V == 0 && aligned16(p.x);
    if (OP == Op::Add || OP == Op::Swiglu) ok = ok && p.y_row_stride % V == 0 && aligned16(p.y);
    return ok;
}

__device__ __forceinline__ float silu(float g) { return g / (1.f + expf(-g)); }

template <typename T, int VEC, Op OP>
__device__ __forceinline__ void run(const ElementwiseParams& p) {
    using P = Pack<T, VEC>;
    const int64_t packs = p.cols / VEC;
    const int64_t total = p.rows * packs;
    const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
        const int64_t r = i / packs;
        const int64_t c = (i - r * packs) * VEC;  // first element of the pack
        P* out = reinterpret_cast<P*>(static_cast<T*>(p.out) + r * p.out_row_stride + c);
        if constexpr (OP == Op::Embedding || OP == Op::Gather) {
            const int64_t src = p.idx[r];
            P o;
            if (src >= 0 && src < p.vocab) {
                o = *reinterpret_cast<const P*>(static_cast<const T*>(p.x) + src * p.x_row_stride + c);
            } else {
#pragma unroll
                for (int k = 0; k < VEC; ++k) o.v[k] = from_f32<T>(0.f);
            }
            *out = o;
        } else if constexpr (OP == Op::Copy) {
            *out = *reinterpret_cast<const P*>(static_cast<const T*>(p.x) + r * p.x_row_stride + c);
        } else {
            const P a = *reinterpret_cast<const P*>(static_cast<const T*>(p.x) + r * p.x_row_stride + c);
            const P b = *reinterpret_cast<const P*>(static_cast<const T*>(p.y) + r * p.y_row_stride + c);
            P o;
#pragma unroll
            for (int k = 0; k < VEC; ++k) {
                const float xa = to_f32(a.v[k]), yb = to_f32(b.v[k]);
                // Add: x + y. SwiGLU: x is the gate, y the up projection: up * silu(gate).
                o.v[k] = from_f32<T>(OP == Op::Add ? xa + yb : yb * silu(xa));
            }
            *out = o;
        }
    }
}

template <typename T, Op OP>
__device__ __forceinline__ void dispatch(const ElementwiseParams& p) {
    if (can_vectorize<T, OP>(p)) {
        run<T, 16 / sizeof(T), OP>(p);
    } else {
        run<T, 1, OP>(p);
    }
}

// Greedy token choice on the device, so that a decode step copies back one int per sequence
// instead of a [batch, vocab] row of logits (at batch 32 and a 130k vocab, 16 MB and a host
// scan per step). Block r scans row r of x [rows, cols] (row stride x_row_stride) and writes
// the column of its largest value to ((int32_t*)out)[r]: the first one on ties, like
// torch.argmax; NaN never wins (a row of NaN gives 0). Each thread keeps its own best over a
// strided sweep (coalesced loads), then warp shuffles and one shared-memory pass merge them.
constexpr int ARGMAX_THREADS = 1024;

__device__ __forceinline__ void better(float& v, int64_t& i, float ov, int64_t oi) {
    // ov wins if larger, or equal and earlier; NaN compares false and never wins.
    if (ov > v || (ov == v && oi < i)) {
        v = ov;
        i = oi;
    }
}

template <typename T>
__device__ __forceinline__ void argmax_row(const ElementwiseParams& p) {
    __shared__ float sv[ARGMAX_THREADS / 32];
    __shared__ int64_t si[ARGMAX_THREADS / 32];
    const int64_t r = blockIdx.x;
    const T* x = static_cast<const T*>(p.x) + r * p.x_row_stride;
    float v = -INFINITY;
    int64_t i = INT64_MAX;
    for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) better(v, i, to_f32(x[c]), c);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, v, o);
        const int64_t oi = __shfl_xor_sync(0xffffffffu, i, o);
        better(v, i, ov, oi);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        sv[warp] = v;
        si[warp] = i;
    }
    __syncthreads();
    if (warp == 0) {
        const int nw = blockDim.x >> 5;
        v = lane < nw ? sv[lane] : -INFINITY;
        i = lane < nw ? si[lane] : INT64_MAX;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, v, o);
            const int64_t oi = __shfl_xor_sync(0xffffffffu, i, o);
            better(v, i, ov, oi);
        }
        if (lane == 0) static_cast<int32_t*>(p.out)[r] = i == INT64_MAX ? 0 : static_cast<int32_t>(i);
    }
}

}  // namespace fh1_elementwise

// Launch: grid (rows), block ARGMAX_THREADS; reads x, x_row_stride, rows, cols; out is int32 [rows].
extern "C" __global__ void __launch_bounds__(1024) argmax_rows_f32(ElementwiseParams p) {
    fh1_elementwise::argmax_row<float>(p);
}
extern "C" __global__ void __launch_bounds__(1024) argmax_rows_bf16(ElementwiseParams p) {
    fh1_elementwise::argmax_row<__nv_bfloat16>(p);
}
extern "C" __global__ void __launch_bounds__(1024) argmax_rows_f16(ElementwiseParams p) {
    fh1_elementwise::argmax_row<__half>(p);
}

// Launch: 1D grid of 256-thread blocks, any size (grid-stride), no dynamic shared memory.
#define FH1_ELEMENTWISE_KERNELS(NAME, OP)                                                                   \
    extern "C" __global__ void __launch_bounds__(256) NAME##_f32(ElementwiseParams p) {                     \
        fh1_elementwise::dispatch<float, fh1_elementwise::Op::OP>(p);                                       \
    }                                                                                                       \
    extern "C" __global__ void __launch_bounds__(256) NAME##_bf16(ElementwiseParams p) {                    \
        fh1_elementwise::dispatch<__nv_bfloat16, fh1_elementwise::Op::OP>(p);                               \
    }                                                                                                       \
    extern "C" __global__ void __launch_bounds__(256) NAME##_f16(ElementwiseParams p) {                     \
        fh1_elementwise::dispatch<__half, fh1_elementwise::Op::OP>(p);                                      \
    }

FH1_ELEMENTWISE_KERNELS(embedding, Embedding)
FH1_ELEMENTWISE_KERNELS(add, Add)
FH1_ELEMENTWISE_KERNELS(swiglu, Swiglu)
FH1_ELEMENTWISE_KERNELS(gather_rows, Gather)
FH1_ELEMENTWISE_KERNELS(copy, Copy)

#undef FH1_ELEMENTWISE_KERNELS
