/* The single-token decoding step of tinytales.model.GPT in C: one new token per row through the
 * KV cache, float32, every architecture option of GPTConfig.
 *
 * Why C: at batch 1 a token of a 4-layer model is ~60 small tensor operations; in eager PyTorch
 * each costs microseconds of dispatch, which is most of the time for models this small. Here the
 * whole step is one call and one OpenMP parallel region (PyTorch's own OpenMP runtime and thread
 * count), the products read weights packed in tiles of 64 output rows (see product), and nothing
 * is allocated. tinytales/decode_kernel.py is the Python side (ctypes, packing); tests/test_decode_kernel.py
 * checks this step against the PyTorch one for every option.
 *
 * Layouts (all contiguous float32, row-major; everything but the products' weights as PyTorch holds it):
 *   tokens  (B,) int64 with a stride      keys/values (n_layer, B, n_kv_head, max_len, head_dim)
 *   logits  (B, vocab)                    work        (B, tt_work_floats_per_row(model, max_len))
 *   product weights (tiles, in, 64)       embeddings, norms, biases, RoPE tables as in the model
 * The arithmetic is forward's: pre-norm blocks, q/k/v rows of the qkv product in that order,
 * QK-norm before RoPE on consecutive pairs (2i, 2i+1), grouped-query heads, tanh GELU, SiLU gate.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__) && defined(__has_attribute)
#if __has_attribute(target_clones)
/* one build runs everywhere and uses AVX-512 or AVX2 + FMA where the CPU has them */
#define HOT __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
#endif
#ifndef HOT
#define HOT
#endif

enum { NORM_LAYER = 0, NORM_RMS = 1 };
enum { ACT_GELU = 0, ACT_SWIGLU = 1, ACT_RELU2 = 2 };

typedef struct {
    const float *norm1_w, *norm1_b;
    /* the products' weights are packed in tiles (see product); their biases are plain */
    const float *qkv_w, *qkv_b;                               /* ((nh + 2 nkv) hs, C) */
    const float *q_norm_w, *q_norm_b, *k_norm_w, *k_norm_b;   /* (hs,), qk_norm only */
    const float *proj_w, *proj_b;                             /* (C, C) */
    const float *norm2_w, *norm2_b;
    const float *fc_w, *fc_b;                                 /* (H, C) */
    const float *gate_w, *gate_b;                             /* (H, C), SwiGLU only */
    const float *down_w, *down_b;                             /* (C, H) */
} Layer;

typedef struct {
    int32_t n_layer, n_head, n_kv_head, head_dim, n_embd, mlp_hidden, vocab_size, context_length;
    int32_t norm, activation, rope, qk_norm;
    float norm_eps;
    const float *tok_emb;              /* (V, C) */
    const float *pos_emb;              /* (context, C), learned positions only */
    const float *rope_cos, *rope_sin;  /* (context, hs / 2), RoPE only */
    const float *norm_f_w, *norm_f_b;
    const float *lm_head;              /* (V, C), packed */
    const Layer *layers;               /* (n_layer,) */
} Model;

/* Scratch of one row: x, normed x, qkv, attention output, MLP up and gate, attention scores. */
static int64_t qkv_dim(const Model *m) { return (int64_t)(m->n_head + 2 * m->n_kv_head) * m->head_dim; }

int64_t tt_work_floats_per_row(const Model *m, int32_t max_len) {
    return 3 * (int64_t)m->n_embd + qkv_dim(m) + 2 * (int64_t)m->mlp_hidden + (int64_t)m->n_head * max_len;
}

/* ------------------------------------------------------------------------------------------ exp */

/* exp(x) in float32 to within 1e-7 relative (Cephes' expf polynomial, range reduction by ln 2), written
 * so that loops over it vectorize: libm's expf is a call per element (8x slower here). Clamped to
 * [-87, 88]: the results stay normal floats, never 0 or inf. */
static inline __attribute__((always_inline)) float exp_approx(float x) {
    x = x > -87.0f ? x : -87.0f;  /* plain comparisons: fminf/fmaxf would not vectorize */
    x = x < 88.0f ? x : 88.0f;
    const float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round(x / ln 2): 1.5 * 2^23 */
    const float r = x - k * 0.693359375f + k * 2.12194440e-4f;              /* x - k ln 2 in two parts */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;  /* exp(r) */
    union { float f; int32_t i; } bits = {p};
    bits.i += (int32_t)k * (1 << 23);  /* times 2^k */
    return bits.f;
}

/* ------------------------------------------------------------------------------------------ norms */

static void norm_row(const Model *m, const float *x, const float *w, const float *b, float *out, int n) {
    if (m->norm == NORM_RMS) {
        float squares = 0.0f;
        for (int i = 0; i < n; i++) squares += x[i] * x[i];
        const float scale = 1.0f / sqrtf(squares / n + m->norm_eps);
        for (int i = 0; i < n; i++) out[i] = x[i] * scale * w[i];
        return;
    }
    float sum = 0.0f;
    for (int i = 0; i < n; i++) sum += x[i];
    const float mean = sum / n;
    float var = 0.0f;
    for (int i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
    const float scale = 1.0f / sqrtf(var / n + m->norm_eps);
    for (int i = 0; i < n; i++) out[i] = (x[i] - mean) * scale * w[i] + (b ? b[i] : 0.0f);
}

/* ------------------------------------------------------------------------------------------ products */

#define TILE 64             /* output rows per tile of a packed weight */
#define PREFETCH_BYTES 8192 /* how far ahead of the product the weights are asked for */

/* One tile: y[b, 0:TILE] (+)= bias + W_tile . x[b] for nb (1-4, a constant once inlined) rows b.
 * w is the tile (n_in, TILE): for each input i the TILE weights of its outputs, contiguous, so the
 * accumulators are plain vectors and no dot product ends in a horizontal sum. */
static inline __attribute__((always_inline)) void tile_product(const float *w, const float *bias, const float *x,
                                                               int64_t x_stride, float *y, int64_t y_stride,
                                                               int n_in, int n_valid, int accumulate, const int nb) {
    float acc[4][TILE] __attribute__((aligned(64))) = {{0}};
    for (int i = 0; i < n_in; i++) {
        const float *wi = w + (int64_t)i * TILE;
        for (int k = 0; k < TILE * (int)sizeof(float); k += 64) __builtin_prefetch((const char *)wi + PREFETCH_BYTES + k);
        for (int b = 0; b < nb; b++) {
            const float xi = x[b * x_stride + i];
#pragma omp simd
            for (int j = 0; j < TILE; j++) acc[b][j] += xi * wi[j];
        }
    }
    for (int b = 0; b < nb; b++) {
        float *yb = y + b * y_stride;
        for (int j = 0; j < n_valid; j++) {
            const float v = acc[b][j] + (bias ? bias[j] : 0.0f);
            yb[j] = accumulate ? yb[j] + v : v;
        }
    }
}

/* y[b, o] (+)= bias[o] + W[o, :] . x[b, :] for every row b and the outputs of tiles [t0, t1) of the packed
 * weight W (tiles, n_in, TILE) (see tinytales.decode_kernel.pack: W's rows padded with zeros to whole tiles). */
HOT static void product(const float *W, const float *bias, const float *x, int64_t x_stride, float *y,
                        int64_t y_stride, int B, int n_in, int n_out, int t0, int t1, int accumulate) {
    for (int t = t0; t < t1; t++) {
        const float *w = W + (int64_t)t * n_in * TILE;
        const int o = t * TILE, n_valid = n_out - o < TILE ? n_out - o : TILE;
        const float *tile_bias = bias ? bias + o : NULL;
        for (int b0 = 0; b0 < B; b0 += 4) {  /* four rows at a time share each load of the weights */
            const float *xb = x + b0 * x_stride;
            float *yb = y + b0 * y_stride + o;
            switch (B - b0 < 4 ? B - b0 : 4) {
                case 1: tile_product(w, tile_bias, xb, x_stride, yb, y_stride, n_in, n_valid, accumulate, 1); break;
                case 2: tile_product(w, tile_bias, xb, x_stride, yb, y_stride, n_in, n_valid, accumulate, 2); break;
                case 3: tile_product(w, tile_bias, xb, x_stride, yb, y_stride, n_in, n_valid, accumulate, 3); break;
                default: tile_product(w, tile_bias, xb, x_stride, yb, y_stride, n_in, n_valid, accumulate, 4); break;
            }
        }
    }
}

/* This thread's share [*t0, *t1) of the tiles of n_out output rows (static schedule, no barrier). */
static void my_tiles(int n_out, int *t0, int *t1) {
#ifdef _OPENMP
    const int threads = omp_get_num_threads(), me = omp_get_thread_num();
#else
    const int threads = 1, me = 0;
#endif
    const int tiles = (n_out + TILE - 1) / TILE, per = (tiles + threads - 1) / threads;
    *t0 = me * per < tiles ? me * per : tiles;
    *t1 = (me + 1) * per < tiles ? (me + 1) * per : tiles;
}

/* Every thread computes its share of the output rows; the caller's barrier follows. */
static void shared_product(const float *W, const float *bias, const float *x, int64_t x_stride, float *y,
                           int64_t y_stride, int B, int n_in, int n_out, int accumulate) {
    int t0, t1;
    my_tiles(n_out, &t0, &t1);
    if (t0 < t1) product(W, bias, x, x_stride, y, y_stride, B, n_in, n_out, t0, t1, accumulate);
}

/* ------------------------------------------------------------------------------------------ attention */

static void rotate_pairs(float *v, const float *cos_row, const float *sin_row, int half) {
    for (int i = 0; i < half; i++) {
        const float re = v[2 * i], im = v[2 * i + 1];
        v[2 * i] = re * cos_row[i] - im * sin_row[i];
        v[2 * i + 1] = re * sin_row[i] + im * cos_row[i];
    }
}

/* softmax(q . K[t] / sqrt(hs), t <= pos) . V for one query head; K, V (max_len, hs) of its kv head. */
HOT static void attend(const float *q, const float *K, const float *V, int positions, int hs, float *scores,
                       float *out) {
    const float scale = 1.0f / sqrtf((float)hs);
    float best = -INFINITY;
    for (int t = 0; t < positions; t++) {
        const float *k = K + (int64_t)t * hs;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int i = 0; i < hs; i++) s += q[i] * k[i];
        scores[t] = s * scale;
        best = scores[t] > best ? scores[t] : best;
    }
    float total = 0.0f;
#pragma omp simd reduction(+ : total)
    for (int t = 0; t < positions; t++) {
        scores[t] = exp_approx(scores[t] - best);
        total += scores[t];
    }
    const float inv = 1.0f / total;
    for (int i = 0; i < hs; i++) out[i] = 0.0f;
    for (int t = 0; t < positions; t++) {
        const float p = scores[t] * inv, *v = V + (int64_t)t * hs;
#pragma omp simd
        for (int i = 0; i < hs; i++) out[i] += p * v[i];
    }
}

/* ------------------------------------------------------------------------------------------ the step */

/* The MLP's hidden units up[i] for i in [o0, o1): SiLU(gate) * up, ReLU(up)^2, or tanh-GELU(up). */
HOT static void activate(int activation, float *up, const float *gate, int o0, int o1) {
    if (activation == ACT_SWIGLU) {
#pragma omp simd
        for (int i = o0; i < o1; i++) up[i] *= gate[i] / (1.0f + exp_approx(-gate[i]));
    } else if (activation == ACT_RELU2) {
#pragma omp simd
        for (int i = o0; i < o1; i++) up[i] = up[i] > 0.0f ? up[i] * up[i] : 0.0f;
    } else {
        const float k = 0.7978845608028654f; /* sqrt(2 / pi) */
#pragma omp simd
        for (int i = o0; i < o1; i++) {
            const float x = up[i], tanh_u = 1.0f - 2.0f / (exp_approx(2.0f * k * (x + 0.044715f * x * x * x)) + 1.0f);
            up[i] = 0.5f * x * (1.0f + tanh_u);
        }
    }
}

/* One new token per row b: tokens[b * token_stride] at position positions[b] of cache row slots[b] (rows of
 * one story each, at their own lengths: continuous batching; plain decoding passes one position and rows
 * 0..B-1). The cache holds cache_rows rows of max_len positions. Writes each row's key and value at its
 * position and its next-token logits (row b of logits). Returns 0, or -1 for bad arguments. */
int tt_step(const Model *m, const int64_t *tokens, int64_t token_stride, int32_t B, const int32_t *positions,
            const int32_t *slots, int32_t cache_rows, float *keys, float *values, int32_t max_len, float *logits,
            float *work) {
    if (B < 1 || cache_rows < 1) return -1;
    for (int b = 0; b < B; b++) {
        if (tokens[b * token_stride] < 0 || tokens[b * token_stride] >= m->vocab_size) return -1;
        if (positions[b] < 0 || positions[b] >= max_len || positions[b] >= m->context_length) return -1;
        if (slots[b] < 0 || slots[b] >= cache_rows) return -1;
    }
    const int C = m->n_embd, H = m->mlp_hidden, hs = m->head_dim, nh = m->n_head, nkv = m->n_kv_head;
    const int64_t Q = qkv_dim(m), row = tt_work_floats_per_row(m, max_len);
    const int group = nh / nkv;  /* query heads per kv head */
    /* per row b: x, xn, qkv, att, up, gate, scores at work + b * row + these offsets */
    const int64_t X = 0, XN = C, QKV = 2 * C, ATT = 2 * C + Q, UP = 3 * C + Q, GATE = UP + H, SC = GATE + H;
    const int64_t layer_stride = (int64_t)cache_rows * nkv * max_len * hs;

#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int b = 0; b < B; b++) {
            float *x = work + b * row + X;
            const float *e = m->tok_emb + tokens[b * token_stride] * C;
            const int64_t pos = positions[b];
            for (int i = 0; i < C; i++) x[i] = e[i] + (m->pos_emb ? m->pos_emb[pos * C + i] : 0.0f);
        }
        for (int l = 0; l < m->n_layer; l++) {
            const Layer *L = &m->layers[l];
#pragma omp for schedule(static)
            for (int b = 0; b < B; b++) norm_row(m, work + b * row + X, L->norm1_w, L->norm1_b, work + b * row + XN, C);
            shared_product(L->qkv_w, L->qkv_b, work + XN, row, work + QKV, row, B, C, (int)Q, 0);
#pragma omp barrier
            /* queries and keys: QK-norm, RoPE; keys and values into the cache */
#pragma omp for schedule(static)
            for (int bh = 0; bh < B * (nh + nkv); bh++) {
                const int b = bh / (nh + nkv), h = bh % (nh + nkv);
                float *v = work + b * row + QKV + (int64_t)h * hs;
                const int64_t pos = positions[b];
                if (m->qk_norm) {
                    float normed[hs];
                    if (h < nh) norm_row(m, v, L->q_norm_w, L->q_norm_b, normed, hs);
                    else norm_row(m, v, L->k_norm_w, L->k_norm_b, normed, hs);
                    memcpy(v, normed, sizeof(float) * hs);
                }
                if (m->rope)
                    rotate_pairs(v, m->rope_cos + pos * (hs / 2), m->rope_sin + pos * (hs / 2), hs / 2);
                if (h >= nh) {
                    const int64_t at = l * layer_stride + ((int64_t)slots[b] * nkv + (h - nh)) * max_len * hs + pos * hs;
                    memcpy(keys + at, v, sizeof(float) * hs);
                    memcpy(values + at, v + (int64_t)nkv * hs, sizeof(float) * hs);
                }
            }
#pragma omp for schedule(static)
            for (int bh = 0; bh < B * nh; bh++) {
                const int b = bh / nh, h = bh % nh;
                const int64_t at = l * layer_stride + ((int64_t)slots[b] * nkv + h / group) * max_len * hs;
                attend(work + b * row + QKV + (int64_t)h * hs, keys + at, values + at, positions[b] + 1, hs,
                       work + b * row + SC + (int64_t)h * max_len, work + b * row + ATT + (int64_t)h * hs);
            }
            shared_product(L->proj_w, L->proj_b, work + ATT, row, work + X, row, B, C, C, 1);  /* x += proj(att) */
#pragma omp barrier
#pragma omp for schedule(static)
            for (int b = 0; b < B; b++) norm_row(m, work + b * row + X, L->norm2_w, L->norm2_b, work + b * row + XN, C);
            {
                int t0, t1;
                my_tiles(H, &t0, &t1);
                const int o0 = t0 * TILE, o1 = t1 * TILE < H ? t1 * TILE : H;
                if (t0 < t1) {
                    product(L->fc_w, L->fc_b, work + XN, row, work + UP, row, B, C, H, t0, t1, 0);
                    if (m->activation == ACT_SWIGLU)
                        product(L->gate_w, L->gate_b, work + XN, row, work + GATE, row, B, C, H, t0, t1, 0);
                    for (int b = 0; b < B; b++) activate(m->activation, work + b * row + UP, work + b * row + GATE, o0, o1);
                }
            }
#pragma omp barrier
            shared_product(L->down_w, L->down_b, work + UP, row, work + X, row, B, H, C, 1);  /* x += down(mlp) */
#pragma omp barrier
        }
#pragma omp for schedule(static)
        for (int b = 0; b < B; b++) norm_row(m, work + b * row + X, m->norm_f_w, m->norm_f_b, work + b * row + XN, C);
        shared_product(m->lm_head, NULL, work + XN, row, logits, m->vocab_size, B, C, m->vocab_size, 0);
    }
    return 0;
}

/* A module, so that setuptools builds this file and tinytales.decode_kernel can find it; the
 * functions above are called through ctypes. */
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_decode",
                                    "The single-token decoding step in C (see tinytales.decode_kernel).", -1, NULL};

PyMODINIT_FUNC PyInit__decode(void) { return PyModule_Create(&module); }
