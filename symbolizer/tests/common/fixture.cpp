// C++ fixture: templates, namespaces, overloads and lambdas, for demangling.
#include <algorithm>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

namespace smolder {
namespace detail {
template <typename T>
inline T square(T v) { return v * v; }
}  // namespace detail

struct Histogram {
    std::map<int, int> buckets;
    __attribute__((noinline)) void add(int v) { buckets[v / 10] += 1; }
    __attribute__((noinline)) void add(double v) { add(static_cast<int>(v)); }
    __attribute__((noinline)) int total() const {
        int t = 0;
        for (const auto &kv : buckets) t += detail::square(kv.second);
        return t;
    }
};

template <typename It>
__attribute__((noinline)) long sum_sorted(It begin, It end) {
    std::sort(begin, end, [](auto a, auto b) { return a > b; });
    long s = 0;
    for (It i = begin; i != end; ++i) s += detail::square<long>(*i);
    return s;
}
}  // namespace smolder

int main(int argc, char **argv) {
    smolder::Histogram h;
    std::vector<int> v;
    for (int i = 0; i < 100 + argc; i++) {
        v.push_back((i * 37) % 101);
        h.add(i * 1.5);
    }
    std::string s(argv[0]);
    std::printf("%ld %d %zu\n", smolder::sum_sorted(v.begin(), v.end()), h.total(), s.size());
    return 0;
}
