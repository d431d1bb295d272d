// rng.h: numpy's default_rng(seed) in C++: SeedSequence -> PCG64 (XSL-RR 128/64) -> random().
//
// Why numpy's generator: seeded generations made before the sampler moved to C++ draw the same
// tokens, and a C caller with a seed gets what Python gets with that seed.
//   SeedSequence: the seed as little-endian uint32 words (0 -> [0]) is hashed into a pool of four
//     uint32 words (hashmix / mix, constants below), then generate_state(4 x uint64) hashes the
//     pool again with INIT_B / MULT_B.
//   PCG64: state0 = words[0]:words[1] (high:low), stream = words[2]:words[3];
//     inc = (stream << 1) | 1; state = 0; step; state += state0; step.
//     step: state = state * MULT + inc (mod 2^128); output of the NEW state: rotr64(hi ^ lo, state >> 122).
//   random(): (next64 >> 11) * 2^-53, a double in [0, 1).
#pragma once

#include <cstdint>
#include <vector>

namespace lowbit::sampling {

class Pcg64 {
public:
    // seed_words: the seed's little-endian 32-bit words (numpy's entropy); empty = OS entropy.
    explicit Pcg64(const std::vector<uint32_t>& seed_words);
    uint64_t next64();
    double next_double() { return double(next64() >> 11) * (1.0 / 9007199254740992.0); }

private:
    void step() { state_ = state_ * kMult + inc_; }
    static constexpr unsigned __int128 kMult =
        (static_cast<unsigned __int128>(0x2360ED051FC65DA4ull) << 64) | 0x4385DF649FCCF645ull;
    unsigned __int128 state_ = 0, inc_ = 1;
};

// numpy SeedSequence(entropy).generate_state(n, uint64) for entropy given as uint32 words.
std::vector<uint64_t> seed_sequence_state(const std::vector<uint32_t>& entropy, int n_words64);

// a uint64 seed as numpy sees a Python int: its little-endian uint32 words, at least one.
std::vector<uint32_t> seed_words(uint64_t seed);

}  // namespace lowbit::sampling
