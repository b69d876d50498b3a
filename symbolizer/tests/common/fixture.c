/* Fixture for smolder-symbolizer tests: inlining at several depths, a cold
 * split, recursion, callbacks. `fixture serve` prints function addresses and
 * an anonymous executable region (for perf maps), then sleeps. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

static volatile unsigned sink;
static unsigned table[256];

static inline __attribute__((always_inline)) unsigned mix(unsigned x) {
    x ^= x >> 13;
    x *= 0x5bd1e995u;
    return x ^ (x >> 15);
}

static inline __attribute__((always_inline)) unsigned step(unsigned acc, unsigned i) {
    return mix(acc + i) + (i & 7u);
}

static inline unsigned checksum(const unsigned char *p, size_t n) {
    unsigned acc = 0;
    for (size_t i = 0; i < n; i++)
        acc = step(acc, p[i]) ^ table[(acc + i) & 255u];
    return acc;
}

__attribute__((noinline)) unsigned hash_buffer(const unsigned char *p, size_t n) {
    return checksum(p, n) ^ mix((unsigned)n);
}

__attribute__((noinline)) void fill_table(unsigned seed) {
    for (unsigned i = 0; i < 256; i++)
        table[i] = step(seed, i);
}

__attribute__((noinline, cold)) void report_failure(const char *what, unsigned code) {
    fprintf(stderr, "failure: %s (%u)\n", what, code);
    sink = code;
}

__attribute__((noinline)) unsigned long fib(unsigned n) {
    if (n < 2)
        return n;
    return fib(n - 1) + fib(n - 2);
}

struct point { int x, y; };

static inline int dist2(const struct point *a) { return a->x * a->x + a->y * a->y; }

static int by_distance(const void *a, const void *b) {
    int da = dist2(a), db = dist2(b);
    return (da > db) - (da < db);
}

__attribute__((noinline)) int sort_points(struct point *pts, size_t n) {
    qsort(pts, n, sizeof *pts, by_distance);
    int acc = 0;
    for (size_t i = 0; i < n; i++) {
        if (pts[i].x < -1000)
            report_failure("point out of range", (unsigned)i);
        acc += dist2(&pts[i]);
    }
    return acc;
}

static inline __attribute__((always_inline)) int clamp(int v, int lo, int hi) {
    return v < lo ? lo : v > hi ? hi : v;
}

static inline __attribute__((always_inline)) int blur3(const int *v, size_t i, size_t n) {
    int l = i > 0 ? v[i - 1] : v[i];
    int r = i + 1 < n ? v[i + 1] : v[i];
    return clamp((l + 2 * v[i] + r) / 4, 0, 255);
}

__attribute__((noinline)) void blur(int *out, const int *in, size_t n) {
    for (size_t i = 0; i < n; i++)
        out[i] = blur3(in, i, n);
}

__attribute__((noinline)) size_t count_words(const char *s) {
    size_t words = 0;
    int in_word = 0;
    for (; *s; s++) {
        int space = *s == ' ' || *s == '\n' || *s == '\t';
        if (!space && !in_word)
            words++;
        in_word = !space;
    }
    return words;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "serve") == 0) {
        void *jit = mmap(NULL, 1 << 16, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (jit == MAP_FAILED)
            return 1;
        printf("hash_buffer %p\nfill_table %p\nfib %p\nsort_points %p\nblur %p\ncount_words %p\nmain %p\njit %p\n",
               (void *)hash_buffer, (void *)fill_table, (void *)fib, (void *)sort_points,
               (void *)blur, (void *)count_words, (void *)main, jit);
        printf("ready\n");
        fflush(stdout);
        for (;;)
            pause();
    }
    fill_table((unsigned)argc);
    unsigned char buf[64];
    for (unsigned i = 0; i < sizeof buf; i++)
        buf[i] = (unsigned char)(i * 7u + (unsigned)argc);
    struct point pts[16];
    for (int i = 0; i < 16; i++) {
        pts[i].x = (i * 37) % 11 - 5;
        pts[i].y = (i * 13) % 7 - 3;
    }
    int in[32], out[32];
    for (int i = 0; i < 32; i++)
        in[i] = (i * 53) % 300;
    blur(out, in, 32);
    printf("%u %lu %d %d %zu\n", hash_buffer(buf, sizeof buf), fib(20), sort_points(pts, 16), out[5],
           count_words(argc > 1 ? argv[1] : "a few words here"));
    return 0;
}
