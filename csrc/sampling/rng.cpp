// rng.cpp: SeedSequence and PCG64 exactly as numpy (see rng.h for the layout of each step).
#include "sampling/rng.h"

#include <random>

namespace lowbit::sampling {
namespace {
constexpr uint32_t kInitA = 0x43b0d7e5, kMultA = 0x931e8875;
constexpr uint32_t kInitB = 0x8b51f9dd, kMultB = 0x58f38ded;
constexpr uint32_t kMixL = 0xca01f9dd, kMixR = 0x4973f715;
constexpr int kXShift = 16, kPoolSize = 4;

struct HashMix {
    uint32_t hash_const = kInitA;
    uint32_t operator()(uint32_t value) {
        value ^= hash_const;
        hash_const *= kMultA;
        value *= hash_const;
        return value ^ (value >> kXShift);
    }
};

uint32_t mix(uint32_t x, uint32_t y) {
    uint32_t r = kMixL * x - kMixR * y;
    return r ^ (r >> kXShift);
}
}  // namespace

std::vector<uint64_t> seed_sequence_state(const std::vector<uint32_t>& entropy, int n_words64) {
    uint32_t pool[kPoolSize];
    HashMix hashmix;                       // one hash constant runs through all mixing below
    for (int i = 0; i < kPoolSize; ++i)
        pool[i] = hashmix(i < int(entropy.size()) ? entropy[i] : 0u);
    for (int src = 0; src < kPoolSize; ++src)
        for (int dst = 0; dst < kPoolSize; ++dst)
            if (src != dst) pool[dst] = mix(pool[dst], hashmix(pool[src]));
    for (size_t src = kPoolSize; src < entropy.size(); ++src)
        for (int dst = 0; dst < kPoolSize; ++dst) pool[dst] = mix(pool[dst], hashmix(entropy[src]));

    std::vector<uint64_t> out(size_t(n_words64), 0);
    uint32_t hash_const = kInitB;
    for (int i = 0; i < 2 * n_words64; ++i) {
        uint32_t v = pool[i % kPoolSize] ^ hash_const;
        hash_const *= kMultB;
        v *= hash_const;
        v ^= v >> kXShift;
        out[size_t(i / 2)] |= uint64_t(v) << (32 * (i % 2));   // uint32 pairs viewed as uint64 (LE)
    }
    return out;
}

std::vector<uint32_t> seed_words(uint64_t seed) {
    std::vector<uint32_t> words{uint32_t(seed)};
    if (seed >> 32) words.push_back(uint32_t(seed >> 32));
    return words;
}

Pcg64::Pcg64(const std::vector<uint32_t>& seed_words) {
    std::vector<uint32_t> entropy = seed_words;
    if (entropy.empty()) {                 // numpy's default_rng(None): 128 bits from the OS
        std::random_device dev;
        for (int i = 0; i < 4; ++i) entropy.push_back(dev());
    }
    const std::vector<uint64_t> w = seed_sequence_state(entropy, 4);
    const unsigned __int128 state0 = (static_cast<unsigned __int128>(w[0]) << 64) | w[1];
    const unsigned __int128 stream = (static_cast<unsigned __int128>(w[2]) << 64) | w[3];
    inc_ = (stream << 1) | 1;
    state_ = 0;
    step();
    state_ += state0;
    step();
}

uint64_t Pcg64::next64() {
    step();
    const uint64_t hi = uint64_t(state_ >> 64), lo = uint64_t(state_);
    const unsigned rot = unsigned(state_ >> 122);
    const uint64_t x = hi ^ lo;
    return (x >> rot) | (x << ((64 - rot) & 63));
}

}  // namespace lowbit::sampling
